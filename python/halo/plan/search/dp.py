"""Epoch DP: depth-first branch-and-bound over plan states, with memoisation and worker symmetry.

A state is (completed LLM tasks, completed tools, per-worker (kind, resident model, KV mask)), all
masks, where the KV mask keeps only tasks that are still some pending task's kv parent. Workers of
one kind in the same state are interchangeable, so a state is canonicalised by sorting the
per-worker tuples; actions name canonical slots and are mapped back to real workers on replay.
An action is one epoch: a set of ready LLM tasks on slots, or no LLM task at all (a tool-only
epoch) when the state's tool wave is not empty; the wave itself is never chosen (rule 5). A task
runs whole on one slot or, if it offers splits (rule 3b), k ways over the k preferred fresh slots
(holding its KV parent, then its model, then the rest): a proof is over these actions (the MILP
oracle knows no splits). The bound reads each task's least span and least total work over its
whole and split placements, so it stays admissible.

Invariant of `Search::solve(state, limit)`: it returns the exact least cost-to-go of `state` if that
is below `limit`, else some lower bound >= `limit`. Exact values and lower bounds are memoised, so a
state reached again (by another epoch order) is not searched twice. The admissible bound `bound` is
max(critical path, total work / workers, remaining tool CPU) + overhead x epochs still needed for
the makespan term, plus total work (with loads of models resident nowhere) for the summed-load term;
a model resident nowhere also lengthens the span by its load (see `bound`).

Two phases share one incumbent (first the greedy plan):
1. exact: every action, under the state budget and half the time limit. Completing it without
   hitting the per-state action cap proves the plan optimal (`ExecutionPlan.optimal`).
2. heuristic, only if phase 1 proved nothing (out of budget, or capped): the same search with a
   restricted action set, so large graphs still improve on greedy within the time limit. The
   documented heuristic (not a proof): only the `heuristic_width` highest-priority ready tasks are
   considered; a task goes only to a slot already running its model this epoch, a fresh slot
   holding its model or its KV parent, or the first fresh slot that must load; a worker holding a
   ready task's model is never left idle while that task waits; at most `heuristic_actions` epochs
   per state. Rounds repeat with twice the width and four times the actions, sharing the incumbent
   and one state budget, until the budget or the time limit runs out (or nothing is restricted).

The search itself runs in `halo._core` (csrc/epoch_dp.cpp, through `native.py`), with the GIL
released, for any number of LLM tasks, tools and workers. This module prices its plan and owns its
options; tests/plan/reference_dp.py keeps a Python transcription of the search, step for step, which
the tests hold the native one to (same plans, same proofs, same state counts).
"""

from __future__ import annotations

import time

from halo.plan.search.cost_table import CostTable
from halo.plan.search.execution_plan import ExecutionPlan, evaluate
from halo.plan.search.greedy import plan_greedy
from halo.plan.search.native import search_native
from halo.plan.search.problem import PlanProblem
from halo.plan.search.search_backend import SearchBackend, SearchOptions

_PRICING_SHARE = 0.05  # of a time limit, kept for pricing the found plan after the search


def plan_dp(
    problem: PlanProblem,
    *,
    state_budget: int = 200_000,
    time_limit_s: float | None = None,
    max_actions: int = 200_000,
    heuristic_width: int = 6,
    heuristic_actions: int = 64,
    search: SearchBackend = search_native,
) -> ExecutionPlan:
    """Least-cost plan by epoch DP (proven optimal unless a budget or cap cut the exact phase short).

    `search` runs the two phases; production always uses the native one, tests pass the reference.
    `time_limit_s` bounds the whole call (greedy, search and pricing), not only the search.
    """
    start = time.perf_counter()
    tb = CostTable(problem)
    greedy = plan_greedy(problem, tb)
    if time_limit_s is not None:  # the limit covers the whole call: the search gets what greedy left
        time_limit_s = max(0.0, time_limit_s * (1 - _PRICING_SHARE) - (time.perf_counter() - start))
    options = SearchOptions(state_budget, time_limit_s, max_actions, heuristic_width, heuristic_actions)
    result = search(tb, greedy.cost, options)
    if result.schedule is None:
        schedule = greedy.schedule()
    else:
        schedule = [[(tb.task_ids[t], tb.worker_ids[w]) for t, w in epoch] for epoch in result.schedule]
    return evaluate(
        problem,
        schedule,
        "dp",
        optimal=result.optimal,
        states=result.states,
        table=tb,
        serial_cost=greedy.serial_cost,
        backend=result.backend,
    )
