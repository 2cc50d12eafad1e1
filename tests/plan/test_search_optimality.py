"""The DP against the MILP oracle and the baselines on seeded random problems (same cost semantics)."""

from __future__ import annotations

import random
import time

import pytest
from halo.plan.search import (
    LLMTask,
    PlanProblem,
    Worker,
    evaluate,
    operator_at_a_time,
    plan_dp,
    plan_greedy,
    random_schedule,
    round_robin,
    serial,
    solve_milp,
)

SEEDS = range(54)


def random_problem(seed: int, max_tasks: int = 6, max_workers: int = 4) -> PlanProblem:
    rng = random.Random(seed)
    n = rng.randint(3, max_tasks)
    models = ["m0", "m1", "m2"][: rng.randint(1, 3)]
    tasks: list[LLMTask] = []
    for i in range(n):
        deps = tuple(f"t{j}" for j in range(i) if rng.random() < 0.3)
        model = rng.choice(models)
        prefill = round(rng.uniform(0.2, 3.0), 3)
        same = [d for d in deps if tasks[int(d[1:])].model == model]
        parent = rng.choice(same) if same and rng.random() < 0.7 else None
        saving = round(rng.uniform(0, prefill), 3) if parent else 0.0
        move = round(rng.uniform(0, 2), 3) if parent else 0.0
        tasks.append(LLMTask(f"t{i}", model, prefill, round(rng.uniform(0.2, 4.0), 3), deps, parent, saving, move))
    kinds = [("a", 1.0), ("a", 1.0), ("b", 1.5), ("a", 1.0)]
    workers = tuple(Worker(f"w{i}", *kinds[i]) for i in range(rng.randint(1, max_workers)))
    return PlanProblem(
        tuple(tasks),
        workers,
        {m: round(rng.uniform(0.5, 4.0), 3) for m in models},
        {w.id: rng.choice([None, *models]) for w in workers},
        epoch_overhead_s=rng.choice([0.0, 0.05, 0.3]),
        load_weight=rng.choice([0.0, 0.0, 0.1, 0.5]),
    )


def test_dp_matches_milp_and_beats_baselines() -> None:
    rows = []
    start = time.perf_counter()
    for seed in SEEDS:
        problem = random_problem(seed)
        dp = plan_dp(problem)
        assert dp.optimal
        assert abs(evaluate(problem, dp.schedule(), "check").cost - dp.cost) < 1e-9
        oracle = solve_milp(problem, time_limit_s=20.0)
        scale = max(1.0, oracle.cost)
        assert abs(oracle.plan.cost - oracle.cost) < 1e-5 * scale, "MILP and evaluator disagree on costs"
        assert dp.cost >= oracle.dual_bound - 1e-6 * scale, f"seed {seed}: DP below the MILP optimum"
        assert dp.cost <= oracle.plan.cost * 1.05 + 1e-9, f"seed {seed}: DP more than 5% above the MILP"
        for base in (
            round_robin(problem),
            random_schedule(problem, seed),
            operator_at_a_time(problem),
            serial(problem),
        ):
            assert dp.cost <= base.cost + 1e-9, f"seed {seed}: DP worse than {base.planner}"
        greedy = plan_greedy(problem)
        rows.append((len(problem.tasks), len(problem.workers), dp.cost, oracle.plan.cost, greedy.cost, oracle.optimal))
    gaps = [d / m - 1 for _, _, d, m, _, _ in rows]
    greedy_gaps = [g / d - 1 for _, _, d, _, g, _ in rows]
    print(
        f"\n{len(rows)} problems ({time.perf_counter() - start:.1f}s): MILP proven optimal on"
        f" {sum(r[5] for r in rows)}; DP vs MILP gap max {max(gaps):+.2e} mean {sum(gaps) / len(gaps):+.2e};"
        f" greedy vs DP gap mean {sum(greedy_gaps) / len(greedy_gaps):.1%} max {max(greedy_gaps):.1%},"
        f" optimal on {sum(g < 1e-9 for g in greedy_gaps)}"
    )
    assert sum(r[5] for r in rows) >= 50


@pytest.mark.parametrize("seed", range(5))
def test_explain_has_one_line_per_epoch_and_a_saving(seed: int) -> None:
    problem = random_problem(seed)
    plan = plan_dp(problem)
    lines = plan.explain().splitlines()
    assert len(lines) == 1 + len(plan.epochs)
    assert "saving=" in lines[0]
    assert plan.cost <= plan.serial_cost + 1e-9
    assert abs(sum(e.time_s for e in plan.epochs) - plan.makespan_s) < 1e-9


def test_evaluate_rejects_broken_schedules() -> None:
    problem = PlanProblem(
        (LLMTask("a", "m", 1, 1), LLMTask("b", "m", 1, 1, ("a",)), LLMTask("c", "n", 1, 1)),
        (Worker("w0"),),
        {"m": 1.0, "n": 1.0},
    )
    with pytest.raises(ValueError, match="dependencies"):
        evaluate(problem, [[("b", "w0")], [("a", "w0"), ("c", "w0")]], "bad")
    with pytest.raises(ValueError, match="two models"):
        evaluate(problem, [[("a", "w0"), ("c", "w0")], [("b", "w0")]], "bad")
    with pytest.raises(ValueError, match="unscheduled"):
        evaluate(problem, [[("a", "w0")]], "bad")
