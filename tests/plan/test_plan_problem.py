"""Consolidated batch -> plan problem -> optimized epochs, on the shipped example workflows."""

from __future__ import annotations

from pathlib import Path

import pytest
from halo.plan import WhitespaceTokenizer, consolidate
from halo.plan.cost import DEFAULT_CURVES
from halo.plan.plan_problem import DEFAULT_MODEL_LOAD_S, DEFAULT_TOOL_CALL_S, TOOL_POOL_WIDTH, build_plan_problem
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


def test_tool_nodes_are_tool_tasks_with_a_default_or_plugged_cost():
    wf = Workflow.from_yaml(EXAMPLES / "ticket_triage.yaml")
    graph = consolidate(wf, _rows("ticket_triage"), WhitespaceTokenizer())
    problem = build_plan_problem(graph, lambda _m: DEFAULT_CURVES)
    # reply reads classify (llm) and history/profile (tools): it waits for all three
    assert problem.task("reply").depends_on == ("classify", "history", "profile")
    assert problem.task("classify").depends_on == ()
    tool_nodes = [n for n in wf.graph.nodes if n.kind != "llm"]
    assert [t.id for t in problem.tools] == [n.id for n in tool_nodes]
    for node in tool_nodes:  # 0.05 s per call (or the declared latency), 16 calls at a time
        calls = graph.counters[node.id].owned
        per_call = node.spec.expected_latency_s or DEFAULT_TOOL_CALL_S
        assert problem.tool(node.id).cpu_s == pytest.approx(per_call * -(-calls // TOOL_POOL_WIDTH))
    seen = []

    def measured(node, calls):
        seen.append((node.id, calls))
        return 1.5

    plugged = build_plan_problem(graph, lambda _m: DEFAULT_CURVES, tool_cost_s=measured)
    assert {t.cpu_s for t in plugged.tools} == {1.5}
    # once per node for its physical calls, once for one call (the per-call estimate)
    assert sorted(seen) == sorted(
        [(n.id, graph.counters[n.id].owned) for n in tool_nodes] + [(n.id, 1) for n in tool_nodes]
    )
    plan = plan_dp(plugged, time_limit_s=2.0)
    assert sum(e.tool_s for e in plan.epochs) == pytest.approx(1.5 * len(tool_nodes))


def test_per_call_estimate_prices_every_logical_call_alone():
    wf = Workflow.from_yaml(EXAMPLES / "ticket_triage.yaml")
    rows = _rows("ticket_triage")
    graph = consolidate(wf, rows, WhitespaceTokenizer())
    problem = build_plan_problem(graph, lambda _m: DEFAULT_CURVES, model_load_s={"smollm2-135m": 2.0})
    tools = sum(graph.counters[n.id].logical * DEFAULT_TOOL_CALL_S for n in wf.graph.nodes if n.kind != "llm")
    llm_calls = sum(graph.counters[n.id].logical for n in wf.graph.nodes if n.kind == "llm")
    # at least the loads, the tool calls, and one batch-1 decode step per generated token of each call
    assert problem.per_call_s > 2.0 + tools + llm_calls * DEFAULT_CURVES.decode_step_s(1, 1.0)
    plan = plan_dp(problem, time_limit_s=2.0)
    assert plan.per_call_s == problem.per_call_s and plan.per_call_s > plan.makespan_s
    assert "per-call execution" in plan.explain()


def test_kv_parent_rule_on_loop_iterations_and_measured_load_and_kv():
    from dataclasses import replace

    wf = Workflow.from_yaml(EXAMPLES / "essay_refine.yaml")
    graph = consolidate(wf, _rows("essay_refine"), WhitespaceTokenizer())
    problem = build_plan_problem(graph, lambda _m: DEFAULT_CURVES)
    # draft#2 re-renders draft's template with the revision appended: it extends draft#1's requests
    redraft = problem.task("draft#2")
    assert redraft.kv_parent == "draft#1" and 0 < redraft.kv_saving_s <= redraft.prefill_s
    assert redraft.kv_move_s == redraft.kv_saving_s  # bandwidth unmeasured: moving is as dear as recomputing
    assert problem.task("critique#1").kv_parent is None  # another template
    assert set(problem.model_load_s.values()) == {DEFAULT_MODEL_LOAD_S}
    profiled = replace(DEFAULT_CURVES, model_load_s=1.25, kv_bytes_per_token=40_000.0, kv_bytes_per_s=4e9)
    measured = build_plan_problem(graph, lambda _m: profiled)
    assert set(measured.model_load_s.values()) == {1.25}
    moved = measured.task("draft#2")
    assert 0 < moved.kv_move_s < moved.kv_saving_s


def test_output_history_shortens_decode(tmp_path):
    from halo.plan.cost import OutputLengthHistory, output_key

    wf = Workflow.from_yaml(EXAMPLES / "ticket_triage.yaml")
    graph = consolidate(wf, _rows("ticket_triage"), WhitespaceTokenizer())
    history = OutputLengthHistory.load(tmp_path / "out.json")
    node = wf.graph.node("reply")
    key = output_key(node, wf.graph.model_source(node))
    assert history.expected(key, 200) == 200  # nothing observed: max_tokens
    history.observe(key, 10, calls=3)
    history.observe(key, 30)
    assert history.expected(key, 200) == 15 and history.expected(key, 12) == 12
    history.save()
    assert OutputLengthHistory.load(tmp_path / "out.json").expected(key, 200) == 15
    plain = build_plan_problem(graph, lambda _m: DEFAULT_CURVES)
    informed = build_plan_problem(graph, lambda _m: DEFAULT_CURVES, output_history=history)
    assert informed.task("reply").decode_s < plain.task("reply").decode_s
    assert informed.task("classify").decode_s == plain.task("classify").decode_s


def test_batch_size_changes_times_not_problem_size():
    wf = Workflow.from_yaml(EXAMPLES / "review_voting.yaml")
    rows = _rows("review_voting")
    small = build_plan_problem(consolidate(wf, rows, WhitespaceTokenizer()), lambda _m: DEFAULT_CURVES)
    big_rows = [
        dict(r, **{k: f"{v} #{i}" for k, v in r.items() if isinstance(v, str)}) for i in range(50) for r in rows
    ]
    big = build_plan_problem(consolidate(wf, big_rows, WhitespaceTokenizer()), lambda _m: DEFAULT_CURVES)
    assert len(big.tasks) == len(small.tasks)
    assert sum(t.prefill_s for t in big.tasks) > sum(t.prefill_s for t in small.tasks)
