"""The native epoch DP (halo._core, the production search) against the Python reference
(reference_dp.py) on random problems: the same plans, the same proofs, the same state counts."""

from __future__ import annotations

import math

import pytest
from halo.plan.search import LLMTask, PlanProblem, ToolTask, Worker, evaluate, plan_dp, plan_greedy
from plan_problems import random_problem, workflow_problem
from reference_dp import search_python


def _same_search(problem: PlanProblem, **options: int) -> None:
    py = plan_dp(problem, search=search_python, **options)
    nat = plan_dp(problem, **options)
    assert nat.backend == "native" and py.backend == "python"
    assert abs(py.cost - nat.cost) < 1e-9
    assert py.optimal == nat.optimal
    assert py.states == nat.states, "the mirror diverged"
    assert abs(evaluate(problem, nat.schedule(), "check").cost - nat.cost) < 1e-9


@pytest.mark.parametrize("chunk", range(4))
def test_native_dp_equals_python_dp(chunk: int) -> None:
    for seed in range(chunk * 40, chunk * 40 + 40):
        try:
            _same_search(random_problem(seed, max_tasks=8), state_budget=20_000)
        except AssertionError as e:
            raise AssertionError(f"seed {seed}: {e}") from e


def test_native_is_the_default_and_budgets_match() -> None:
    problem = workflow_problem(15, 2, 100)
    assert plan_dp(problem).backend == "native"
    py = plan_dp(problem, search=search_python, state_budget=300)
    nat = plan_dp(problem, state_budget=300)
    assert not py.optimal and not nat.optimal
    assert abs(py.cost - nat.cost) < 1e-9 and py.states == nat.states


@pytest.mark.parametrize(("nodes", "workers", "budget"), [(30, 8, 1000), (30, 4, 3000), (20, 2, 1500)])
def test_native_mirrors_python_through_the_heuristic_phase(nodes: int, workers: int, budget: int) -> None:
    """Out of proof budget both run the same widening heuristic rounds and stop at the same state."""
    problem = workflow_problem(nodes, workers, 100)
    py = plan_dp(problem, search=search_python, state_budget=budget)
    nat = plan_dp(problem, state_budget=budget)
    assert not py.optimal and not nat.optimal
    assert py.states == nat.states and abs(py.cost - nat.cost) < 1e-9
    assert nat.cost <= plan_greedy(problem).cost + 1e-9


def _chains(tasks: int, tools: int, workers: int) -> PlanProblem:
    """Two chains of LLM tasks over two models (KV parents along each chain), `tools` tools fed by
    them and read by later tasks, on `workers` workers: few ready tasks per state, so the exact phase
    stays small however many tasks and tools there are."""
    llm: list[LLMTask] = []
    tool_tasks: list[ToolTask] = []
    for i in range(tasks):
        chain, step = i % 2, i // 2
        prev = f"t{i - 2}" if step else None
        deps = () if prev is None else (prev,)
        if step % 2 == 1 and tool_tasks:
            deps += (f"x{len(tool_tasks) - 1}",)
        llm.append(LLMTask(f"t{i}", f"m{chain}", 0.5 + 0.1 * (i % 5), 0.3, deps, prev, 0.2 if prev else 0.0, 0.1))
        while len(tool_tasks) < tools * (i + 1) // tasks:
            tool_tasks.append(ToolTask(f"x{len(tool_tasks)}", 0.05, (f"t{i}",)))
    return PlanProblem(
        tuple(llm),
        tuple(Worker(f"w{k}") for k in range(workers)),
        {"m0": 1.0, "m1": 1.5},
        epoch_overhead_s=0.01,
        tools=tuple(tool_tasks),
    )


@pytest.mark.parametrize(
    ("tasks", "tools", "budget"),
    [(70, 4, 400), (70, 4, 150), (6, 300, 400)],
    ids=["70-tasks-proof", "70-tasks-heuristic", "300-tools"],
)
def test_more_than_64_tasks_or_tools_search_natively_like_the_reference(tasks: int, tools: int, budget: int) -> None:
    """Masks past one word (two inline words; past four, a heap vector: task_mask.h) search alike."""
    problem = _chains(tasks, tools, workers=2)
    assert len(problem.tasks) == tasks and len(problem.tools) == tools
    _same_search(problem, state_budget=budget)


@pytest.mark.parametrize("nodes", [150, 300])
def test_a_large_graph_plans_natively_within_a_budget(nodes: int) -> None:
    problem = workflow_problem(nodes, 4, 100)
    plan = plan_dp(problem, state_budget=200, max_actions=2_000)
    assert plan.backend == "native" and math.isfinite(plan.cost)
    assert sum(len(e) for e in plan.schedule()) == nodes
    assert abs(evaluate(problem, plan.schedule(), "check").cost - plan.cost) < 1e-9
    assert plan.cost <= plan_greedy(problem).cost + 1e-9
