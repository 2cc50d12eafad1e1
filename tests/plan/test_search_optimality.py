"""The DP against the MILP oracle and the baselines on seeded random problems (same cost semantics).

Problems have 3 to `MAX_TASKS` (12, as issue 5 asks) LLM tasks, 1-4 workers of two kinds, 1-3
models, tool tasks between them, KV parents, overheads and load weights (`plan_problems.random_problem`).
The MILP (`milp.py`: exact models over a growing number of epochs, each paired with a relaxed tail
for longer plans) stops once its best plan is within `MILP_GAP` of its proven lower bound: the test
asserts against that bound, so "DP within 5% of the optimum" is proven on every instance (DP <= 1.05
x bound), a DP plan below the bound would mean the two disagree on costs, and a MILP plan cheaper
than the DP's would mean the DP missed the optimum. No instance may end on the time limit.

The MILP gets the DP plan's cost as its `upper_bound`: a cut that any cheaper plan passes (so the
check loses nothing) and that prunes the MILP's search harder than the greedy plan's cost.

Measured on a shared 2-core machine (54 seeds, up to 12 LLM tasks): about 100 s of MILP time with a
4% gap and the greedy plan's cut, the slowest instance 10-15 s; closing every gap to 0 takes about
twice that (the proofs that no plan with more epochs is cheaper dominate), so the test keeps the 4%
gap. With `-s` it prints the DP's gap over the proven bound and the greedy planner's gap over the DP optimum.
"""

from __future__ import annotations

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
from plan_problems import random_problem

SEEDS = range(54)
MAX_TASKS = 12
MILP_GAP = 0.04
MILP_TIME_LIMIT_S = 90.0  # a safety net only: an instance that reaches it fails the test


def test_dp_matches_milp_and_beats_baselines() -> None:
    rows = []
    start = time.perf_counter()
    for seed in SEEDS:
        problem = random_problem(seed, max_tasks=MAX_TASKS)
        dp = plan_dp(problem)
        assert dp.optimal, f"seed {seed}: the DP did not prove optimality"
        assert abs(evaluate(problem, dp.schedule(), "check").cost - dp.cost) < 1e-9
        began = time.perf_counter()
        # the DP plan's cost (priced by `evaluate`, a real plan's) is the MILP's known-plan cut: a
        # cheaper plan is still found, and the tighter cut caps the epochs the MILP must rule out
        oracle = solve_milp(problem, time_limit_s=MILP_TIME_LIMIT_S, upper_bound=dp.cost, rel_gap=MILP_GAP)
        milp_s = time.perf_counter() - began
        assert oracle.optimal, f"seed {seed}: the MILP did not close its gap in {MILP_TIME_LIMIT_S} s"
        scale = max(1.0, oracle.cost)
        assert oracle.plan.cost <= oracle.cost + 1e-5 * scale, "the MILP prices its plan below the evaluator"
        assert dp.cost <= oracle.plan.cost + 1e-9, f"seed {seed}: the MILP found a plan cheaper than the DP optimum"
        assert dp.cost >= oracle.dual_bound - 1e-6 * scale, f"seed {seed}: DP below the MILP's proven bound"
        assert dp.cost <= 1.05 * oracle.dual_bound + 1e-9, f"seed {seed}: DP not proven within 5% of the optimum"
        for base in (
            round_robin(problem),
            random_schedule(problem, seed),
            operator_at_a_time(problem),
            serial(problem),
        ):
            assert dp.cost <= base.cost + 1e-9, f"seed {seed}: DP worse than {base.planner}"
        greedy = plan_greedy(problem)
        rows.append((seed, len(problem.tasks), len(problem.tools), dp.cost, oracle, greedy.cost, milp_s))
    gaps = [r[3] / r[4].dual_bound - 1 for r in rows]
    greedy_gaps = [r[5] / r[3] - 1 for r in rows]
    slowest = max(rows, key=lambda r: r[6])
    print(
        f"\n{len(rows)} problems, {min(r[1] for r in rows)}-{max(r[1] for r in rows)} LLM tasks"
        f" ({sum(r[1] == MAX_TASKS for r in rows)} with {MAX_TASKS}), {sum(r[2] for r in rows)} tools,"
        f" {time.perf_counter() - start:.1f}s (MILP {sum(r[6] for r in rows):.1f}s, slowest seed {slowest[0]}"
        f" with {slowest[1]} tasks {slowest[6]:.1f}s, {sum(r[4].solves for r in rows)} MILPs solved)\n"
        f"DP over the MILP's proven bound: max {max(gaps):+.2%} mean {sum(gaps) / len(gaps):+.2%}"
        f" (bound proven within {MILP_GAP:.0%}; exactly 0 on {sum(g < 1e-9 for g in gaps)});"
        f" DP == MILP plan cost on {sum(abs(r[4].plan.cost - r[3]) < 1e-6 for r in rows)}\n"
        f"greedy over the DP optimum: mean {sum(greedy_gaps) / len(greedy_gaps):.1%} max {max(greedy_gaps):.1%},"
        f" optimal on {sum(g < 1e-9 for g in greedy_gaps)}"
    )
    assert len(rows) >= 50 and max(r[1] for r in rows) == MAX_TASKS


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


def test_tools_are_prepared_ahead_and_only_their_excess_costs() -> None:
    from halo.plan.search import ToolTask

    # a -> x (tool, 3 s) -> b; y (tool, 0.5 s) reads nothing; c runs beside x's wave
    problem = PlanProblem(
        (LLMTask("a", "m", 1, 0), LLMTask("b", "m", 1, 0, ("x",)), LLMTask("c", "m", 2, 0)),
        (Worker("w0"), Worker("w1")),
        {"m": 0.0},
        tools=(ToolTask("x", 3.0, ("a",)), ToolTask("y", 0.5)),
    )
    # y overlaps epoch 1 (1 s of LLM work), x overlaps c (2 s) and costs 1 s more; b after x
    plan = evaluate(problem, [[("a", "w0")], [("c", "w0")], [("b", "w0")]], "check")
    assert [e.tools for e in plan.epochs] == [("y",), ("x",), ()]
    assert [e.time_s for e in plan.epochs] == [1.0, 3.0, 1.0]
    # b would read x before it ran: a tool-only epoch is inserted for x
    rushed = evaluate(problem, [[("a", "w0"), ("c", "w1")], [("b", "w0")]], "check")
    assert [(len(e.placements), e.tools) for e in rushed.epochs] == [(2, ("y",)), (0, ("x",)), (1, ())]
    assert rushed.cost == pytest.approx(2.0 + 3.0 + 1.0)
    with pytest.raises(ValueError, match="tool inputs"):
        evaluate(problem, [[("b", "w0")], [("a", "w0"), ("c", "w0")]], "bad")
    best = plan_dp(problem)
    assert best.optimal and best.cost == pytest.approx(5.0)
    assert abs(solve_milp(problem).cost - best.cost) < 1e-6
