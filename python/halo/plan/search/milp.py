"""MILP oracle (scipy.optimize.milp / HiGHS) for small problems: the optimal cost under the same semantics.

It is an independent check of the DP: it reads only the `CostTable` (not the DP's bounds or plans)
and proves its own lower bound.

Epoch-indexed model with E exact epochs. Variables, for LLM task t, worker w, epoch e < E, model k, tool a:
  x[t,w,e]  binary: t runs on w in epoch e            r[w,e,k] binary: k resident on w during e
  s[w,e,k]  >= 0: k switched in on w at e (load)      z[t,w,e] in [0,1]: t on w at e with its parent's KV on w
  T[e] >= 0: epoch time                               u[e] binary: epoch e is used
  a[a,e] in [0,1]: tool a has run by the end of epoch e (forced to 0/1 by the x)
busy[w,e] = sum_t x*(base+penalty)/speed - sum_t z*penalty/speed + sum_k s*load.
Constraints: each task once; epoch(t) >= epoch(d) + 1 per dependency; x <= r (one model per worker
per epoch, since sum_k r <= 1); r[e] <= r[e-1] + (runs k at e) (no preloading); s >= r[e] - r[e-1];
z <= x, z <= (parent ran on w); T[e] >= busy[w,e]; u[e] >= x; u[e+1] <= u[e].
Tools run as soon as their inputs are complete (rule 5), so `a` is an AND, not a choice:
a[a,e] = AND over the tool's LLM ancestors t of (t ran by e-1), linearised both ways; the wave of
epoch e is a[.,e] - a[.,e-1], and T[e] >= its CPU time; an LLM reader of tool a runs at e only if
a[a,e-1] = 1.
Objective: w_makespan * sum_e (T[e] + overhead * u[e]) + w_load * sum busy.

Why a tail: the LP relaxation spreads tasks thinly over epochs, so its bound is weak (20-30% below
the optimum at 10-12 tasks), and the gap HiGHS must close by branching grows steeply with E. The
number of epochs an optimal plan may need (`_epoch_count`: one per LLM task plus one per tool wave,
capped by overhead) is far above what optimal plans use (about the longest chain). So for k = the
longest chain, k + 1, ... the oracle splits the plans in two and solves two models:
- within: plans with at most k epochs, exactly (E = k, no tail). Small and fast; its solution is a
  real plan (the incumbent) and its bound holds for all such plans.
- beyond: plans with more than k epochs: the first k exact and all used, the rest in one relaxed
  "tail" that must run something: y[t] = t runs in the tail, tools not run by epoch k run there, and
  the tail costs a lower bound of those epochs: each dependency chain's remaining members back to
  back (LLM members in distinct epochs, overhead each); each tail task at least its own time on
  the fastest worker holding its model after epoch k, or on the fastest worker plus a load; the
  remaining work and loads of models held by no worker spread over all workers (by count and by
  speed); the remaining tool CPU. Every such plan maps onto it at no more than its cost. It is asked
  only whether a plan cheaper than the incumbent / (1 + rel_gap) exists (objective cut, first
  solution ends it): infeasible proves the incumbent within the gap; otherwise k grows.
min(within bound, beyond bound) is a proven lower bound for every k (each plan is in one of the two);
the oracle reports the largest. At k = `_epoch_count` no beyond model is needed (no optimal plan
has more epochs), so the sequence always ends with a proof unless the time limit cuts it.

Tightening, all valid for some optimal plan: identical workers (same kind and initial model) ordered
by the lowest task index each runs (on exact epochs); each task's epoch window from its chains of
dependencies (and tool epochs) before it, and after it in a model without a tail; chain cuts
(T[e] >= the member of a dependency chain that runs in e); a cut at a known plan's cost (the greedy
plan, `upper_bound`, or the within model's best plan). Nothing here reads the DP.

This module runs the sequence of models; `milp_model.MilpModel` builds one, a method per constraint
family (precedence, tool waves, residency and loads, KV locality, epoch time, chain cuts, the tail).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from halo.plan.search.cost_table import CostTable
from halo.plan.search.execution_plan import ExecutionPlan, evaluate
from halo.plan.search.greedy import plan_greedy
from halo.plan.search.milp_model import MilpModel, epoch_windows
from halo.plan.search.problem import PlanProblem


@dataclass(frozen=True)
class MilpResult:
    cost: float  # cost of the best plan found (`plan.cost`)
    dual_bound: float  # proven lower bound on the optimum (== cost when solved to optimality)
    optimal: bool  # the plan is proven within `rel_gap` of the optimum (dual_bound)
    plan: ExecutionPlan
    solves: int = 1  # MILPs solved (a within and a beyond model per number of exact epochs tried)
    epochs: int = 0  # exact epochs of the last models solved


def solve_milp(
    problem: PlanProblem,
    time_limit_s: float = 60.0,
    upper_bound: float | None = None,
    rel_gap: float = 1e-9,
    verbose: bool = False,
) -> MilpResult:
    """Optimal plan cost by MILP. `upper_bound`: the cost of a known plan (default: the greedy plan's);
    `rel_gap`: stop once the best plan is within this fraction of the proven bound (`dual_bound`)."""
    deadline = time.perf_counter() + time_limit_s
    tb = CostTable(problem)
    best = plan_greedy(problem, tb)
    ub = min(best.cost, upper_bound if upper_bound is not None else best.cost)
    _, _, depth = epoch_windows(tb)
    most = _epoch_count(tb, ub)
    k = min(max(max(depth, default=1), 1), most)
    bound, solves = 0.0, 0

    def left() -> float:
        return max(deadline - time.perf_counter(), 0.01)

    def proven() -> bool:  # HiGHS stops within an absolute 1e-6 of its bound (its `mip_abs_gap`)
        return best.cost <= bound * (1 + rel_gap) * (1 + 1e-9) + 2e-6

    while True:
        # plans with at most k epochs, exactly: the best of them (a real plan), or a bound on them
        within = MilpModel(tb, k, False, min(ub, best.cost)).solve(left(), 1e-9, verbose)
        solves += 1
        if within.schedule is not None:
            plan = evaluate(problem, within.schedule, "milp", table=tb)
            if plan.cost < best.cost:
                best = plan
        if k >= most:  # no optimal plan needs more epochs: this bound holds for every plan
            bound = max(bound, within.bound)
            break
        # plans with more than k epochs (first k exact, a non-empty tail): is any of them cheaper than
        # the best plan by more than the gap? Infeasible proves not; any solution found says try k + 1
        target = min(ub, best.cost) / (1 + rel_gap) * (1 - 1e-9)
        beyond = MilpModel(tb, k, True, target).solve(left(), 1e9, verbose)  # stop at any solution
        solves += 1
        bound = max(bound, min(within.bound, beyond.bound))  # every plan has <= k epochs or more
        if proven() or time.perf_counter() >= deadline:
            break
        k += 1
    closed = proven()
    bound = min(bound, best.cost)
    optimal = best.cost <= bound * (1 + 1e-6) + 1e-9
    plan = evaluate(problem, best.schedule(), "milp", optimal=optimal, table=tb)
    return MilpResult(plan.cost, bound, closed, plan, solves, k)


def _epoch_count(tb: CostTable, upper_bound: float) -> int:
    """Epochs enough for an optimal plan. At most one per LLM task plus one per distinct set of tool
    inputs (a tool-only epoch runs at least one newly complete wave). And a plan with k epochs, at
    least j = k - (tool-only epochs) of them with LLM tasks, costs at least
    w_makespan * (max(span bound, sum of the j smallest task times) + k * overhead) + w_load * work:
    each LLM epoch lasts as long as its longest task, a distinct task per epoch. No plan that costs
    more than `upper_bound` (a known plan's cost) is optimal, which caps k."""
    tool_only = len({tb.tool_anc[a] for a in range(tb.n_tools)})
    most = tb.n + tool_only
    work = sum(tb.base_s) / tb.max_speed
    work += sum(tb.load_s[m] for m in set(tb.model_of) if m not in tb.initial_model)
    down, depth, tdown, _ = tb.paths(tb.all_mask, tb.all_tools)
    span = max([*down, *tdown, work / tb.W, sum(tb.tool_s)], default=0.0)
    times = sorted(b / tb.max_speed for b in tb.base_s)
    least = max(depth, default=1)
    k = least
    while k < most:
        j = max(0, k + 1 - tool_only)
        bound = tb.w_makespan * (max(span, sum(times[:j])) + (k + 1) * tb.overhead_s) + tb.w_load * work
        if bound > upper_bound * (1 + 1e-9) + 1e-9:
            break
        k += 1
    return max(k, 1)
