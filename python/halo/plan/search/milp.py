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
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
from scipy.optimize import Bounds, LinearConstraint, milp
from scipy.sparse import coo_array

from halo.plan.search.cost_table import CostTable
from halo.plan.search.execution_plan import ExecutionPlan, evaluate
from halo.plan.search.greedy import plan_greedy
from halo.plan.search.problem import PlanProblem


@dataclass(frozen=True)
class MilpResult:
    cost: float  # cost of the best plan found (`plan.cost`)
    dual_bound: float  # proven lower bound on the optimum (== cost when solved to optimality)
    optimal: bool  # the plan is proven within `rel_gap` of the optimum (dual_bound)
    plan: ExecutionPlan
    solves: int = 1  # MILPs solved (a within and a beyond model per number of exact epochs tried)
    epochs: int = 0  # exact epochs of the last models solved


class _Model:
    def __init__(self) -> None:
        self.n = 0
        self.c: list[float] = []
        self.lo: list[float] = []
        self.hi: list[float] = []
        self.integral: list[int] = []
        self.rows: list[dict[int, float]] = []
        self.row_lo: list[float] = []
        self.row_hi: list[float] = []

    def var(self, cost: float = 0.0, lo: float = 0.0, hi: float = 1.0, integral: bool = True) -> int:
        self.c.append(cost)
        self.lo.append(lo)
        self.hi.append(hi)
        self.integral.append(int(integral))
        self.n += 1
        return self.n - 1

    def row(self, coef: dict[int, float], lo: float = -np.inf, hi: float = np.inf) -> None:
        self.rows.append(coef)
        self.row_lo.append(lo)
        self.row_hi.append(hi)


@dataclass
class _Solved:
    bound: float  # proven lower bound on every plan's cost
    schedule: list[list[tuple[str, str]]] | None  # a real plan (empty tail), if the solution is one
    closed: bool  # HiGHS proved its optimum (within the gap asked)


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
    _, _, depth = _epoch_windows(tb)
    most = _epoch_count(tb, ub)
    k = min(max(max(depth, default=1), 1), most)
    bound, solves = 0.0, 0

    def left() -> float:
        return max(deadline - time.perf_counter(), 0.01)

    def proven() -> bool:  # HiGHS stops within an absolute 1e-6 of its bound (its `mip_abs_gap`)
        return best.cost <= bound * (1 + rel_gap) * (1 + 1e-9) + 2e-6

    while True:
        # plans with at most k epochs, exactly: the best of them (a real plan), or a bound on them
        within = _solve(tb, k, False, min(ub, best.cost), left(), 1e-9, verbose)
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
        beyond = _solve(tb, k, True, target, left(), 1e9, verbose)  # stop at any solution
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


def _solve(
    tb: CostTable,
    E: int,
    tail: bool,
    ub: float,
    time_limit_s: float,
    rel_gap: float,
    verbose: bool,
) -> _Solved:
    """Build and solve the model with `E` exact epochs; with `tail`, only plans with more epochs than
    that: the rest of them in the relaxed tail, which must not be empty. `ub`: objective cut."""
    n, W, K = tb.n, tb.W, len(tb.models)
    wm, wl = tb.w_makespan, tb.w_load
    first, tool_first, depth = _epoch_windows(tb)
    md = _Model()
    x: dict[tuple[int, int, int], int] = {}
    at: list[list[list[int]]] = [[[] for _ in range(E)] for _ in range(n)]  # t -> e -> x vars
    busy: dict[tuple[int, int], dict[int, float]] = {(w, e): {} for w in range(W) for e in range(E)}
    # without a tail, t needs depth[t] - 1 epochs after its own; with one, those may be tail epochs
    last = [E - 1 if tail else E - depth[t] for t in range(n)]
    for t in range(n):
        for w in range(W):
            remote = (tb.base_s[t] + tb.penalty_s[t]) / tb.speed[w]
            for e in range(first[t], last[t] + 1):
                x[t, w, e] = md.var(wl * remote)
                at[t][e].append(x[t, w, e])
                busy[w, e][x[t, w, e]] = remote
    r = {(w, e, k): md.var() for w in range(W) for e in range(E) for k in range(K)}
    T = [md.var(wm, hi=np.inf, integral=False) for _ in range(E)]
    u = [md.var(wm * tb.overhead_s) for _ in range(E)]
    tau = [b / tb.max_speed for b in tb.base_s]  # least time of a task anywhere (tail costs)
    y = [md.var(wl * tau[t]) if tail else -1 for t in range(n)]  # t runs in the tail

    def ran_by(t: int, e: int) -> dict[int, float]:
        """Coefficients of 'task t ran in epoch e or before' (exact epochs only)."""
        return {v: 1.0 for ee in range(min(e + 1, E)) for v in at[t][ee]}

    for t in range(n):
        md.row({**{v: 1.0 for e in range(E) for v in at[t][e]}, **({y[t]: 1.0} if tail else {})}, 1.0, 1.0)
        for d in tb.deps[t]:
            for e in range(first[t], last[t] + 1):  # t ran by e => d ran by e - 1 (cumulative: tighter)
                md.row({**ran_by(t, e), **{v: -1.0 for v in ran_by(d, e - 1)}}, hi=0.0)
    # tools: a[a, e] = AND over the LLM ancestors of (ran by e - 1); the wave of e is a[e] - a[e-1]
    a_run: list[list[int | None]] = []  # None: constant (0 before the tool's first epoch, 1 if no ancestors)
    for a in range(tb.n_tools):
        anc = [t for t in range(n) if tb.tool_anc[a] >> t & 1]
        row: list[int | None] = []
        for e in range(E):
            if not anc or e < tool_first[a]:
                row.append(None)
                continue
            v = md.var(integral=False)
            for t in anc:
                md.row({v: 1.0, **{xv: -1.0 for xv in ran_by(t, e - 1)}}, hi=0.0)
            coef: dict[int, float] = {v: 1.0}
            for t in anc:
                for xv in ran_by(t, e - 1):
                    coef[xv] = coef.get(xv, 0.0) - 1.0
            md.row(coef, lo=1.0 - len(anc))
            row.append(v)
        a_run.append(row)

    def tool_done(a: int, e: int) -> tuple[dict[int, float], float]:
        """(coefficients, constant) of 'tool a has run by the end of epoch e' (0 for e < 0)."""
        if e < 0:
            return {}, 0.0
        v = a_run[a][e]
        if v is None:
            return {}, 1.0 if tb.tool_anc[a] == 0 else 0.0
        return {v: 1.0}, 0.0

    def tool_in(a: int, e: int) -> tuple[dict[int, float], float]:
        """(coefficients, constant) of 'tool a runs in epoch e's wave' (e == E: in the tail)."""
        if e == E:
            done, const = tool_done(a, E - 1)
            return {v: -c for v, c in done.items()}, 1.0 - const
        now, c_now = tool_done(a, e)
        before, c_before = tool_done(a, e - 1)
        coef = dict(now)
        for v, c in before.items():
            coef[v] = coef.get(v, 0.0) - c
        return coef, c_now - c_before

    wave: list[dict[int, float]] = [{} for _ in range(E)]  # CPU seconds of epoch e's wave (+ constant)
    wave_const = [0.0] * E
    for a in range(tb.n_tools):
        for e in range(E):
            coef, const = tool_in(a, e)
            for v, c in coef.items():
                wave[e][v] = wave[e].get(v, 0.0) + c * tb.tool_s[a]
            wave_const[e] += const * tb.tool_s[a]
            if coef or const:  # the epoch is used if the tool runs in it
                md.row({**coef, u[e]: -1.0}, hi=-const)
    for t in range(n):
        for a in range(tb.n_tools):
            if tb.tool_dep_mask[t] >> a & 1:
                for e in range(first[t], last[t] + 1):  # t at e reads a, which ran by e - 1
                    done, const = tool_done(a, e - 1)
                    md.row({**{v: 1.0 for v in at[t][e]}, **{v: -c for v, c in done.items()}}, hi=const)
    for e in range(E):  # a used epoch runs something: no empty epochs, so each plan has one position
        coef = {v: -1.0 for t in range(n) for v in at[t][e]}
        const = 0.0
        for a in range(tb.n_tools):
            cf, c0 = tool_in(a, e)
            for v, c in cf.items():
                coef[v] = coef.get(v, 0.0) - c
            const += c0
        md.row({**coef, u[e]: 1.0}, hi=const)
    for e in range(E):
        if wave[e] or wave_const[e]:
            md.row({**{v: -c for v, c in wave[e].items()}, T[e]: 1.0}, lo=wave_const[e])
    _break_worker_symmetry(md, tb, x)
    loads: dict[tuple[int, int, int], int] = {}  # s[w, e, k]
    for w in range(W):
        for e in range(E):
            md.row({r[w, e, k]: 1.0 for k in range(K)}, hi=1.0)
            for k in range(K):
                runs = {x[t, w, e]: -1.0 for t in range(n) if tb.model_of[t] == k and (t, w, e) in x}
                prev = (1.0 if tb.initial_model[w] == k else 0.0) if e == 0 else None
                coef = {r[w, e, k]: 1.0, **runs}
                if prev is None:
                    coef[r[w, e - 1, k]] = -1.0
                md.row(coef, hi=prev or 0.0)  # r[e] <= r[e-1] + runs
                if tb.load_s[k] > 0:
                    s = loads[w, e, k] = md.var(wl * tb.load_s[k], hi=np.inf, integral=False)
                    busy[w, e][s] = tb.load_s[k]
                    coef = {r[w, e, k]: 1.0, s: -1.0}
                    if prev is None:
                        coef[r[w, e - 1, k]] = -1.0
                    md.row(coef, hi=prev or 0.0)  # s >= r[e] - r[e-1]
    # tail loads: a model some tail task runs and no worker holds after the last exact epoch is loaded
    tail_load: dict[int, int] = {}
    if tail:
        for k in sorted(set(tb.model_of)):
            if tb.load_s[k] > 0:
                tail_load[k] = md.var(wl * tb.load_s[k], hi=np.inf, integral=False)
                for t in range(n):
                    if tb.model_of[t] == k:
                        md.row({tail_load[k]: 1.0, y[t]: -1.0, **{r[w, E - 1, k]: 1.0 for w in range(W)}}, lo=0.0)
    for k in set(tb.model_of) - set(tb.initial_model):  # a model resident nowhere is loaded at least once
        if tb.load_s[k] > 0:
            coef = {v: 1.0 for (w, e, kk), v in loads.items() if kk == k}
            if k in tail_load:
                coef[tail_load[k]] = 1.0
            md.row(coef, lo=1.0)
    for (t, w, e), v in x.items():
        md.row({v: 1.0, r[w, e, tb.model_of[t]]: -1.0}, hi=0.0)
        p = tb.parent[t]
        if p >= 0 and tb.penalty_s[t] > 0:
            gain = tb.penalty_s[t] / tb.speed[w]
            z = md.var(-wl * gain, integral=False)
            busy[w, e][z] = -gain
            md.row({z: 1.0, v: -1.0}, hi=0.0)
            md.row({z: 1.0, **{x[p, w, pe]: -1.0 for pe in range(E) if (p, w, pe) in x}}, hi=0.0)
    for (_w, e), coef in busy.items():
        md.row({**coef, T[e]: -1.0}, hi=0.0)
    # chain cuts: the members of a dependency chain run in distinct epochs (tools of one wave add up),
    # so T[e] >= the time of whichever member runs in e; summed over e the LP sees the chain's length
    chains = _chains(tb)
    for chain_llm, chain_tools in chains:
        for e in range(E):
            coef = {}
            const = 0.0
            for t in chain_llm:
                for w in range(W):
                    if (t, w, e) in x:
                        coef[x[t, w, e]] = tb.base_s[t] / tb.speed[w]
            for a in chain_tools:
                cf, c0 = tool_in(a, e)
                for v, c in cf.items():
                    coef[v] = coef.get(v, 0.0) + c * tb.tool_s[a]
                const += c0 * tb.tool_s[a]
            if coef:
                md.row({**coef, T[e]: -1.0}, hi=-const)
    epochs_used = {v: 1.0 for v in u}
    if tail:
        # the tail: TT its epochs' time without overhead, NT their number (see the module docstring)
        TT = md.var(wm, hi=np.inf, integral=False)
        NT = md.var(wm * tb.overhead_s, hi=float(n + tb.n_tools), integral=True)
        epochs_used[NT] = 1.0
        for chain_llm, chain_tools in chains:
            coef = {y[t]: tau[t] for t in chain_llm}
            const = 0.0
            for a in chain_tools:
                cf, c0 = tool_in(a, E)
                for v, c in cf.items():
                    coef[v] = coef.get(v, 0.0) + c * tb.tool_s[a]
                const += c0 * tb.tool_s[a]
            md.row({**coef, TT: -1.0}, hi=-const)
            if chain_llm:  # the chain's LLM members left for the tail run in distinct tail epochs
                md.row({**{y[t]: 1.0 for t in chain_llm}, NT: -1.0}, hi=0.0)
        # the tail's LLM work and loads spread over all workers: by count, and by speed (a worker of
        # speed s does s seconds of base work per second; each load takes its seconds on one worker)
        spread = {y[t]: tau[t] for t in range(n)}
        spread.update({v: tb.load_s[k] for k, v in tail_load.items()})
        md.row({**spread, TT: -float(W)}, hi=0.0)
        spread = {y[t]: tb.base_s[t] for t in range(n)}
        spread.update({v: tb.load_s[k] * min(tb.speed) for k, v in tail_load.items()})
        md.row({**spread, TT: -sum(tb.speed)}, hi=0.0)
        # each tail task takes its own time on the worker it runs on, plus a load unless that worker
        # held its model after the last exact epoch. With workers sorted fastest first, held[k][j] <=
        # 'one of the first j + 1 holds k'; then TT >= alpha*y - sum_j (own_{j+1} - own_j)*held[k][j]
        # (own_W = alpha = fastest own time + load) is the least such time when y = 1
        fast = sorted(range(W), key=lambda w: -tb.speed[w])
        held: dict[int, list[int]] = {}
        for k in sorted(set(tb.model_of)):
            held[k] = []
            for j in range(W):
                h = md.var(integral=False)
                md.row({h: 1.0, **{r[fast[i], E - 1, k]: -1.0 for i in range(j + 1)}}, hi=0.0)
                held[k].append(h)
        for t in range(n):
            k = tb.model_of[t]
            own = [tb.base_s[t] / tb.speed[w] for w in fast] + [tau[t] + tb.load_s[k]]
            coef = {y[t]: own[W], TT: -1.0}
            for j in range(W):
                if own[j + 1] > own[j]:
                    coef[held[k][j]] = -(own[j + 1] - own[j])
            md.row(coef, hi=0.0)
        cpu: dict[int, float] = {}
        cpu_const = 0.0
        for a in range(tb.n_tools):
            cf, c0 = tool_in(a, E)
            for v, c in cf.items():
                cpu[v] = cpu.get(v, 0.0) + c * tb.tool_s[a]
            cpu_const += c0 * tb.tool_s[a]
            if cf or c0:  # a tool left for the tail needs a tail epoch
                md.row({**cf, NT: -1.0}, hi=-c0)
        if cpu:
            md.row({**cpu, TT: -1.0}, hi=-cpu_const)
        for t in range(n):  # the tail comes after all E exact epochs
            md.row({y[t]: 1.0, u[E - 1]: -1.0}, hi=0.0)
        coef = {y[t]: 1.0 for t in range(n)}  # the tail runs something: more than E epochs
        const = 0.0
        for a in range(tb.n_tools):
            cf, c0 = tool_in(a, E)
            for v, c in cf.items():
                coef[v] = coef.get(v, 0.0) + c
            const += c0
        md.row(coef, lo=1.0 - const)
    md.row(epochs_used, lo=float(max(depth, default=0)))  # at least the longest chain of epochs
    for e in range(E):
        for t in range(n):
            if at[t][e]:
                md.row({**{v: 1.0 for v in at[t][e]}, u[e]: -1.0}, hi=0.0)
        if e + 1 < E:
            md.row({u[e + 1]: 1.0, u[e]: -1.0}, hi=0.0)
    # a known plan is feasible: the optimum is no worse (a valid cut that helps HiGHS prune)
    cut = ub * (1 + 1e-9) + 1e-9
    md.row({j: cj for j, cj in enumerate(md.c) if cj}, hi=cut)
    rows, cols, vals = [], [], []
    for i, coef in enumerate(md.rows):
        for j, a in coef.items():
            rows.append(i)
            cols.append(j)
            vals.append(a)
    A = coo_array((vals, (rows, cols)), shape=(len(md.rows), md.n)).tocsr()
    res = milp(
        np.array(md.c),
        integrality=np.array(md.integral),
        bounds=Bounds(np.array(md.lo), np.array(md.hi)),
        constraints=LinearConstraint(A, np.array(md.row_lo), np.array(md.row_hi)),
        options={"time_limit": time_limit_s, "mip_rel_gap": rel_gap, "disp": verbose},
    )
    if res.status == 2:  # infeasible under the cut: every plan costs more than it
        return _Solved(cut, None, True)
    dual = getattr(res, "mip_dual_bound", None)
    bound = float(res.fun if dual is None else dual) if res.x is not None or dual is not None else 0.0
    if res.x is None:
        return _Solved(bound, None, False)
    sol = res.x
    in_tail = tail and (
        any(sol[y[t]] > 0.5 for t in range(n))
        or any(tool_in(a, E)[1] + _dot(tool_in(a, E)[0], sol) > 0.5 for a in range(tb.n_tools))
    )
    schedule = None
    if not in_tail:
        epochs: list[list[tuple[str, str]]] = [[] for _ in range(E)]  # tool-only epochs stay empty
        for (t, w, e), v in x.items():
            if sol[v] > 0.5:
                epochs[e].append((tb.task_ids[t], tb.worker_ids[w]))
        schedule = epochs
    return _Solved(bound, schedule, res.status == 0)


def _dot(coef: dict[int, float], sol: np.ndarray) -> float:
    return float(sum(c * sol[v] for v, c in coef.items()))


def _break_worker_symmetry(md: _Model, tb: CostTable, x: dict[tuple[int, int, int], int]) -> None:
    """Workers of one kind with the same initial model are interchangeable: any plan can be relabelled
    so that, in worker order, each one's lowest-numbered task is lower than the next one's."""
    on = {(t, w): [v for (tt, ww, _), v in x.items() if tt == t and ww == w] for t in range(tb.n) for w in range(tb.W)}
    for w2 in range(tb.W):
        same = [w for w in range(w2) if (tb.kind_of[w], tb.initial_model[w]) == (tb.kind_of[w2], tb.initial_model[w2])]
        if not same:
            continue
        w1 = same[-1]
        for t in range(tb.n):  # t on w2 => some task < t on w1
            coef = {v: 1.0 for v in on[t, w2]}
            for t1 in range(t):
                coef.update({v: -1.0 for v in on[t1, w1]})
            md.row(coef, hi=0.0)


def _epoch_windows(tb: CostTable) -> tuple[list[int], list[int], list[int]]:
    """Per LLM task its earliest epoch, per tool its earliest epoch, and per LLM task the least number
    of epochs from its own to the end (itself, later readers, trailing tool epochs)."""
    first, tool_first = [0] * tb.n, [0] * tb.n_tools
    for is_tool, i in tb.node_order:
        if is_tool:
            tool_first[i] = max(
                [first[d] + 1 for d in tb.tool_llm_deps[i]] + [tool_first[d] for d in tb.tool_tool_deps[i]], default=0
            )
        else:
            tool_in = [tool_first[a] + 1 for a in range(tb.n_tools) if tb.tool_dep_mask[i] >> a & 1]
            first[i] = max([first[d] + 1 for d in tb.deps[i]] + tool_in, default=0)
    _, depth, _, _ = tb.paths(tb.all_mask, tb.all_tools)
    return first, tool_first, depth


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


def _chains(tb: CostTable) -> list[tuple[list[int], list[int]]]:
    """Per LLM task and tool, the longest dependency chain through it (distinct chains only), as
    (LLM tasks, tools)."""
    nodes = tb.node_order
    weight = {node: (tb.tool_s[node[1]] if node[0] else tb.base_s[node[1]] / tb.max_speed) for node in nodes}
    preds: dict[tuple[bool, int], list[tuple[bool, int]]] = {node: [] for node in nodes}
    for is_tool, i in nodes:
        if is_tool:
            preds[True, i] = [(False, d) for d in tb.tool_llm_deps[i]] + [(True, d) for d in tb.tool_tool_deps[i]]
        else:
            tools = [(True, a) for a in range(tb.n_tools) if tb.tool_dep_mask[i] >> a & 1]
            preds[False, i] = [(False, d) for d in tb.deps[i]] + tools
    succs: dict[tuple[bool, int], list[tuple[bool, int]]] = {node: [] for node in nodes}
    for node in nodes:
        for p in preds[node]:
            succs[p].append(node)
    up: dict[tuple[bool, int], tuple[float, list[tuple[bool, int]]]] = {}
    for node in nodes:
        best = max((up[p] for p in preds[node]), key=lambda v: v[0], default=(0.0, []))
        up[node] = (best[0] + weight[node], [*best[1], node])
    down: dict[tuple[bool, int], tuple[float, list[tuple[bool, int]]]] = {}
    for node in reversed(nodes):
        best = max((down[c] for c in succs[node]), key=lambda v: v[0], default=(0.0, []))
        down[node] = (best[0] + weight[node], [node, *best[1]])
    chains: dict[frozenset[tuple[bool, int]], tuple[list[int], list[int]]] = {}
    for node in nodes:
        members = up[node][1] + down[node][1][1:]
        key = frozenset(members)
        if key not in chains:
            chains[key] = ([i for is_tool, i in members if not is_tool], [i for is_tool, i in members if is_tool])
    return list(chains.values())
