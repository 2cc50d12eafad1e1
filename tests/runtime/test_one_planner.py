"""One planner: the plan `app.explain` prints is the plan `app.run` follows, and `halo explain` prints it too.

Each test plans in a private halo cache dir (no latency profile, so the built-in curves; an output
history the test writes), so the CLI's planner and the app's read the same state. The graphs are
small enough that the DP proves its plan optimal, so equal inputs give equal plans.
"""

from __future__ import annotations

import json
from pathlib import Path

import halo
import pytest
from halo.cli import main
from halo.plan import PlannedBatch
from halo.plan.cost import OutputLengthHistory, output_key
from halo.runtime.results import RunStats
from halo.spec.workflow import Workflow

TOOLS_ONLY = """\
name: tools-only
inputs: [t, n]
nodes:
  - {id: tag, kind: rule, input: '{{ t }}', regex: '(\\w+)', default: none}
  - id: cast
    kind: sql
    query: "SELECT CAST(:n AS INTEGER) * 2 AS v"
    params: {n: "{{ n }}"}
  - {id: base, kind: python, function: "os.path:join", args: ["{{ tag.output }}", "{{ cast.rows[0].v | string }}"]}
outputs: {tag: tag.output, v: cast.rows, base: base.output}
"""

WITH_MODEL = """\
name: with-model
inputs: [topic]
nodes:
  - {id: pros, kind: llm, prompt: "List one advantage of {{ topic }}.", max_tokens: 24}
  - {id: cons, kind: llm, prompt: "List one drawback of {{ topic }}.", max_tokens: 24}
  - {id: first, kind: rule, input: '{{ pros.output }}', regex: '(\\w+)', default: ''}
  - id: verdict
    kind: llm
    prompt: "Pro: {{ pros.output }} Con: {{ cons.output }} Verdict on {{ topic }}:"
    max_tokens: 4
outputs: {pros: pros.output, first: first.output, verdict: verdict.output}
"""


def _write(tmp_path: Path, workflow: str, rows: list[dict]) -> tuple[Path, Path]:
    path, batch = tmp_path / "wf.yaml", tmp_path / "rows.jsonl"
    path.write_text(workflow)
    batch.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path, batch


def _assert_run_followed(planned: PlannedBatch, stats: RunStats) -> None:
    expected = [(tuple(p.task for p in e.placements), e.tools, e.time_s) for e in planned.plan.epochs]
    assert [(e.nodes, e.tools, e.predicted_s) for e in stats.epochs] == expected
    assert (stats.planner, stats.predicted_s) == (planned.plan.planner, planned.plan.makespan_s)


def test_explain_run_and_cli_share_the_plan_of_a_tools_only_workflow(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("HALO_CACHE_DIR", str(tmp_path / "cache"))
    rows = [{"t": "red fox", "n": 1}, {"t": "blue jay", "n": 2}, {"t": "red fox", "n": 1}]
    path, batch = _write(tmp_path, TOOLS_ONLY, rows)
    with halo.compile(path) as app:
        planned = app.plan(rows)
        text = app.explain(rows)
        assert main(["explain", str(path), "--input", str(batch)]) == 0
        result = app.run(rows)
    assert planned.plan.optimal and planned.plan.epochs  # tool-only epochs: the plan still orders the tools
    assert text == planned.explain()
    assert capsys.readouterr().out == text + "\n"  # before: the CLI printed no plan for a workflow without llm nodes
    assert result.errors == [] and [o["base"] for o in result.outputs] == ["red/2", "blue/4", "red/2"]
    _assert_run_followed(planned, result.stats)
    assert sum(len(e.tools) for e in result.stats.epochs) == 3


@pytest.mark.slow
def test_explain_run_and_cli_share_the_plan_of_a_workflow_with_llm_nodes(tmp_path, monkeypatch, capsys):
    """The output-length history shortens `pros` and `cons` (3 tokens seen, not 24): the CLI planned
    without it before, so its plan's times differed from the one run followed."""
    cache = tmp_path / "cache"
    monkeypatch.setenv("HALO_CACHE_DIR", str(cache))
    rows = [{"topic": t} for t in ("bicycles", "trains", "ferries", "bicycles")]
    path, batch = _write(tmp_path, WITH_MODEL, rows)
    graph = Workflow.from_yaml(path).graph
    history = OutputLengthHistory()
    for name in ("pros", "cons"):
        node = graph.node(name)
        history.observe(output_key(node, graph.model_source(node)), 3, 20)
    history.save(cache / "output_lengths.json")
    with halo.compile(path, dtype="fp32") as app:
        planned = app.plan(rows)
        text = app.explain(rows)
        assert main(["explain", str(path), "--input", str(batch), "--dtype", "fp32"]) == 0
        result = app.run(rows)
    assert planned.plan.optimal
    assert text == planned.explain()
    printed = capsys.readouterr().out
    assert printed.startswith(text + "\n") and "latency curves: built-in defaults" in printed[len(text) :]
    assert result.errors == []
    _assert_run_followed(planned, result.stats)
