"""The MILP oracle's model (milp.py's module docstring states it): `MilpModel` builds it, one method
per constraint family, and solves it with scipy.optimize.milp (HiGHS).

Variables are created in a fixed order (assignments, residency, epoch times, the tools' AND, loads,
KV locality, the tail), so one problem and one number of exact epochs always give one model.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from halo.plan.search.cost_table import CostTable

Coef = dict[int, float]  # variable index -> coefficient


class _Rows:
    """Variables and rows of a MILP in the making."""

    def __init__(self) -> None:
        self.n = 0
        self.c: list[float] = []
        self.lo: list[float] = []
        self.hi: list[float] = []
        self.integral: list[int] = []
        self.rows: list[Coef] = []
        self.row_lo: list[float] = []
        self.row_hi: list[float] = []

    def var(self, cost: float = 0.0, lo: float = 0.0, hi: float = 1.0, integral: bool = True) -> int:
        self.c.append(cost)
        self.lo.append(lo)
        self.hi.append(hi)
        self.integral.append(int(integral))
        self.n += 1
        return self.n - 1

    def row(self, coef: Coef, lo: float = -np.inf, hi: float = np.inf) -> None:
        self.rows.append(coef)
        self.row_lo.append(lo)
        self.row_hi.append(hi)


@dataclass
class Solved:
    bound: float  # proven lower bound on every plan's cost
    schedule: list[list[tuple[str, str]]] | None  # a real plan (empty tail), if the solution is one
    closed: bool  # HiGHS proved its optimum (within the gap asked)


class MilpModel:
    """The model with `E` exact epochs; with `tail`, only plans with more epochs than that: the rest
    of them in the relaxed tail, which must not be empty. `ub`: the objective cut (a known plan's cost)."""

    def __init__(self, tb: CostTable, E: int, tail: bool, ub: float) -> None:
        self.tb, self.E, self.tail = tb, E, tail
        self.md = _Rows()
        self.first, self.tool_first, self.depth = epoch_windows(tb)
        # without a tail, t needs depth[t] - 1 epochs after its own; with one, those may be tail epochs
        self.last = [E - 1 if tail else E - self.depth[t] for t in range(tb.n)]
        self.chains = chains(tb)
        self._assignments()
        self._each_task_once()
        self._precedence()
        self._tools_run_when_ready()
        self._tool_waves()
        self._tool_readers()
        self._no_empty_epochs()
        self._wave_time()
        self._worker_symmetry()
        self._residency_and_loads()
        if tail:
            self._tail_loads()
        self._models_loaded_once()
        self._runs_need_their_model()
        self._kv_locality()
        self._epoch_time()
        self._chain_cuts()
        self.epochs_used: Coef = {v: 1.0 for v in self.u}
        if tail:
            self._tail_chains()
            self._tail_spread()
            self._tail_own_times()
            self._tail_tools()
            self._tail_after_and_not_empty()
        self._epoch_count_and_order()
        self.cut = ub * (1 + 1e-9) + 1e-9
        self._cost_cut()

    # -- variables ---------------------------------------------------------------------------------

    def _assignments(self) -> None:
        """x[t,w,e] (t runs on w in e, within its epoch window), r[w,e,k] (k resident), T[e] (epoch
        time), u[e] (epoch used), y[t] (t runs in the tail); busy[w,e] collects each worker's time."""
        tb, md, E = self.tb, self.md, self.E
        wm, wl = tb.w_makespan, tb.w_load
        self.x: dict[tuple[int, int, int], int] = {}
        self.at: list[list[list[int]]] = [[[] for _ in range(E)] for _ in range(tb.n)]  # t -> e -> x vars
        self.busy: dict[tuple[int, int], Coef] = {(w, e): {} for w in range(tb.W) for e in range(E)}
        for t in range(tb.n):
            for w in range(tb.W):
                remote = (tb.base_s[t] + tb.penalty_s[t]) / tb.speed[w]
                for e in range(self.first[t], self.last[t] + 1):
                    v = self.x[t, w, e] = md.var(wl * remote)
                    self.at[t][e].append(v)
                    self.busy[w, e][v] = remote
        self.r = {(w, e, k): md.var() for w in range(tb.W) for e in range(E) for k in range(len(tb.models))}
        self.T = [md.var(wm, hi=np.inf, integral=False) for _ in range(E)]
        self.u = [md.var(wm * tb.overhead_s) for _ in range(E)]
        self.tau = [b / tb.max_speed for b in tb.base_s]  # least time of a task anywhere (tail costs)
        self.y = [md.var(wl * self.tau[t]) if self.tail else -1 for t in range(tb.n)]

    def ran_by(self, t: int, e: int) -> Coef:
        """Coefficients of 'task t ran in epoch e or before' (exact epochs only)."""
        return {v: 1.0 for ee in range(min(e + 1, self.E)) for v in self.at[t][ee]}

    def tool_done(self, a: int, e: int) -> tuple[Coef, float]:
        """(coefficients, constant) of 'tool a has run by the end of epoch e' (0 for e < 0)."""
        if e < 0:
            return {}, 0.0
        v = self.a_run[a][e]
        if v is None:
            return {}, 1.0 if self.tb.tool_anc[a] == 0 else 0.0
        return {v: 1.0}, 0.0

    def tool_in(self, a: int, e: int) -> tuple[Coef, float]:
        """(coefficients, constant) of 'tool a runs in epoch e's wave' (e == E: in the tail)."""
        if e == self.E:
            done, const = self.tool_done(a, self.E - 1)
            return {v: -c for v, c in done.items()}, 1.0 - const
        now, c_now = self.tool_done(a, e)
        before, c_before = self.tool_done(a, e - 1)
        coef = dict(now)
        for v, c in before.items():
            coef[v] = coef.get(v, 0.0) - c
        return coef, c_now - c_before

    # -- tasks -------------------------------------------------------------------------------------

    def _each_task_once(self) -> None:
        for t in range(self.tb.n):
            tail = {self.y[t]: 1.0} if self.tail else {}
            self.md.row({**{v: 1.0 for e in range(self.E) for v in self.at[t][e]}, **tail}, 1.0, 1.0)

    def _precedence(self) -> None:
        """epoch(t) >= epoch(d) + 1, cumulatively (tighter): t ran by e => d ran by e - 1."""
        for t in range(self.tb.n):
            for d in self.tb.deps[t]:
                for e in range(self.first[t], self.last[t] + 1):
                    self.md.row({**self.ran_by(t, e), **{v: -1.0 for v in self.ran_by(d, e - 1)}}, hi=0.0)

    # -- tools (rule 5) ----------------------------------------------------------------------------

    def _tools_run_when_ready(self) -> None:
        """a[a,e] = AND over the tool's LLM ancestors of (ran by e - 1), linearised both ways; None
        where it is a constant (0 before the tool's first epoch, 1 if it has no ancestors)."""
        tb, md = self.tb, self.md
        self.a_run: list[list[int | None]] = []
        for a in range(tb.n_tools):
            anc = [t for t in range(tb.n) if tb.tool_anc[a] >> t & 1]
            row: list[int | None] = []
            for e in range(self.E):
                if not anc or e < self.tool_first[a]:
                    row.append(None)
                    continue
                v = md.var(integral=False)
                for t in anc:
                    md.row({v: 1.0, **{xv: -1.0 for xv in self.ran_by(t, e - 1)}}, hi=0.0)
                coef: Coef = {v: 1.0}
                for t in anc:
                    for xv in self.ran_by(t, e - 1):
                        coef[xv] = coef.get(xv, 0.0) - 1.0
                md.row(coef, lo=1.0 - len(anc))
                row.append(v)
            self.a_run.append(row)

    def _tool_waves(self) -> None:
        """The CPU seconds of each epoch's wave (a[e] - a[e-1]); an epoch is used if a tool runs in it."""
        tb = self.tb
        self.wave: list[Coef] = [{} for _ in range(self.E)]
        self.wave_const = [0.0] * self.E
        for a in range(tb.n_tools):
            for e in range(self.E):
                coef, const = self.tool_in(a, e)
                for v, c in coef.items():
                    self.wave[e][v] = self.wave[e].get(v, 0.0) + c * tb.tool_s[a]
                self.wave_const[e] += const * tb.tool_s[a]
                if coef or const:
                    self.md.row({**coef, self.u[e]: -1.0}, hi=-const)

    def _tool_readers(self) -> None:
        """An LLM reader of tool a runs at e only if a ran by e - 1."""
        tb = self.tb
        for t in range(tb.n):
            for a in range(tb.n_tools):
                if tb.tool_dep_mask[t] >> a & 1:
                    for e in range(self.first[t], self.last[t] + 1):
                        done, const = self.tool_done(a, e - 1)
                        self.md.row({**{v: 1.0 for v in self.at[t][e]}, **{v: -c for v, c in done.items()}}, hi=const)

    def _no_empty_epochs(self) -> None:
        """A used epoch runs something, so each plan has one position in the model."""
        for e in range(self.E):
            coef = {v: -1.0 for t in range(self.tb.n) for v in self.at[t][e]}
            const = 0.0
            for a in range(self.tb.n_tools):
                cf, c0 = self.tool_in(a, e)
                for v, c in cf.items():
                    coef[v] = coef.get(v, 0.0) - c
                const += c0
            self.md.row({**coef, self.u[e]: 1.0}, hi=const)

    def _wave_time(self) -> None:
        for e in range(self.E):
            if self.wave[e] or self.wave_const[e]:
                self.md.row({**{v: -c for v, c in self.wave[e].items()}, self.T[e]: 1.0}, lo=self.wave_const[e])

    # -- workers, models and KV (rules 2-4) --------------------------------------------------------

    def _worker_symmetry(self) -> None:
        """Workers of one kind with the same initial model are interchangeable: any plan can be relabelled
        so that, in worker order, each one's lowest-numbered task is lower than the next one's."""
        tb = self.tb
        on = {
            (t, w): [v for (tt, ww, _), v in self.x.items() if tt == t and ww == w]
            for t in range(tb.n)
            for w in range(tb.W)
        }
        for w2 in range(tb.W):
            twin = (tb.kind_of[w2], tb.initial_model[w2])
            same = [w for w in range(w2) if (tb.kind_of[w], tb.initial_model[w]) == twin]
            if not same:
                continue
            w1 = same[-1]
            for t in range(tb.n):  # t on w2 => some task < t on w1
                coef = {v: 1.0 for v in on[t, w2]}
                for t1 in range(t):
                    coef.update({v: -1.0 for v in on[t1, w1]})
                self.md.row(coef, hi=0.0)

    def _residency_and_loads(self) -> None:
        """One model per worker and epoch; r[e] <= r[e-1] + (runs k at e) (no preloading); a load
        s[w,e,k] >= r[e] - r[e-1] counts in the worker's busy time."""
        tb, md, r = self.tb, self.md, self.r
        self.loads: dict[tuple[int, int, int], int] = {}
        for w in range(tb.W):
            for e in range(self.E):
                md.row({r[w, e, k]: 1.0 for k in range(len(tb.models))}, hi=1.0)
                for k in range(len(tb.models)):
                    runs = {self.x[t, w, e]: -1.0 for t in range(tb.n) if tb.model_of[t] == k and (t, w, e) in self.x}
                    prev = (1.0 if tb.initial_model[w] == k else 0.0) if e == 0 else None
                    coef = {r[w, e, k]: 1.0, **runs}
                    if prev is None:
                        coef[r[w, e - 1, k]] = -1.0
                    md.row(coef, hi=prev or 0.0)  # r[e] <= r[e-1] + runs
                    if tb.load_s[k] > 0:
                        s = self.loads[w, e, k] = md.var(tb.w_load * tb.load_s[k], hi=np.inf, integral=False)
                        self.busy[w, e][s] = tb.load_s[k]
                        coef = {r[w, e, k]: 1.0, s: -1.0}
                        if prev is None:
                            coef[r[w, e - 1, k]] = -1.0
                        md.row(coef, hi=prev or 0.0)  # s >= r[e] - r[e-1]

    def _tail_loads(self) -> None:
        """A model some tail task runs and no worker holds after the last exact epoch is loaded."""
        tb, md = self.tb, self.md
        self.tail_load: dict[int, int] = {}
        for k in sorted(set(tb.model_of)):
            if tb.load_s[k] > 0:
                v = self.tail_load[k] = md.var(tb.w_load * tb.load_s[k], hi=np.inf, integral=False)
                for t in range(tb.n):
                    if tb.model_of[t] == k:
                        held = {self.r[w, self.E - 1, k]: 1.0 for w in range(tb.W)}
                        md.row({v: 1.0, self.y[t]: -1.0, **held}, lo=0.0)

    def _models_loaded_once(self) -> None:
        """A model resident nowhere at the start is loaded at least once."""
        tb = self.tb
        for k in set(tb.model_of) - set(tb.initial_model):
            if tb.load_s[k] > 0:
                coef = {v: 1.0 for (_, _, kk), v in self.loads.items() if kk == k}
                if self.tail and k in self.tail_load:
                    coef[self.tail_load[k]] = 1.0
                self.md.row(coef, lo=1.0)

    def _runs_need_their_model(self) -> None:
        for (t, w, e), v in self.x.items():
            self.md.row({v: 1.0, self.r[w, e, self.tb.model_of[t]]: -1.0}, hi=0.0)

    def _kv_locality(self) -> None:
        """z[t,w,e] <= x, z <= (t's kv parent ran on w): then t saves its KV penalty on w."""
        tb, md = self.tb, self.md
        for (t, w, e), v in self.x.items():
            p = tb.parent[t]
            if p >= 0 and tb.penalty_s[t] > 0:
                gain = tb.penalty_s[t] / tb.speed[w]
                z = md.var(-tb.w_load * gain, integral=False)
                self.busy[w, e][z] = -gain
                md.row({z: 1.0, v: -1.0}, hi=0.0)
                md.row({z: 1.0, **{self.x[p, w, pe]: -1.0 for pe in range(self.E) if (p, w, pe) in self.x}}, hi=0.0)

    def _epoch_time(self) -> None:
        """T[e] >= every worker's busy time in e."""
        for (_w, e), coef in self.busy.items():
            self.md.row({**coef, self.T[e]: -1.0}, hi=0.0)

    def _chain_cuts(self) -> None:
        """The members of a dependency chain run in distinct epochs (tools of one wave add up), so T[e]
        >= the time of whichever member runs in e; summed over e the LP sees the chain's length."""
        tb = self.tb
        for chain_llm, chain_tools in self.chains:
            for e in range(self.E):
                coef: Coef = {}
                const = 0.0
                for t in chain_llm:
                    for w in range(tb.W):
                        if (t, w, e) in self.x:
                            coef[self.x[t, w, e]] = tb.base_s[t] / tb.speed[w]
                for a in chain_tools:
                    cf, c0 = self.tool_in(a, e)
                    for v, c in cf.items():
                        coef[v] = coef.get(v, 0.0) + c * tb.tool_s[a]
                    const += c0 * tb.tool_s[a]
                if coef:
                    self.md.row({**coef, self.T[e]: -1.0}, hi=-const)

    # -- the relaxed tail (plans with more than E epochs) ------------------------------------------

    def _tail_chains(self) -> None:
        """TT: the tail epochs' time without overhead, NT: their number. Each chain's tail members run
        back to back (LLM members in distinct tail epochs)."""
        tb, md = self.tb, self.md
        self.TT = md.var(tb.w_makespan, hi=np.inf, integral=False)
        self.NT = md.var(tb.w_makespan * tb.overhead_s, hi=float(tb.n + tb.n_tools), integral=True)
        self.epochs_used[self.NT] = 1.0
        for chain_llm, chain_tools in self.chains:
            coef = {self.y[t]: self.tau[t] for t in chain_llm}
            const = 0.0
            for a in chain_tools:
                cf, c0 = self.tool_in(a, self.E)
                for v, c in cf.items():
                    coef[v] = coef.get(v, 0.0) + c * tb.tool_s[a]
                const += c0 * tb.tool_s[a]
            md.row({**coef, self.TT: -1.0}, hi=-const)
            if chain_llm:
                md.row({**{self.y[t]: 1.0 for t in chain_llm}, self.NT: -1.0}, hi=0.0)

    def _tail_spread(self) -> None:
        """The tail's LLM work and loads spread over all workers: by count, and by speed (a worker of
        speed s does s seconds of base work per second; each load takes its seconds on one worker)."""
        tb, md = self.tb, self.md
        spread = {self.y[t]: self.tau[t] for t in range(tb.n)}
        spread.update({v: tb.load_s[k] for k, v in self.tail_load.items()})
        md.row({**spread, self.TT: -float(tb.W)}, hi=0.0)
        spread = {self.y[t]: tb.base_s[t] for t in range(tb.n)}
        spread.update({v: tb.load_s[k] * min(tb.speed) for k, v in self.tail_load.items()})
        md.row({**spread, self.TT: -sum(tb.speed)}, hi=0.0)

    def _tail_own_times(self) -> None:
        """Each tail task takes its own time on the worker it runs on, plus a load unless that worker
        held its model after the last exact epoch. With workers sorted fastest first, held[k][j] <=
        'one of the first j + 1 holds k'; then TT >= alpha*y - sum_j (own_{j+1} - own_j)*held[k][j]
        (own_W = alpha = fastest own time + load) is the least such time when y = 1."""
        tb, md, W = self.tb, self.md, self.tb.W
        fast = sorted(range(W), key=lambda w: -tb.speed[w])
        held: dict[int, list[int]] = {}
        for k in sorted(set(tb.model_of)):
            held[k] = []
            for j in range(W):
                h = md.var(integral=False)
                md.row({h: 1.0, **{self.r[fast[i], self.E - 1, k]: -1.0 for i in range(j + 1)}}, hi=0.0)
                held[k].append(h)
        for t in range(tb.n):
            k = tb.model_of[t]
            own = [tb.base_s[t] / tb.speed[w] for w in fast] + [self.tau[t] + tb.load_s[k]]
            coef = {self.y[t]: own[W], self.TT: -1.0}
            for j in range(W):
                if own[j + 1] > own[j]:
                    coef[held[k][j]] = -(own[j + 1] - own[j])
            md.row(coef, hi=0.0)

    def _tail_tools(self) -> None:
        """Tools not run by the last exact epoch run in the tail: each needs a tail epoch, and the tail
        lasts at least their CPU time."""
        tb, md = self.tb, self.md
        cpu: Coef = {}
        cpu_const = 0.0
        for a in range(tb.n_tools):
            cf, c0 = self.tool_in(a, self.E)
            for v, c in cf.items():
                cpu[v] = cpu.get(v, 0.0) + c * tb.tool_s[a]
            cpu_const += c0 * tb.tool_s[a]
            if cf or c0:
                md.row({**cf, self.NT: -1.0}, hi=-c0)
        if cpu:
            md.row({**cpu, self.TT: -1.0}, hi=-cpu_const)

    def _tail_after_and_not_empty(self) -> None:
        """The tail comes after all E exact epochs, and it runs something (the plan has more than E)."""
        tb, md = self.tb, self.md
        for t in range(tb.n):
            md.row({self.y[t]: 1.0, self.u[self.E - 1]: -1.0}, hi=0.0)
        coef = {self.y[t]: 1.0 for t in range(tb.n)}
        const = 0.0
        for a in range(tb.n_tools):
            cf, c0 = self.tool_in(a, self.E)
            for v, c in cf.items():
                coef[v] = coef.get(v, 0.0) + c
            const += c0
        md.row(coef, lo=1.0 - const)

    # -- epochs and the objective ------------------------------------------------------------------

    def _epoch_count_and_order(self) -> None:
        """At least the longest chain of epochs; u[e] >= x; used epochs come first (u[e+1] <= u[e])."""
        md, u = self.md, self.u
        md.row(self.epochs_used, lo=float(max(self.depth, default=0)))
        for e in range(self.E):
            for t in range(self.tb.n):
                if self.at[t][e]:
                    md.row({**{v: 1.0 for v in self.at[t][e]}, u[e]: -1.0}, hi=0.0)
            if e + 1 < self.E:
                md.row({u[e + 1]: 1.0, u[e]: -1.0}, hi=0.0)

    def _cost_cut(self) -> None:
        """A known plan is feasible: the optimum is no worse (a valid cut that helps HiGHS prune)."""
        self.md.row({j: cj for j, cj in enumerate(self.md.c) if cj}, hi=self.cut)

    # -- solving -----------------------------------------------------------------------------------

    def solve(self, time_limit_s: float, rel_gap: float, verbose: bool) -> Solved:
        # scipy here, not at the top: the oracle is for tests, and importing scipy.optimize costs every
        # `halo run` (which imports this package for the native search) a few hundred ms of start-up
        from scipy.optimize import Bounds, LinearConstraint, milp
        from scipy.sparse import coo_array

        md, tb = self.md, self.tb
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
            return Solved(self.cut, None, True)
        dual = getattr(res, "mip_dual_bound", None)
        bound = float(res.fun if dual is None else dual) if res.x is not None or dual is not None else 0.0
        if res.x is None:
            return Solved(bound, None, False)
        sol = res.x
        in_tail = self.tail and (
            any(sol[self.y[t]] > 0.5 for t in range(tb.n))
            or any(self.tool_in(a, self.E)[1] + _dot(self.tool_in(a, self.E)[0], sol) > 0.5 for a in range(tb.n_tools))
        )
        if in_tail:
            return Solved(bound, None, res.status == 0)
        epochs: list[list[tuple[str, str]]] = [[] for _ in range(self.E)]  # tool-only epochs stay empty
        for (t, w, e), v in self.x.items():
            if sol[v] > 0.5:
                epochs[e].append((tb.task_ids[t], tb.worker_ids[w]))
        return Solved(bound, epochs, res.status == 0)


def _dot(coef: Coef, sol: np.ndarray) -> float:
    return float(sum(c * sol[v] for v, c in coef.items()))


def epoch_windows(tb: CostTable) -> tuple[list[int], list[int], list[int]]:
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


def chains(tb: CostTable) -> list[tuple[list[int], list[int]]]:
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
    found: dict[frozenset[tuple[bool, int]], tuple[list[int], list[int]]] = {}
    for node in nodes:
        members = up[node][1] + down[node][1][1:]
        key = frozenset(members)
        if key not in found:
            found[key] = ([i for is_tool, i in members if not is_tool], [i for is_tool, i in members if is_tool])
    return list(found.values())
