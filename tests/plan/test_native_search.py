"""The native evaluator and epoch DP (halo._core) against the Python reference on random problems."""

from __future__ import annotations

import pytest
from halo.plan.search import CostTable, evaluate, plan_dp, plan_greedy, round_robin
from halo.plan.search.native import native_available
from plan_problems import random_problem, workflow_problem

_core = pytest.importorskip("halo._core")
pytestmark = pytest.mark.skipif(not hasattr(_core, "PlanCost"), reason="halo._core built without the plan search")


def _indices(tb: CostTable, schedule) -> list[list[tuple[int, int]]]:
    return [[(tb.task_index[t], tb.worker_ids.index(w)) for t, w in epoch] for epoch in schedule]


def test_native_evaluator_prices_like_python() -> None:
    from halo.plan.search.native import native_cost

    for seed in range(80):
        problem = random_problem(seed, max_tasks=8)
        tb = CostTable(problem)
        native = native_cost(tb)
        for plan in (plan_greedy(problem, tb), round_robin(problem)):
            cost, makespan, summed, epochs = native.evaluate(_indices(tb, plan.schedule()))
            assert abs(cost - plan.cost) < 1e-9
            assert abs(makespan - plan.makespan_s) < 1e-9
            assert abs(summed - plan.summed_load_s) < 1e-9
            assert epochs == len(plan.epochs)
        assert native.bottom_levels() == pytest.approx(tb.bottom_levels(), abs=1e-12)


def test_native_evaluator_rejects_broken_schedules() -> None:
    from halo.plan.search.native import native_cost

    problem = random_problem(3)
    tb = CostTable(problem)
    with pytest.raises(ValueError, match="unscheduled"):
        native_cost(tb).evaluate([])


@pytest.mark.parametrize("chunk", range(4))
def test_native_dp_equals_python_dp(chunk: int) -> None:
    for seed in range(chunk * 40, chunk * 40 + 40):
        problem = random_problem(seed, max_tasks=8)
        assert native_available(CostTable(problem))
        py = plan_dp(problem, backend="python", state_budget=20_000)
        nat = plan_dp(problem, backend="native", state_budget=20_000)
        assert nat.backend == "native" and py.backend == "python"
        assert abs(py.cost - nat.cost) < 1e-9, f"seed {seed}"
        assert py.optimal == nat.optimal, f"seed {seed}"
        assert py.states == nat.states, f"seed {seed}: the mirror diverged"
        assert abs(evaluate(problem, nat.schedule(), "check").cost - nat.cost) < 1e-9


def test_native_is_the_default_and_budgets_match() -> None:
    problem = workflow_problem(15, 2, 100)
    assert plan_dp(problem).backend == "native"
    py = plan_dp(problem, backend="python", state_budget=300)
    nat = plan_dp(problem, backend="native", state_budget=300)
    assert not py.optimal and not nat.optimal
    assert abs(py.cost - nat.cost) < 1e-9 and py.states == nat.states


@pytest.mark.parametrize(("nodes", "workers", "budget"), [(30, 8, 1000), (30, 4, 3000), (20, 2, 1500)])
def test_native_mirrors_python_through_the_heuristic_phase(nodes: int, workers: int, budget: int) -> None:
    """Out of proof budget both run the same widening heuristic rounds and stop at the same state."""
    problem = workflow_problem(nodes, workers, 100)
    py = plan_dp(problem, backend="python", state_budget=budget)
    nat = plan_dp(problem, backend="native", state_budget=budget)
    assert not py.optimal and not nat.optimal
    assert py.states == nat.states and abs(py.cost - nat.cost) < 1e-9
    assert nat.cost <= plan_greedy(problem).cost + 1e-9
