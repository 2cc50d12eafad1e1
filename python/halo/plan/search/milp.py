"""MILP oracle (scipy.optimize.milp / HiGHS) for small problems: the optimal cost under the same semantics.

Variables, for LLM task t, worker w, epoch e < E, model k, tool a:
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
Tightening, all valid for some optimal plan: identical workers (same kind and initial model) ordered
by the lowest task index each runs; each task's epoch window from its chains of dependencies (and
tool epochs) before and after it; the number of epochs E = LLM tasks + possible tool-only epochs,
further capped where a per-epoch overhead makes many epochs provably dearer than a known plan; a
cut at that known plan's cost (the greedy plan, or `upper_bound`).
Objective: w_makespan * sum_e (T[e] + overhead * u[e]) + w_load * sum busy.
"""

from __future__ import annotations

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
    cost: float  # objective of the best solution found
    dual_bound: float  # proven lower bound on the optimum (== cost when solved to optimality)
    optimal: bool
    plan: ExecutionPlan


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


def solve_milp(
    problem: PlanProblem,
    time_limit_s: float = 60.0,
    upper_bound: float | None = None,
    rel_gap: float = 1e-9,
    verbose: bool = False,
) -> MilpResult:
    """Optimal plan cost by MILP. `upper_bound`: the cost of a known plan (default: the greedy plan's);
    `rel_gap`: stop once the best plan is within this fraction of the proven bound (`dual_bound`)."""
    tb = CostTable(problem)
    n, W, K = tb.n, tb.W, len(tb.models)
    wm, wl = tb.w_makespan, tb.w_load
    greedy_cost = plan_greedy(problem, tb).cost
    ub = min(greedy_cost, upper_bound if upper_bound is not None else greedy_cost)
    first, tool_first, depth = _epoch_windows(tb)
    E = _epoch_count(tb, ub)
    md = _Model()
    x: dict[tuple[int, int, int], int] = {}
    at: list[list[list[int]]] = [[[] for _ in range(E)] for _ in range(n)]  # t -> e -> x vars
    busy: dict[tuple[int, int], dict[int, float]] = {(w, e): {} for w in range(W) for e in range(E)}
    for t in range(n):
        for w in range(W):
            remote = (tb.base_s[t] + tb.penalty_s[t]) / tb.speed[w]
            for e in range(first[t], E - depth[t] + 1):
                x[t, w, e] = md.var(wl * remote)
                at[t][e].append(x[t, w, e])
                busy[w, e][x[t, w, e]] = remote
    r = {(w, e, k): md.var() for w in range(W) for e in range(E) for k in range(K)}
    T = [md.var(wm, hi=np.inf, integral=False) for _ in range(E)]
    u = [md.var(wm * tb.overhead_s) for _ in range(E)]

    def ran_by(t: int, e: int) -> dict[int, float]:
        """Coefficients of 'task t ran in epoch e or before'."""
        return {v: 1.0 for ee in range(min(e + 1, E)) for v in at[t][ee]}

    for t in range(n):
        md.row({v: 1.0 for e in range(E) for v in at[t][e]}, 1.0, 1.0)
        for d in tb.deps[t]:
            for e in range(first[t], E - depth[t] + 1):  # t ran by e => d ran by e - 1 (cumulative: tighter)
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

    wave: list[dict[int, float]] = [{} for _ in range(E)]  # CPU seconds of epoch e's wave (+ constant)
    wave_const = [0.0] * E
    for a in range(tb.n_tools):
        for e in range(E):
            now, c_now = tool_done(a, e)
            before, c_before = tool_done(a, e - 1)
            for v, c in now.items():
                wave[e][v] = wave[e].get(v, 0.0) + c * tb.tool_s[a]
            for v, c in before.items():
                wave[e][v] = wave[e].get(v, 0.0) - c * tb.tool_s[a]
            wave_const[e] += (c_now - c_before) * tb.tool_s[a]
            if now or before or c_now - c_before:  # the epoch is used if the tool runs in it
                md.row(
                    {**{v: c for v, c in now.items()}, **{v: -c for v, c in before.items()}, u[e]: -1.0},
                    hi=c_before - c_now,
                )
    for t in range(n):
        for a in range(tb.n_tools):
            if tb.tool_dep_mask[t] >> a & 1:
                for e in range(first[t], E - depth[t] + 1):  # t at e reads a, which ran by e - 1
                    done, const = tool_done(a, e - 1)
                    md.row({**{v: 1.0 for v in at[t][e]}, **{v: -c for v, c in done.items()}}, hi=const)
    for e in range(E):  # a used epoch runs something: no empty epochs, so each plan has one position
        coef = {v: -1.0 for t in range(n) for v in at[t][e]}
        const = 0.0
        for a in range(tb.n_tools):
            now, c_now = tool_done(a, e)
            before, c_before = tool_done(a, e - 1)
            for v, c in now.items():
                coef[v] = coef.get(v, 0.0) - c
            for v, c in before.items():
                coef[v] = coef.get(v, 0.0) + c
            const += c_now - c_before
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
    for k in set(tb.model_of) - set(tb.initial_model):  # a model resident nowhere is loaded at least once
        if tb.load_s[k] > 0:
            md.row({v: 1.0 for (w, e, kk), v in loads.items() if kk == k}, lo=1.0)
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
    for chain_llm, chain_tools in _chains(tb):
        for e in range(E):
            coef: dict[int, float] = {}
            const = 0.0
            for t in chain_llm:
                for w in range(W):
                    if (t, w, e) in x:
                        coef[x[t, w, e]] = tb.base_s[t] / tb.speed[w]
            for a in chain_tools:
                now, c_now = tool_done(a, e)
                before, c_before = tool_done(a, e - 1)
                for v, c in now.items():
                    coef[v] = coef.get(v, 0.0) + c * tb.tool_s[a]
                for v, c in before.items():
                    coef[v] = coef.get(v, 0.0) - c * tb.tool_s[a]
                const += (c_now - c_before) * tb.tool_s[a]
            if coef:
                md.row({**coef, T[e]: -1.0}, hi=-const)
    md.row({v: 1.0 for v in u}, lo=float(max(depth, default=0)))  # at least the longest chain of epochs
    for e in range(E):
        for t in range(n):
            if at[t][e]:
                md.row({**{v: 1.0 for v in at[t][e]}, u[e]: -1.0}, hi=0.0)
        if e + 1 < E:
            md.row({u[e + 1]: 1.0, u[e]: -1.0}, hi=0.0)
    # a known plan is feasible: the optimum is no worse (a valid cut that helps HiGHS prune)
    md.row({j: cj for j, cj in enumerate(md.c) if cj}, lo=_root_bound(tb), hi=ub * (1 + 1e-9) + 1e-9)
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
    if res.x is None:
        raise RuntimeError(f"MILP found no solution: {res.message}")
    epochs: list[list[tuple[str, str]]] = [[] for _ in range(E)]  # tool-only epochs stay empty
    for (t, w, e), v in x.items():
        if res.x[v] > 0.5:
            epochs[e].append((tb.task_ids[t], tb.worker_ids[w]))
    plan = evaluate(problem, epochs, "milp", optimal=res.status == 0 and rel_gap <= 1e-6, table=tb)
    dual = getattr(res, "mip_dual_bound", None)
    return MilpResult(float(res.fun), float(res.fun if dual is None else dual), res.status == 0, plan)


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


def _root_bound(tb: CostTable) -> float:
    """The DP's admissible bound from the initial state: no plan costs less (a valid cut)."""
    from halo.plan.search.dp import SearchOptions, _Search

    search = _Search(tb, SearchOptions(), None, restricted=False)
    root = search.root()
    return search.bound(*root) * (1 - 1e-9) - 1e-9


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
