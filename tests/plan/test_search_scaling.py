"""Planning time depends on the graph, not on batch rows; a 30-node, 8-worker graph plans fast."""

from __future__ import annotations

import random
import time

from halo.plan.search import LLMTask, PlanProblem, Worker, plan_dp


def workflow_problem(nodes: int, workers: int, rows: int, seed: int = 0) -> PlanProblem:
    """A layered workflow whose nodes each batch all `rows` (times scale with rows, node count does not)."""
    rng = random.Random(seed)
    tasks: list[LLMTask] = []
    for i in range(nodes):
        deps = tuple(f"n{j}" for j in range(max(0, i - 4), i) if rng.random() < 0.35)
        model = f"m{i % 3}"
        same = [d for d in deps if tasks[int(d[1:])].model == model]
        prefill = 0.002 * rows * rng.uniform(0.5, 2)
        tasks.append(
            LLMTask(
                f"n{i}",
                model,
                prefill,
                0.004 * rows * rng.uniform(0.5, 2),
                deps,
                same[0] if same else None,
                prefill / 2 if same else 0.0,
                0.1 if same else 0.0,
            )
        )
    pool = tuple(Worker(f"w{i}") for i in range(workers))
    return PlanProblem(tuple(tasks), pool, {"m0": 2.0, "m1": 3.0, "m2": 1.5}, epoch_overhead_s=0.01)


def test_planning_time_is_independent_of_rows() -> None:
    timings = {}
    for rows in (10, 1_000, 10_000):
        problem = workflow_problem(12, 2, rows)
        start = time.perf_counter()
        plan = plan_dp(problem, state_budget=5_000, time_limit_s=2.0)
        timings[rows] = time.perf_counter() - start
        assert len(plan.schedule()) >= 1 and sum(len(e) for e in plan.schedule()) == 12
    print("\nplanning seconds by rows:", {r: round(t, 3) for r, t in timings.items()})
    assert max(timings.values()) < 5.0


def test_thirty_nodes_on_eight_workers_plans_quickly() -> None:
    problem = workflow_problem(30, 8, 1_000)
    start = time.perf_counter()
    plan = plan_dp(problem, state_budget=2_000, time_limit_s=0.8)
    elapsed = time.perf_counter() - start
    print(
        f"\n30 nodes / 8 workers: {elapsed:.3f}s, {plan.states} states, cost {plan.cost:.2f}, saving {plan.saving:.1%}"
    )
    assert sum(len(e) for e in plan.schedule()) == 30
    assert plan.cost <= plan.serial_cost
    assert elapsed < 5.0
