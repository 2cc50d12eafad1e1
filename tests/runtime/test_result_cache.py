"""The persistent result cache across runs: a rerun executes nothing, an edit reruns exactly the edited
node and what reads it, impure and failed calls always run, sources that change invalidate, concurrent
runs share one file, a corrupt file is bypassed, and `halo cache stats|clear` report and remove it.

Runs use the tiny GGUF model (tests/tiny_gguf.py, random weights, fp32 greedy) and real tools: DuckDB,
the loopback HTTP server, python functions. "Executed" per node is read from the run's timeline, which
has a span for every attempt that ran on a worker or the tool pool, and none for a cache hit.
"""

from __future__ import annotations

import datetime as dt
import json
import math
import os
import sqlite3
import subprocess
import sys
import uuid
from collections import Counter
from decimal import Decimal
from pathlib import Path

import duckdb
import halo
import pytest
from halo.runtime.cached_values import Uncacheable, decode, encode
from halo.runtime.result_cache import ResultCache, cache_path, read_stats
from halo.runtime.results import RunResult
from halo.spec import Workflow
from halo.spec.errors import SpecError
from tiny_gguf import write_tiny_gguf

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE))  # workflow_functions

ROWS = [{"text": "the cat"}, {"text": "a hat"}, {"text": "one big bin"}]  # distinct lengths: sql d differs per row


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_gguf(tmp_path_factory.mktemp("tiny") / "tiny.gguf", seed=5)


def executed(result: RunResult) -> Counter[str]:
    """Attempts that ran, per graph node (a cache hit leaves no span)."""
    return Counter(span.node for span in result.timeline)


def _chain(model: Path, b_prompt: str = "Say {{ a.output }}") -> Workflow:
    """a -> b -> c (llm, llm reading a, pure python reading b); d (sql) -> e (llm reading d)."""
    return (
        Workflow("chain")
        .model("t", source=str(model), dtype="fp32")
        .inputs("text")
        .llm("a", prompt="Note: {{ text }}", model="t", max_tokens=4)
        .llm("b", prompt=b_prompt, model="t", max_tokens=4)
        .python("c", "workflow_functions:word_count", args=["{{ b.output }}"], pure=True)
        .sql("d", "SELECT length(:t) AS n", params={"t": "{{ text }}"})
        .llm("e", prompt="Count {{ d.rows[0].n }}", model="t", max_tokens=3)
        .outputs(a="a.output", b="b.output", c="c.output", d="d.rows", e="e.output")
    )


def test_a_rerun_executes_nothing_and_an_edit_reruns_exactly_that_node_and_its_dependents(model):
    with halo.compile(_chain(model)) as app:
        cold = app.run(ROWS)
        warm = app.run(ROWS)
        serial = app.run(ROWS, plan="serial")
    assert cold.errors == [] and warm.errors == []
    assert executed(cold) == {"a": 3, "b": 3, "c": 3, "d": 3, "e": 3}
    # One entry per distinct request (the random model may answer two rows' `a` alike: then `b` repeats too).
    distinct = 3 + len({o["a"] for o in cold.outputs}) + len({o["b"] for o in cold.outputs}) + 3 + 3
    assert cold.stats.persistent_cache_stores == read_stats(cache_path()).entries == distinct
    assert cold.stats.persistent_cache_hits == 0
    # The second run of the same batch: no llm call, no tool call, the same outputs.
    assert warm.stats.llm_calls_executed == 0 and warm.stats.tool_calls_executed == 0
    assert executed(warm) == {}
    assert warm.stats.persistent_cache_hits == 15 and warm.stats.persistent_cache_stores == 0
    assert warm.stats.persistent_hits_by_node == {"a": 3, "b": 3, "c": 3, "d": 3, "e": 3}
    assert warm.outputs == cold.outputs == serial.outputs  # fidelity: a warm cache answers as the serial run
    # Edit one prompt: exactly b and c (which reads b) run again, for every row; a, d and e come from the cache.
    with halo.compile(_chain(model, "Repeat {{ a.output }}")) as edited:
        after = edited.run(ROWS)
        reference = edited.run(ROWS, plan="serial")
    assert executed(after) == {"b": 3, "c": 3}
    stats = after.stats  # equal requests of two rows run once (coalesced), so count both
    assert stats.llm_calls_executed + stats.llm_calls_coalesced == 3
    assert stats.tool_calls_executed + stats.tool_calls_coalesced == 3
    assert after.stats.persistent_hits_by_node == {"a": 3, "d": 3, "e": 3}
    assert after.outputs == reference.outputs
    assert [o["a"] for o in after.outputs] == [o["a"] for o in cold.outputs]


def test_unseeded_sampling_and_cache_false_run_every_time(model):
    wf = (
        Workflow("sampled")
        .model("t", source=str(model), dtype="fp32")
        .inputs("text")
        .llm("free", prompt="A {{ text }}", model="t", max_tokens=3, temperature=0.9)  # unseeded: impure
        .llm("seeded", prompt="B {{ text }}", model="t", max_tokens=3, temperature=0.9, seed=11)
        .llm("greedy_off", prompt="C {{ text }}", model="t", max_tokens=3, cache=False)
        .sql("live", "SELECT upper(:t) AS u", params={"t": "{{ text }}"}, cache=False)
        .outputs(free="free.output", seeded="seeded.output", off="greedy_off.output", live="live.rows")
    )
    with halo.compile(wf) as app:
        first = app.run(ROWS)
        second = app.run(ROWS)
    assert executed(first) == {"free": 3, "seeded": 3, "greedy_off": 3, "live": 3}
    assert first.stats.persistent_cache_stores == 3  # the seeded node only
    assert executed(second) == {"free": 3, "greedy_off": 3, "live": 3}
    assert second.stats.persistent_hits_by_node == {"seeded": 3}
    assert [o["seeded"] for o in second.outputs] == [o["seeded"] for o in first.outputs]


def test_failures_and_fallbacks_are_never_cached(model):
    rows = [{"text": "fine"}, {"text": "boom one"}, {"text": "also fine"}, {"text": "boom two"}]
    wf = (
        Workflow("failing")
        .inputs("text")
        .python("flip", "workflow_functions:explode", args=["{{ text }}"], pure=True)
        .python(
            "soft", "workflow_functions:explode", args=["{{ text }} x"], pure=True, on_error="default", fallback="?"
        )
        .outputs(flip="flip.output", soft="soft.output")
    )
    with halo.compile(wf) as app:
        first = app.run(rows)
        second = app.run(rows)
    assert [(e.row, e.node) for e in first.errors] == [(1, "flip"), (3, "flip")]
    assert [o["soft"] for o in first.outputs] == ["x enif", "?", "x enif osla", "?"]
    assert first.stats.persistent_cache_stores == 4  # flip and soft of the two fine rows
    # The failing calls run again (and fail again); the fallback was not stored as soft's result.
    assert executed(second) == {"flip": 2, "soft": 2}
    assert [(e.row, e.node) for e in second.errors] == [(1, "flip"), (3, "flip")]
    assert second.outputs == first.outputs


def test_http_get_is_cached_and_post_is_not(http_server):
    key = uuid.uuid4().hex[:12]
    wf = (
        Workflow("web")
        .inputs("v")
        .http("get", http_server.url + f"/count/{key}-{{{{ v }}}}")
        .http("post", http_server.url + "/echo", method="POST", json={"v": "{{ v }}"})
        .outputs(got="get.output", posted="post.output")
    )
    rows = [{"v": 1}, {"v": 2}]
    posts = http_server.hits["post:/echo"]
    with halo.compile(wf) as app:
        first = app.run(rows)
        second = app.run(rows)
    assert first.errors == [] and second.errors == []
    assert executed(second) == {"post": 2}
    assert http_server.hits[f"{key}-1"] == 1 and http_server.hits[f"{key}-2"] == 1  # each GET reached it once
    assert http_server.hits["post:/echo"] - posts == 4  # each POST reached it every run
    assert second.outputs == first.outputs
    assert [o["got"]["n"] for o in second.outputs] == [1, 1]


def test_changing_a_duckdb_files_content_invalidates_its_queries(tmp_path):
    db = tmp_path / "kb.duckdb"
    with duckdb.connect(str(db)) as con:
        con.execute("CREATE TABLE prices (item TEXT, price INTEGER)")
        con.execute("INSERT INTO prices VALUES ('tea', 3), ('cake', 5)")
    (tmp_path / "wf.yaml").write_text(
        """
name: prices
databases: {kb: {path: kb.duckdb}}
inputs: [item]
nodes:
  - {id: q, kind: sql, db: kb, query: "SELECT price FROM prices WHERE item = :item", params: {item: "{{ item }}"}}
outputs: {price: q.rows}
"""
    )
    rows = [{"item": "tea"}, {"item": "cake"}]
    with halo.compile(tmp_path / "wf.yaml") as app:
        first = app.run(rows)
        again = app.run(rows)
        with duckdb.connect(str(db)) as con:  # between runs: no run holds the file
            con.execute("UPDATE prices SET price = price * 10 WHERE item = 'tea'")
        changed = app.run(rows)
    assert [o["price"] for o in first.outputs] == [[{"price": 3}], [{"price": 5}]]
    assert executed(again) == {}
    assert executed(changed) == {"q": 2}  # a new file content is a new database: every query runs
    assert [o["price"] for o in changed.outputs] == [[{"price": 30}], [{"price": 5}]]


def test_only_python_nodes_declared_pure_are_cached():
    wf = (
        Workflow("py")
        .inputs("text")
        .python("pure_count", "workflow_functions:word_count", args=["{{ text }}"], pure=True)
        .python("plain_count", "workflow_functions:word_count", args=["{{ text }} more"])
        .outputs(a="pure_count.output", b="plain_count.output")
    )
    with halo.compile(wf) as app:
        first = app.run(ROWS)
        second = app.run(ROWS)
    assert executed(first) == {"pure_count": 3, "plain_count": 3}
    assert executed(second) == {"plain_count": 3}
    assert second.outputs == first.outputs == [{"a": 2, "b": 3}, {"a": 2, "b": 3}, {"a": 3, "b": 4}]


def test_a_corrupt_cache_file_is_reported_once_and_bypassed(model, capsys):
    path = cache_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"\x00garbage, not SQLite\xff" * 100)
    with halo.compile(_chain(model)) as app:
        first = app.run(ROWS)
        second = app.run(ROWS)
        serial = app.run(ROWS, plan="serial")
    err = capsys.readouterr().err
    assert err.count("cannot be used") == 1, err
    assert f"the result cache {path} cannot be used (file is not a database); running without it" in err
    assert first.errors == [] and first.outputs == second.outputs == serial.outputs
    assert executed(second) == executed(first) == {"a": 3, "b": 3, "c": 3, "d": 3, "e": 3}
    assert second.stats.persistent_cache_hits == 0 and second.stats.persistent_cache_stores == 0
    assert path.read_bytes().startswith(b"\x00garbage")  # left as it was, for `halo cache clear`


def test_a_foreign_sqlite_file_is_bypassed_untouched(tmp_path, capsys):
    path = tmp_path / "results.sqlite3"
    with sqlite3.connect(path) as con:
        con.execute("CREATE TABLE notes (x TEXT)")
    store = ResultCache(path)
    assert not store.usable and store.get("k") == (False, None) and not store.put("k", "n", 1)
    store.close()
    assert "not a Halo result cache" in capsys.readouterr().err
    with sqlite3.connect(path) as con:
        assert [r[0] for r in con.execute("SELECT name FROM sqlite_master")] == ["notes"]


def test_two_runs_at_once_share_one_cache_file(tmp_path):
    """Two `halo run` processes write the same file at the same time (overlapping batches, so they
    also store the same keys); both finish with the right outputs and the file is whole."""
    (tmp_path / "wf.yaml").write_text(
        """
name: counts
inputs: [text, i]
nodes:
  - {id: words, kind: python, function: "workflow_functions:word_count", args: ["{{ text }}"], pure: true}
  - {id: twice, kind: sql, query: "SELECT :n * 2 AS v", params: {n: "{{ words.output }}"}}
  - {id: tag, kind: sql, query: "SELECT :i AS i", params: {i: "{{ i }}"}}
outputs: {words: words.output, twice: twice.rows, i: tag.rows}
"""
    )
    inputs = {}
    for name, start in (("one", 0), ("two", 500)):  # rows 500..999 are in both batches
        rows = [{"text": " ".join(["w"] * (1 + i % 7)) + f" {i}", "i": i} for i in range(start, start + 1000)]
        inputs[name] = rows
        (tmp_path / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    env = {**os.environ, "PYTHONPATH": f"{HERE}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    cache_dir = tmp_path / "shared-cache"

    def start(name: str) -> subprocess.Popen:
        args = ["run", str(tmp_path / "wf.yaml"), "--input", str(tmp_path / f"{name}.jsonl")]
        args += ["--output", str(tmp_path / f"{name}.out.jsonl"), "--quiet", "--cache-dir", str(cache_dir)]
        return subprocess.Popen([sys.executable, "-m", "halo.cli", *args], env=env, stderr=subprocess.PIPE, text=True)

    procs = {name: start(name) for name in inputs}
    for name, proc in procs.items():
        _, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err[-2000:]
        assert "cannot be used" not in err and "were not stored" not in err, err[-2000:]
        got = [json.loads(line) for line in (tmp_path / f"{name}.out.jsonl").read_text().splitlines()]
        want = [
            {"words": 2 + i % 7, "twice": [{"v": 2 * (2 + i % 7)}], "i": [{"i": i}]}
            for i in (r["i"] for r in inputs[name])
        ]
        assert got == want
    path = cache_dir / "results.sqlite3"
    with sqlite3.connect(path) as con:
        assert con.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    stats = read_stats(path)
    # words: 1500 distinct texts; twice: 7 distinct word counts; tag: 1500 distinct i
    assert stats.by_node == {"tag": 1500, "twice": 7, "words": 1500}
    # A third run over both batches' rows is answered from the file alone.
    rows = inputs["one"] + inputs["two"][500:]
    with halo.compile(tmp_path / "wf.yaml", cache_dir=cache_dir) as app:
        third = app.run(rows)
    assert third.stats.tool_calls_executed == 0
    assert third.stats.persistent_cache_hits == 3 * 1500  # every instance (`twice` has one per row: it reads `words`)


def test_cache_stats_and_clear_on_the_command_line(tmp_path):
    wf = Workflow("py").inputs("text").python("n", "workflow_functions:word_count", args=["{{ text }}"], pure=True)
    cache_dir = tmp_path / "c"
    with halo.compile(wf.outputs(n="n.output"), cache_dir=cache_dir) as app:
        first = app.run(ROWS)
        app.run(ROWS)
    assert first.stats.persistent_cache_stores == 3

    def halo_cache(*args: str) -> subprocess.CompletedProcess[str]:
        command = [sys.executable, "-m", "halo.cli", "cache", *args, "--cache-dir", str(cache_dir)]
        return subprocess.run(command, capture_output=True, text=True, timeout=120)

    stats = json.loads(halo_cache("stats", "--json").stdout)
    path = cache_dir / "results.sqlite3"
    assert stats["path"] == str(path) and stats["exists"]
    assert (stats["entries"], stats["hits"], stats["by_node"]) == (3, 3, {"n": 3})
    assert stats["size_bytes"] > 0
    text = halo_cache("stats").stdout
    assert f"result cache {path}: 3 entries" in text and "3 hits" in text and "n: 3 entries" in text
    cleared = halo_cache("clear")
    assert cleared.returncode == 0 and cleared.stdout.strip() == f"removed {path}"
    assert not path.exists()
    assert halo_cache("stats").stdout.strip() == f"no result cache at {path}"
    path.write_bytes(b"junk" * 50)
    broken = halo_cache("stats")
    assert broken.returncode == 2 and "cannot be read" in broken.stderr and "halo cache clear" in broken.stderr
    assert halo_cache("clear").returncode == 0 and not path.exists()


def test_cache_false_is_a_validated_execution_field():
    from halo.plan.signature import static_key

    wf = Workflow("v").inputs("t").llm("a", prompt="{{ t }}").llm("b", prompt="{{ t }}", cache=False)
    graph = wf.outputs(a="a.output").graph
    assert graph.node("b").spec.cache is False and graph.node("a").spec.cache is True
    # How a node is executed, not what it requests: its signature (and so consolidation) ignores it.
    assert static_key(graph, graph.node("a")) == static_key(graph, graph.node("b"))
    with pytest.raises(SpecError, match=r"cache"):
        Workflow.from_yaml(
            "name: x\ninputs: [t]\nnodes:\n  - {id: a, kind: llm, prompt: hi, cache: maybe}\noutputs: {x: a.output}\n"
        )


def test_the_serial_baseline_and_cache_false_runs_leave_no_entries(model):
    with halo.compile(_chain(model), cache=False) as app:
        off = app.run(ROWS)
        serial = app.run(ROWS, plan="serial", cache=True)
    assert off.stats.persistent_cache_stores == 0 and not cache_path().exists()
    with halo.compile(_chain(model)) as app:
        on = app.run(ROWS, cache=False)
    assert on.outputs == off.outputs == serial.outputs and not cache_path().exists()


def test_cached_values_come_back_equal_and_of_the_same_types():
    value = {
        "rows": [{"price": Decimal("1.50"), "day": dt.date(2024, 2, 29), "at": dt.datetime(2024, 1, 2, 3, 4, 5, 6)}],
        "pair": (1, 2.0, True, None),
        "ints": {1: "one", (2, 3): "pair"},
        "$": "a key that looks like a tag",
        "blob": b"\x00\xff",
        "id": uuid.UUID(int=7),
        "span": dt.timedelta(days=1, microseconds=3),
        "zone": dt.datetime(2024, 1, 1, tzinfo=dt.timezone(dt.timedelta(hours=2))),
        "clock": dt.time(12, 30),
        "text": "caf\u00e9 \ud800",  # a lone surrogate from an input row survives too
        "inf": -math.inf,
    }
    back = decode(encode(value))
    assert back == value and list(back) == list(value)
    assert type(back["pair"]) is tuple and type(back["pair"][1]) is float and back["pair"][2] is True
    assert type(back["rows"][0]["price"]) is Decimal and str(back["rows"][0]["price"]) == "1.50"
    assert math.isnan(decode(encode(float("nan"))))
    for refused in (object(), {1.5: [set()]}, dt.datetime(2024, 1, 1, tzinfo=_NamedZone())):
        with pytest.raises(Uncacheable):
            encode(refused)


class _NamedZone(dt.tzinfo):
    """A zone with rules of its own: isoformat would keep only today's offset."""

    def utcoffset(self, moment: dt.datetime | None) -> dt.timedelta:
        return dt.timedelta(hours=1)


KILLED_WRITER = """
import os, sys
from halo.runtime.result_cache import ResultCache
from pathlib import Path
store = ResultCache(Path(sys.argv[1]), flush_entries=100, flush_s=3600)
for i in range(250):
    store.put(f"k{i}", "node", {"i": i})
os._exit(0)  # killed: no flush, no close
"""


def test_a_killed_writer_loses_only_its_unflushed_tail(tmp_path):
    path = tmp_path / "results.sqlite3"
    done = subprocess.run([sys.executable, "-c", KILLED_WRITER, str(path)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    with sqlite3.connect(path) as con:
        assert con.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    assert read_stats(path).entries == 200  # two full batches were written; the last 50 were queued
    with ResultCache(path) as store:
        assert store.get("k199") == (True, {"i": 199}) and store.get("k200") == (False, None)
