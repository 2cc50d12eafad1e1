"""Data-parallel splits (rule 3b of halo.plan.search.problem): the DP (native and reference) and the
greedy planner split a node's instances over workers when that is cheaper and only then; a split's
search cost is `evaluate`'s; emit deals a split node's instances by the plan's shares, preferring the
worker of each row's parent instance; EXPLAIN prints the split."""

from __future__ import annotations

import dataclasses
import random
import warnings

import pytest
from halo.plan import WhitespaceTokenizer, consolidate
from halo.plan.cost import ProfileMissingWarning, load_curves
from halo.plan.emit import emit, split_assignment
from halo.plan.plan_problem import build_plan_problem, split_degrees
from halo.plan.search import (
    CostTable,
    LLMTask,
    PlanProblem,
    Split,
    Worker,
    evaluate,
    plan_dp,
    plan_greedy,
)
from halo.spec import Workflow
from plan_problems import random_problem, workflow_problem
from reference_dp import search_python


def _chain(rows: int, big: bool, workers: int = 2) -> PlanProblem:
    """classify -> reply (reply shares classify's prefix), `rows` instances each. `big`: the work
    scales with the rows (a split halves it); else a tiny node whose share costs as much as the whole
    (flat latency) plus the prefix each share prefills again."""

    def split(k: int, prefill: float, decode: float, saving: float = 0.0, move: float = 0.0) -> Split:
        if big:
            return Split(k, prefill / k + 0.05, decode / k + 0.05, saving / k, move / k)
        return Split(k, prefill + 0.05, decode, saving, move)

    ways = split_degrees(workers, rows)
    classify = LLMTask("classify", "m", 2.0, 6.0, instances=rows, splits=tuple(split(k, 2.0, 6.0) for k in ways))
    reply = LLMTask(
        "reply",
        "m",
        3.0,
        8.0,
        ("classify",),
        "classify",
        1.0,
        0.5,
        instances=rows,
        splits=tuple(split(k, 3.0, 8.0, 1.0, 0.5) for k in ways),
    )
    if not big:
        classify = dataclasses.replace(classify, prefill_s=0.02, decode_s=0.03, splits=(Split(2, 0.07, 0.03),))
        reply = dataclasses.replace(
            reply,
            prefill_s=0.02,
            decode_s=0.03,
            kv_saving_s=0.01,
            kv_move_s=0.01,
            splits=(Split(2, 0.07, 0.03, 0.01, 0.01),),
        )
    return PlanProblem(
        (classify, reply),
        tuple(Worker(f"w{i}") for i in range(workers)),
        {"m": 1.0},
        {f"w{i}": "m" for i in range(workers)},
        epoch_overhead_s=0.005,
    )


@pytest.mark.parametrize("planner", ["native", "python", "greedy"])
def test_a_chain_node_is_split_over_two_workers_when_cheaper(planner: str) -> None:
    problem = _chain(300, big=True)
    plan = _plan(problem, planner)
    shares = plan.shares()
    assert shares == {"classify": {"w0": 150, "w1": 150}, "reply": {"w0": 150, "w1": 150}}
    # each reply share runs where its classify share's KV is: local on both workers
    assert {p.kv for e in plan.epochs for p in e.placements if p.task == "reply"} == {"local"}
    # whole: 2 + 6 + (3 - 1) + 8 = 18 s on one worker; split: each share (1.05 + 3.05) + (1.55 - 0.5 + 4.05)
    assert plan.makespan_s == pytest.approx(4.1 + 5.1 + 2 * 0.005)
    assert plan.cost < evaluate(problem, [[("classify", "w0")], [("reply", "w0")]], "whole").cost


@pytest.mark.parametrize("planner", ["native", "python", "greedy"])
def test_a_tiny_node_is_not_split(planner: str) -> None:
    plan = _plan(_chain(300, big=False), planner)
    assert plan.shares() == {}
    assert all(p.ways == 1 for e in plan.epochs for p in e.placements)


def _plan(problem: PlanProblem, planner: str):
    if planner == "greedy":
        return plan_greedy(problem)
    return plan_dp(problem, search=search_python) if planner == "python" else plan_dp(problem)


def test_the_search_cost_of_a_split_is_evaluates() -> None:
    """The native search's own cost of its plan equals `evaluate`'s pricing of that schedule."""
    from halo import _core
    from halo.plan.search.native import native_cost

    for problem in (_chain(300, big=True), _chain(300, big=True, workers=8), workflow_problem(8, 4, 100, splits=True)):
        tb = CostTable(problem)
        schedule, _, optimal, cost = _core.plan_dp_search(native_cost(tb), float("inf"), 200_000, None, 200_000, 6, 64)
        named = [[(tb.task_ids[t], tb.worker_ids[w]) for t, w in epoch] for epoch in schedule]
        assert optimal
        assert any(p.ways > 1 for e in evaluate(problem, named, "x").epochs for p in e.placements)
        assert evaluate(problem, named, "check").cost == pytest.approx(cost, abs=1e-9)


def _with_splits(problem: PlanProblem, seed: int) -> PlanProblem:
    rng = random.Random(seed)
    tasks = []
    for t in problem.tasks:
        if rng.random() < 0.6:
            ways = [k for k in (2, 3, 4) if k <= len(problem.workers)]
            splits = tuple(
                Split(
                    k,
                    t.prefill_s * rng.uniform(0.3, 1.1),
                    t.decode_s * rng.uniform(0.3, 1.1),
                    t.kv_saving_s * rng.uniform(0.2, 0.3),
                    t.kv_move_s * rng.uniform(0.3, 1.0),
                )
                for k in ways
            )
            t = dataclasses.replace(t, instances=rng.randint(4, 40), splits=splits)
        tasks.append(t)
    return dataclasses.replace(problem, tasks=tuple(tasks))


@pytest.mark.parametrize("chunk", range(2))
def test_native_and_reference_agree_with_splits(chunk: int) -> None:
    for seed in range(chunk * 30, chunk * 30 + 30):
        problem = _with_splits(random_problem(seed, max_tasks=6), seed)
        py = plan_dp(problem, search=search_python, state_budget=20_000)
        nat = plan_dp(problem, state_budget=20_000)
        assert py.states == nat.states and py.optimal == nat.optimal, f"seed {seed}: the mirror diverged"
        assert nat.cost == pytest.approx(py.cost, abs=1e-9), f"seed {seed}"
        assert nat.cost <= plan_greedy(problem).cost + 1e-9
        assert evaluate(problem, nat.schedule(), "check").cost == pytest.approx(nat.cost, abs=1e-9)


def test_evaluate_rejects_an_offered_degree_it_does_not_have() -> None:
    problem = _chain(300, big=False)
    with pytest.raises(ValueError, match="split 3 ways"):
        evaluate(
            dataclasses.replace(problem, workers=tuple(Worker(f"w{i}") for i in range(3))),
            [[("classify", "w0"), ("classify", "w1"), ("classify", "w2")], [("reply", "w0")]],
            "x",
        )
    with pytest.raises(ValueError, match="distinct and at least 2"):
        PlanProblem((LLMTask("a", "m", 1, 1, splits=(Split(1, 1, 1),)),), (Worker("w0"),), {"m": 1.0})


def test_split_degrees() -> None:
    assert split_degrees(1, 100) == []
    assert split_degrees(2, 100) == [2]
    assert split_degrees(6, 100) == [2, 4, 6]
    assert split_degrees(64, 5) == [2, 4, 5]


CHAIN = """
name: chain
inputs: [text]
nodes:
  - {id: classify, kind: llm, prompt: "Classify: {{ text }}", max_tokens: 4}
  - {id: reply, kind: llm, prompt: "Classify: {{ text }} Label: {{ classify.output }}. Reply:", max_tokens: 8}
"""


def _chain_graph(rows: int):
    wf = Workflow.from_yaml(CHAIN)
    return consolidate(wf, [{"text": f"message number {i}"} for i in range(rows)], WhitespaceTokenizer())


def test_emit_deals_a_split_nodes_instances_by_shares_and_parent_worker() -> None:
    """A real consolidated chain: classify split 2 ways, reply split 2 ways: each reply instance goes
    to the worker its classify instance ran on; with reply split over w1 and w2, the rows whose
    classify ran on w1 stay there, the rest fill w2."""
    graph = _chain_graph(10)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ProfileMissingWarning)
        problem = build_plan_problem(graph, load_curves, workers=3)
    assert {t.id: t.instances for t in problem.tasks} == {"classify": 10, "reply": 10}
    assert problem.task("reply").kv_parent == "classify" and problem.task("reply").splits[0].kv_saving_s > 0
    kv = {"reply": "classify"}
    table = graph.physical
    classify = [p for p in range(len(table)) if table.node[p] == "classify"]
    reply = [p for p in range(len(table)) if table.node[p] == "reply"]
    parent_of = {p: next(u for u in table.key[p][2] if table.node[u] == "classify") for p in reply}

    same = evaluate(problem, [[("classify", "w0"), ("classify", "w1")], [("reply", "w0"), ("reply", "w1")]], "x")
    assert same.shares() == {"classify": {"w0": 5, "w1": 5}, "reply": {"w0": 5, "w1": 5}}
    ex = emit(graph, same, 3, kv)
    assert [int(ex.queue[p]) for p in classify].count(0) == 5
    assert all(ex.queue[p] == ex.queue[parent_of[p]] for p in reply)
    assert ex.workers_of == {"classify": (0, 1), "reply": (0, 1)}
    assert ex.kv_source_of == {}  # every reply runs beside its classify's KV

    moved = evaluate(problem, [[("classify", "w0"), ("classify", "w1")], [("reply", "w1"), ("reply", "w2")]], "x")
    ex = emit(graph, moved, 3, kv)
    on = [int(ex.queue[p]) for p in reply]
    assert sorted(on) == [1] * 5 + [2] * 5
    assert all(ex.queue[p] == 1 for p in reply if ex.queue[parent_of[p]] == 1)
    # the plan moves (unmeasured move = recompute, the tie goes to moving): a reply on w2 pulls its
    # classify's prefix from the worker that ran it
    assert {p.kv for e in moved.epochs for p in e.placements if p.task == "reply"} == {"local", "move"}
    assert ex.kv_source_of == {p: int(ex.queue[parent_of[p]]) for p in reply if ex.queue[p] == 2}
    assert set(ex.kv_source_of.values()) == {0}

    whole = evaluate(problem, [[("classify", "w0")], [("reply", "w2")]], "x")  # unsplit: one worker per node
    ex = emit(graph, whole, 3, kv)
    assert {int(ex.queue[p]) for p in classify} == {0} and {int(ex.queue[p]) for p in reply} == {2}
    assert ex.workers_of == {}


def test_split_assignment_rescales_shares_and_prefers_parents() -> None:
    assert split_assignment([0, 1, 0, 1, None, None], {0: 3, 1: 3}) == [0, 1, 0, 1, 0, 1]
    assert split_assignment([0, 0, 0, 0], {0: 1, 1: 1}) == [0, 0, 1, 1]  # rescaled to 2 + 2
    assert split_assignment([2, 2, 2], {0: 2, 1: 1}) == [0, 0, 1]


def test_explain_shows_the_split() -> None:
    text = plan_dp(_chain(300, big=True)).explain()
    assert "split classify over 2 workers: w0=150, w1=150 instances" in text
    assert "w1[5.100s]: reply[150/300](kv local)" in text


def test_one_worker_offers_no_split_and_plans_as_before() -> None:
    graph = _chain_graph(10)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ProfileMissingWarning)
        problem = build_plan_problem(graph, load_curves, workers=1)
    assert all(not t.splits for t in problem.tasks)
    assert plan_dp(problem).shares() == {}
