"""`halo run --resume`: a run killed with SIGKILL halfway and rerun gives every row exactly once, with the
same outputs; a journal tampered with (a record from another run, a record edited by hand) or not
UTF-8 stops --resume before any work with file:line; a torn last line is tolerated.

Only the kill test loads the real model; the journal tests run workflows without llm nodes.
"""

from __future__ import annotations

import json
import math
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from halo.cli import main
from halo.runtime import journal as journal_io

HERE = Path(__file__).parent
ROWS = 10

WORKFLOW = """
name: slow-rows
inputs: [i, text]
nodes:
  - id: title
    kind: llm
    prompt: "Give a title for: {{ text }}"
    max_tokens: 4
  - id: wait
    kind: python
    function: "workflow_functions:slow_upper"
    args: ["{{ title.output }}", "{{ i * 0.6 }}"]
  - id: tag
    kind: rule
    input: "{{ wait.output }}"
    regex: "(\\\\w+)"
    default: none
outputs: {title: title.output, loud: wait.output, tag: tag.output, i: i}
"""


def _halo(args: list[str], **kw) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": f"{HERE}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    return subprocess.Popen([sys.executable, "-m", "halo.cli", *args], env=env, **kw)


def _journal_rows(path: Path) -> int:
    if not path.exists():
        return 0
    return sum(1 for line in path.read_text().splitlines() if '"type":"row"' in line)


@pytest.mark.slow
def test_kill_and_resume_gives_every_row_once(tmp_path):
    wf = tmp_path / "wf.yaml"
    wf.write_text(WORKFLOW)
    rows = tmp_path / "rows.jsonl"
    rows.write_text(
        "".join(json.dumps({"i": i, "text": f"note number {i} about topic {i % 3}"}) + "\n" for i in range(ROWS))
    )
    out = tmp_path / "out.jsonl"
    journal = tmp_path / "out.jsonl.journal.jsonl"
    common = [str(wf), "--input", str(rows), "--quiet", "--dtype", "fp32"]

    proc = _halo(["run", *common, "--output", str(out)], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 240
    while _journal_rows(journal) < 3:
        assert proc.poll() is None, proc.communicate()[1].decode()[-2000:]
        assert time.monotonic() < deadline, "the run never journaled 3 rows"
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    finished_before = _journal_rows(journal)
    assert 3 <= finished_before < ROWS, finished_before
    assert not out.exists()

    resumed = _halo(["run", *common, "--output", str(out), "--resume"], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    _, err = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, err.decode()[-2000:]
    assert "rows resumed" in err.decode()

    full = tmp_path / "full.jsonl"
    clean = _halo(  # computed afresh: the reference is not read back from the result cache
        ["run", *common, "--output", str(full), "--no-cache"], stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    _, err = clean.communicate(timeout=300)
    assert clean.returncode == 0, err.decode()[-2000:]

    got = [json.loads(line) for line in out.read_text().splitlines()]
    want = [json.loads(line) for line in full.read_text().splitlines()]
    assert [r["i"] for r in got] == list(range(ROWS))  # every row exactly once, in input order
    assert got == want
    assert all("_error" not in r for r in got)


# -- the journal's integrity (no model) ---------------------------------------------------------------

TOOLS_WORKFLOW = """
name: casts
inputs: [x]
nodes:
  - id: cast
    kind: sql
    query: "SELECT CAST(:x AS DOUBLE) AS v"
    params: {x: "{{ x }}"}
outputs: {v: cast.rows, x: x}
"""
# "abc" fails its cast, so the run ends with a failed row and keeps its journal for --resume
TOOLS_ROWS = ["1", "2", "abc", "nan", "5"]


def _tools_run(tmp_path: Path, output: str, *extra: str) -> int:
    wf, rows = tmp_path / "casts.yaml", tmp_path / "casts.jsonl"
    if not wf.exists():
        wf.write_text(TOOLS_WORKFLOW)
        rows.write_text("".join(json.dumps({"x": x}) + "\n" for x in TOOLS_ROWS))
    return main(["run", str(wf), "--input", str(rows), "--output", str(tmp_path / output), "--quiet", *extra])


def _journaled(tmp_path: Path, output: str = "out.jsonl") -> Path:
    assert _tools_run(tmp_path, output) == 0
    journal = tmp_path / f"{output}.journal.jsonl"
    assert journal.exists()
    (tmp_path / output).unlink()
    return journal


def _row_line(journal: Path, row: int) -> int:
    """The 0-based index of the journal line holding row `row`'s record."""
    lines = journal.read_text().splitlines()
    return next(i for i, line in enumerate(lines) if json.loads(line).get("row") == row)


def test_a_record_edited_by_hand_stops_resume_before_any_work(tmp_path, capsys):
    journal = _journaled(tmp_path)
    lines = journal.read_text().splitlines()
    at = _row_line(journal, 1)
    record = json.loads(lines[at])
    record["output"]["x"] = "forged"
    lines[at] = json.dumps(record, separators=(",", ":"))
    journal.write_text("\n".join(lines) + "\n")
    before = journal.read_bytes()
    capsys.readouterr()
    assert _tools_run(tmp_path, "out.jsonl", "--resume") == 2
    err = capsys.readouterr().err
    assert f"{journal}:{at + 1}: record was altered" in err, err
    assert not (tmp_path / "out.jsonl").exists() and journal.read_bytes() == before  # nothing ran


def test_a_record_from_another_runs_journal_stops_resume(tmp_path, capsys):
    """Same workflow, same batch, another journal: its records are not this run's work."""
    journal, other = _journaled(tmp_path), _journaled(tmp_path, "other.jsonl")
    lines = journal.read_text().splitlines()
    at = _row_line(journal, 4)
    lines[at] = other.read_text().splitlines()[_row_line(other, 4)]
    journal.write_text("\n".join(lines) + "\n")
    capsys.readouterr()
    assert _tools_run(tmp_path, "out.jsonl", "--resume") == 2
    err = capsys.readouterr().err
    assert f"{journal}:{at + 1}: record belongs to another run" in err, err
    assert not (tmp_path / "out.jsonl").exists()


def test_a_copied_record_relabelled_as_this_journal_is_altered(tmp_path, capsys):
    journal, other = _journaled(tmp_path), _journaled(tmp_path, "other.jsonl")
    own_id = json.loads(journal.read_text().splitlines()[0])["journal"]
    copied = json.loads(other.read_text().splitlines()[_row_line(other, 0)])
    copied["journal"] = own_id
    lines = journal.read_text().splitlines()
    at = _row_line(journal, 0)
    lines[at] = json.dumps(copied, separators=(",", ":"))
    journal.write_text("\n".join(lines) + "\n")
    capsys.readouterr()
    assert _tools_run(tmp_path, "out.jsonl", "--resume") == 2
    assert f"{journal}:{at + 1}: record was altered" in capsys.readouterr().err


def test_a_non_utf8_journal_is_a_located_error(tmp_path, capsys):
    journal = _journaled(tmp_path)
    lines = journal.read_bytes().split(b"\n")
    lines[1] = lines[1].replace(b'"type"', b'"typ\xff"')
    journal.write_bytes(b"\n".join(lines))
    capsys.readouterr()
    assert _tools_run(tmp_path, "out.jsonl", "--resume") == 2
    assert f"{journal}:2: journal line is not UTF-8" in capsys.readouterr().err


def test_a_torn_last_line_is_tolerated_and_cut_off_before_appending(tmp_path, capsys):
    """A kill mid-write leaves a torn last line (here cut inside a UTF-8 character); resume drops it,
    reruns the work whose records are gone, appends after the cut, and a second resume reads it all."""
    journal = _journaled(tmp_path)
    lines = journal.read_bytes().split(b"\n")[:-1]
    lines = [line for i, line in enumerate(lines) if i != _row_line(journal, 4)]  # row 4's work to redo
    journal.write_bytes(b"\n".join(lines) + b'\n{"type":"row","row":4,"output":{"x":"\xc3')
    for resumed in (4, 5):  # the second resume finds row 4 too, appended after the cut
        assert _tools_run(tmp_path, "out.jsonl", "--resume") == 0
        assert re.search(rf"rows resumed\W+{resumed}\b", capsys.readouterr().err)
        got = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()]
        assert [r["x"] for r in got] == TOOLS_ROWS
        assert [r["v"] for r in got][4] == [{"v": 5.0}]
    journal_io.verify(journal)


def test_an_old_format_journal_is_refused_with_the_reason(tmp_path, capsys):
    journal = _journaled(tmp_path)
    journal.write_text('{"type":"header","fingerprint":"x"}\n{"type":"row","row":0,"output":{},"error":null}\n')
    capsys.readouterr()
    assert _tools_run(tmp_path, "out.jsonl", "--resume") == 2
    assert f"{journal}:1: journal was written by another Halo version" in capsys.readouterr().err


def test_nonfinite_values_are_valid_json_in_the_journal_and_exact_on_resume(tmp_path):
    def refuse(token: str) -> object:
        raise AssertionError(f"invalid JSON token {token}")

    journal = tmp_path / "j.jsonl"
    with journal_io.JournalWriter(journal, "fp", fresh=True) as writer:
        writer.node("sig", {"a": [float("nan"), 1.0], "b": float("-inf"), 3: float("inf")})
        writer.row(0, {"v": float("nan")}, None)
    for line in journal.read_text().splitlines():
        json.loads(line, parse_constant=refuse)
    state = journal_io.load(journal, "fp")
    result = state.nodes["sig"]
    assert math.isnan(result["a"][0]) and result["a"][1] == 1.0
    assert result["b"] == float("-inf") and result["3"] == float("inf")
    assert math.isnan(state.rows[0]["output"]["v"])


def test_read_records_keeps_serving_headerless_journals(tmp_path):
    """The server's run journal (serve/run_journal.py) reads its plain records with `read_records`."""
    path = tmp_path / "runs.jsonl"
    path.write_text('{"type":"admitted","id":"a"}\n{"type":"ended","id":"a"}\n{"type":"adm')
    assert [r["type"] for r in journal_io.read_records(path)] == ["admitted", "ended"]
    path.write_text('{"type":"admitted","id":"a"}\n[1]\n')
    with pytest.raises(journal_io.JournalError, match=r"runs.jsonl:2: journal line is not a JSON object"):
        journal_io.read_records(path)
