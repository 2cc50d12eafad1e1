"""MILP oracle (scipy.optimize.milp / HiGHS) for small problems: the optimal cost under the same semantics.

Variables, for task t, worker w, epoch e < n (n tasks always suffice), model k:
  x[t,w,e]  binary: t runs on w in epoch e            r[w,e,k] binary: k resident on w during e
  s[w,e,k]  >= 0: k switched in on w at e (load)      z[t,w,e] in [0,1]: t on w at e with its parent's KV on w
  T[e] >= 0: epoch makespan                           u[e] binary: epoch e is used
busy[w,e] = sum_t x*(base+penalty)/speed - sum_t z*penalty/speed + sum_k s*load.
Constraints: each task once; epoch(t) >= epoch(d) + 1 per dependency; x <= r (one model per worker
per epoch, since sum_k r <= 1); r[e] <= r[e-1] + (runs k at e) (no preloading); s >= r[e] - r[e-1];
z <= x, z <= (parent ran on w); T[e] >= busy[w,e]; u[e] >= x; u[e+1] <= u[e]; and
identical workers (same kind and initial model) ordered by the lowest task index each runs.
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


def solve_milp(problem: PlanProblem, time_limit_s: float = 60.0) -> MilpResult:
    tb = CostTable(problem)
    n, W, K, E = tb.n, tb.W, len(tb.models), tb.n
    wm, wl = tb.w_makespan, tb.w_load
    md = _Model()
    # earliest/latest epoch by chain length keeps x small
    first = [0] * n
    for t in range(n):
        first[t] = max((first[d] + 1 for d in tb.deps[t]), default=0)
    tail = [1] * n
    for t in reversed(range(n)):
        tail[t] = 1 + max((tail[c] for c in tb.children[t]), default=0)
    x: dict[tuple[int, int, int], int] = {}
    busy: dict[tuple[int, int], dict[int, float]] = {(w, e): {} for w in range(W) for e in range(E)}
    for t in range(n):
        for w in range(W):
            remote = (tb.base_s[t] + tb.penalty_s[t]) / tb.speed[w]
            for e in range(first[t], E - tail[t] + 1):
                x[t, w, e] = md.var(wl * remote)
                busy[w, e][x[t, w, e]] = remote
    r = {(w, e, k): md.var() for w in range(W) for e in range(E) for k in range(K)}
    T = [md.var(wm, hi=np.inf, integral=False) for _ in range(E)]
    u = [md.var(wm * tb.overhead_s) for _ in range(E)]
    for t in range(n):
        md.row({x[key]: 1.0 for key in x if key[0] == t}, 1.0, 1.0)
        for d in tb.deps[t]:
            for e in range(first[t], E - tail[t] + 1):  # t at e needs d before e
                coef = {x[t, w, e]: 1.0 for w in range(W)}
                coef.update({v: -1.0 for (dt, _, de), v in x.items() if dt == d and de < e})
                md.row(coef, hi=0.0)
    _break_worker_symmetry(md, tb, x)
    for w in range(W):
        for e in range(E):
            md.row({r[w, e, k]: 1.0 for k in range(K)}, hi=1.0)
            for k in range(K):
                runs = {v: -1.0 for (t, ww, ee), v in x.items() if ww == w and ee == e and tb.model_of[t] == k}
                prev = (1.0 if tb.initial_model[w] == k else 0.0) if e == 0 else None
                coef = {r[w, e, k]: 1.0, **runs}
                if prev is None:
                    coef[r[w, e - 1, k]] = -1.0
                md.row(coef, hi=prev or 0.0)  # r[e] <= r[e-1] + runs
                if tb.load_s[k] > 0:
                    s = md.var(wl * tb.load_s[k], hi=np.inf, integral=False)
                    busy[w, e][s] = tb.load_s[k]
                    coef = {r[w, e, k]: 1.0, s: -1.0}
                    if prev is None:
                        coef[r[w, e - 1, k]] = -1.0
                    md.row(coef, hi=prev or 0.0)  # s >= r[e] - r[e-1]
    for (t, w, e), v in x.items():
        md.row({v: 1.0, r[w, e, tb.model_of[t]]: -1.0}, hi=0.0)
        p = tb.parent[t]
        if p >= 0 and tb.penalty_s[t] > 0:
            gain = tb.penalty_s[t] / tb.speed[w]
            z = md.var(-wl * gain, integral=False)
            busy[w, e][z] = -gain
            md.row({z: 1.0, v: -1.0}, hi=0.0)
            md.row({z: 1.0, **{pv: -1.0 for (pt, pw, _), pv in x.items() if pt == p and pw == w}}, hi=0.0)
    for (_w, e), coef in busy.items():
        md.row({**coef, T[e]: -1.0}, hi=0.0)
    for e in range(E):
        for t in range(n):
            xs = {x[t, w, e]: 1.0 for w in range(W) if (t, w, e) in x}
            if xs:
                md.row({**xs, u[e]: -1.0}, hi=0.0)
        if e + 1 < E:
            md.row({u[e + 1]: 1.0, u[e]: -1.0}, hi=0.0)
    # the greedy plan is feasible: the optimum is no worse (a valid cut that helps HiGHS prune)
    md.row({j: cj for j, cj in enumerate(md.c) if cj}, hi=plan_greedy(problem, tb).cost * (1 + 1e-9) + 1e-9)
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
        options={"time_limit": time_limit_s, "mip_rel_gap": 1e-9},
    )
    if res.x is None:
        raise RuntimeError(f"MILP found no solution: {res.message}")
    epochs: list[list[tuple[str, str]]] = [[] for _ in range(E)]
    for (t, w, e), v in x.items():
        if res.x[v] > 0.5:
            epochs[e].append((tb.task_ids[t], tb.worker_ids[w]))
    plan = evaluate(problem, epochs, "milp", optimal=res.status == 0, table=tb)
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
