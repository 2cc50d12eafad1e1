"""Consolidated batch -> plan problem -> optimized epochs, on the shipped example workflows."""

from __future__ import annotations

from pathlib import Path

import pytest
from halo.plan import WhitespaceTokenizer, consolidate
from halo.plan.cost import DEFAULT_CURVES
from halo.plan.plan_problem import build_plan_problem
from halo.plan.search import plan_dp
from halo.plan.search.baselines import round_robin, serial
from halo.spec import Workflow

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def _rows(name: str) -> list[dict]:
    import json

    return [json.loads(line) for line in (EXAMPLES / f"{name}.jsonl").read_text().splitlines() if line.strip()]


@pytest.mark.parametrize("name", ["ticket_triage", "review_voting", "essay_refine", "invoice_audit"])
def test_examples_plan_no_worse_than_baselines(name):
    wf = Workflow.from_yaml(EXAMPLES / f"{name}.yaml")
    graph = consolidate(wf, _rows(name), WhitespaceTokenizer())
    for workers in (1, 2):
        problem = build_plan_problem(graph, lambda _m: DEFAULT_CURVES, workers=workers)
        llm_nodes = [n.id for n in wf.graph.nodes if n.kind == "llm"]
        assert [t.id for t in problem.tasks] == llm_nodes
        assert all(t.prefill_s > 0 and t.decode_s >= 0 for t in problem.tasks)
        plan = plan_dp(problem, time_limit_s=5.0)
        assert plan.cost <= serial(problem).cost + 1e-9
        assert plan.cost <= round_robin(problem).cost + 1e-9
        assert plan.cost <= plan.serial_cost + 1e-9


def test_dependencies_skip_tool_nodes():
    wf = Workflow.from_yaml(EXAMPLES / "ticket_triage.yaml")
    graph = consolidate(wf, _rows("ticket_triage"), WhitespaceTokenizer())
    problem = build_plan_problem(graph, lambda _m: DEFAULT_CURVES)
    # reply reads classify (llm) and history/profile (tools with no llm behind them)
    assert problem.task("reply").depends_on == ("classify",)
    assert problem.task("classify").depends_on == ()


def test_batch_size_changes_times_not_problem_size():
    wf = Workflow.from_yaml(EXAMPLES / "review_voting.yaml")
    rows = _rows("review_voting")
    small = build_plan_problem(consolidate(wf, rows, WhitespaceTokenizer()), lambda _m: DEFAULT_CURVES)
    big_rows = [dict(r, **{k: f"{v} #{i}" for k, v in r.items() if isinstance(v, str)})
                for i in range(50) for r in rows]
    big = build_plan_problem(consolidate(wf, big_rows, WhitespaceTokenizer()), lambda _m: DEFAULT_CURVES)
    assert len(big.tasks) == len(small.tasks)
    assert sum(t.prefill_s for t in big.tasks) > sum(t.prefill_s for t in small.tasks)
