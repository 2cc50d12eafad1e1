"""EXPLAIN ANALYZE: `app.explain(rows, analyze=True)`, `app.analyze(rows)` and `halo explain --analyze`
print the plan the run executed with predicted and actual figures side by side per node, per epoch
and in total (text, JSON, PNG), on the tiny GGUF model (fp32) and real DuckDB.

The workflow and rows are test_node_accounting.py's duplicate-rows case, so the actual counts are
known: `a` 3 executions, `first` 3, `c` 2 (one coalesced), `s` 2 (one joined or cached).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import halo
import pytest
from halo.cli import main
from halo.plan import PlannedBatch
from halo.runtime.results import RunStats
from test_node_accounting import DUPLICATE_ROWS, DUPLICATES
from tiny_gguf import write_tiny_gguf

EXECUTED = {"a": 3, "first": 3, "c": 2, "s": 2}  # what the run executes
PLANNED_CALLS = {"a": 3, "first": 3, "c": 3, "s": 3}  # what the plan batches (run-time coalescing is unforeseen)


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_gguf(tmp_path_factory.mktemp("tiny") / "tiny.gguf", seed=3)


@pytest.fixture
def files(tmp_path: Path, model: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Path, Path]:
    monkeypatch.setenv("HALO_CACHE_DIR", str(tmp_path / "cache"))  # a private cost and output-length history
    workflow, batch = tmp_path / "wf.yaml", tmp_path / "rows.jsonl"
    workflow.write_text(DUPLICATES.format(model=model))
    batch.write_text("".join(json.dumps(r) + "\n" for r in DUPLICATE_ROWS))
    return workflow, batch


def _node_rows(text: str) -> dict[str, dict[str, str]]:
    """The node table of an EXPLAIN text: node -> {column: cell} (cells are separated by 2+ spaces)."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("node "))
    header = re.split(r"\s{2,}", lines[start].strip())
    table: dict[str, dict[str, str]] = {}
    for line in lines[start + 1 :]:
        if not line.strip() or line.startswith(("PREFIXES", "FAILED", "  *")):
            break
        cells = re.split(r"\s{2,}", line.strip())
        assert len(cells) == len(header), line
        table[cells[0]] = dict(zip(header, cells, strict=True))
    return table


def _assert_run_followed(planned: PlannedBatch, stats: RunStats) -> None:
    expected = [(tuple(p.task for p in e.placements), e.tools, e.time_s) for e in planned.plan.epochs]
    assert [(e.nodes, e.tools, e.predicted_s) for e in stats.epochs] == expected
    assert (stats.planner, stats.predicted_s) == (planned.plan.planner, planned.plan.makespan_s)


def _without_actuals(text: str) -> str:
    return re.sub(r"actual=\d+\.\d+s  ", "", text)


def test_analyze_prints_the_plan_the_run_executed(files: tuple[Path, Path]):
    workflow, _ = files
    with halo.compile(workflow, max_inflight=64) as app:
        explained = app.explain(DUPLICATE_ROWS)  # before any run: the plan `run` will follow
        analyzed = app.analyze(DUPLICATE_ROWS)
    planned, stats = analyzed.planned, analyzed.result.stats
    # the plan printed is the plan the run executed: the run kept the PlannedBatch it emitted and
    # followed its epochs, and it is the plan plain EXPLAIN printed before the run
    assert planned is analyzed.result.planned
    _assert_run_followed(planned, stats)
    text = analyzed.text()
    assert text == planned.explain(analyzed.actual)
    plan_part = text[text.index("EXECUTION PLAN") : text.index("\nTOTAL")]
    assert _without_actuals(plan_part) == explained[explained.index("EXECUTION PLAN") :]
    # per node: the estimate and the actual figures on one line
    rows = _node_rows(text)
    assert list(rows) == ["a", "first", "c", "s"]
    for node, row in rows.items():
        assert int(row["executions"]) == PLANNED_CALLS[node] and int(row["ran"]) == EXECUTED[node]
        assert float(row["est s"]) >= 0.0 and re.fullmatch(r"\d+\.\d{3}\.\.\d+\.\d{3}", row["time s"])
    assert int(rows["c"]["hits"]) == int(rows["s"]["hits"]) == 1
    assert int(rows["a"]["est prompt"]) == int(rows["a"]["prompt"]) == stats.nodes["a"].prompt_tokens
    assert int(rows["a"]["decode"]) == stats.nodes["a"].decode_tokens <= int(rows["a"]["est decode"]) == 9
    # per epoch: predicted and actual seconds
    epoch_lines = [line for line in text.splitlines() if line.startswith("epoch ")]
    assert len(epoch_lines) == len(planned.plan.epochs) == len(stats.epochs)
    for line, timing in zip(epoch_lines, stats.epochs, strict=True):
        assert f"time={timing.predicted_s:.3f}s  actual={timing.actual_s:.3f}s" in line
    total = text.splitlines()[-1]
    assert total.startswith(f"TOTAL  time predicted={planned.plan.makespan_s:.3f}s actual=")
    assert "llm calls predicted=6 executed=5" in total and "tool calls predicted=6 executed=5" in total
    # max_tokens (no output-length history yet) per planned call: `a` 3 x 3, `c` 3 x 2
    assert f"decode tokens predicted=15 generated={stats.generated_tokens}" in total


def test_app_explain_analyze_returns_the_text(files: tuple[Path, Path]):
    workflow, _ = files
    with halo.compile(workflow, max_inflight=64) as app:
        text = app.explain(DUPLICATE_ROWS, analyze=True)
    assert text.startswith("CONSOLIDATED PLAN  duplicates  rows=4")
    assert "est s" in text and "busy s" in text and "\nTOTAL  " in text
    assert {int(r["ran"]) for r in _node_rows(text).values()} == {2, 3}


def test_halo_explain_analyze_from_the_command_line(files: tuple[Path, Path], tmp_path: Path):
    workflow, batch = files
    done = subprocess.run(
        [sys.executable, "-m", "halo.cli", "explain", "--analyze", str(workflow), "--input", str(batch)],
        capture_output=True,
        text=True,
        timeout=300,
        env=os.environ.copy(),
    )
    assert done.returncode == 0, done.stderr
    out = done.stdout
    rows = _node_rows(out)
    assert list(rows) == ["a", "first", "c", "s"]
    for node, row in rows.items():  # predicted and actual columns for every node
        assert int(row["executions"]) == PLANNED_CALLS[node] and int(row["ran"]) == EXECUTED[node]
        assert row["est s"] != "-" and row["time s"] != "-" and row["busy s"] != "-"
    assert all("actual=" in line for line in out.splitlines() if line.startswith("epoch "))
    assert "\nTOTAL  time predicted=" in out and "latency curves: built-in defaults" in out


def test_json_and_png_outputs(files: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    workflow, batch = files
    # without --analyze: the figures predicted (no model is loaded), before a run teaches output lengths
    assert main(["explain", str(workflow), "--input", str(batch), "--format", "json"]) == 0
    plain = json.loads(capsys.readouterr().out)
    assert {n["actual"] for n in plain["nodes"].values()} == {None}
    argv = ["explain", "--analyze", str(workflow), "--input", str(batch)]
    assert main([*argv, "--format", "json"]) == 0
    numbers = json.loads(capsys.readouterr().out)
    assert plain["nodes"]["a"]["estimate"] == numbers["nodes"]["a"]["estimate"]  # one planning path
    assert numbers["workflow"] == "duplicates" and numbers["rows"] == 4 and numbers["rows_failed"] == 0
    for node, figures in numbers["nodes"].items():
        assert figures["instances"] == 4
        assert figures["estimate"]["calls"] == PLANNED_CALLS[node]
        assert figures["actual"]["executed"] == EXECUTED[node]
    assert numbers["nodes"]["a"]["estimate"]["decode_tokens"] == 9
    assert numbers["totals"]["llm_calls"] == [6, 5] and numbers["totals"]["tool_calls"] == [6, 5]
    assert all(e["actual_s"] is not None and e["predicted_s"] > 0 for e in numbers["epochs"])
    png = tmp_path / "analyze.png"
    assert main([*argv, "--format", "png", "-o", str(png)]) == 0
    assert capsys.readouterr().out.strip() == f"wrote {png}"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_analyze_refuses_the_dot_format(files: tuple[Path, Path], capsys: pytest.CaptureFixture[str]):
    workflow, batch = files
    assert main(["explain", "--analyze", str(workflow), "--input", str(batch), "--format", "dot"]) == 2
    assert "--analyze prints text, json or png" in capsys.readouterr().err
