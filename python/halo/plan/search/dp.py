"""Epoch DP: depth-first branch-and-bound over plan states, with memoisation and worker symmetry.

A state is (completed-task bitmask, per-worker (kind, resident model, KV mask)), where the KV mask
keeps only tasks that are still some pending task's kv parent. Workers of one kind in the same state
are interchangeable, so a state is canonicalised by sorting the per-worker tuples; actions name
canonical slots and are mapped back to real workers when the plan is replayed.

Invariant of `_Search.solve(state, limit)`: it returns the exact least cost-to-go of `state` if that
is below `limit`, else some lower bound >= `limit`. Exact values and lower bounds are memoised, so a
state reached again (by another epoch order) is not searched twice. The admissible bound `bound`
is max(critical path, total work / workers) + overhead x depth for the makespan term, plus total
work (including loads of models resident nowhere) for the summed-load term.

With a state budget or time limit the search stops early and returns the best plan it found (the
greedy plan if nothing better); `ExecutionPlan.optimal` says whether the search completed.
"""

from __future__ import annotations

import time

from halo.plan.search.cost_table import CostTable
from halo.plan.search.execution_plan import ExecutionPlan, evaluate
from halo.plan.search.greedy import plan_greedy
from halo.plan.search.problem import PlanProblem

Slot = tuple[int, int, int]  # (kind, resident model or -1, KV mask)
State = tuple[int, tuple[Slot, ...]]
Action = tuple[tuple[int, int], ...]  # (task, canonical slot)


class _Stop(Exception):
    pass


def plan_dp(
    problem: PlanProblem,
    *,
    state_budget: int = 200_000,
    time_limit_s: float | None = None,
    max_actions: int = 20_000,
) -> ExecutionPlan:
    """Least-cost plan by epoch DP (optimal unless the budget, time limit or action cap cut it short)."""
    tb = CostTable(problem)
    greedy = plan_greedy(problem, tb)
    search = _Search(tb, state_budget, time_limit_s, max_actions)
    root, _ = search.canonical(0, [(tb.kind_of[w], tb.initial_model[w], 0) for w in range(tb.W)])
    search.incumbent_cost = greedy.cost * (1 + 1e-12) + 1e-12
    complete = True
    try:
        search.solve(root, search.incumbent_cost)
    except _Stop:
        complete = False
    path = search.incumbent_path
    if complete and root in search.exact:
        path = search.policy_walk(root)
    if path is None:
        return evaluate(
            problem,
            greedy.schedule(),
            "dp",
            optimal=complete and search.exhaustive,
            states=search.states,
            table=tb,
            serial_cost=greedy.serial_cost,
        )
    return evaluate(
        problem,
        search.replay(path),
        "dp",
        optimal=complete and search.exhaustive,
        states=search.states,
        table=tb,
        serial_cost=greedy.serial_cost,
    )


class _Search:
    def __init__(self, tb: CostTable, state_budget: int, time_limit_s: float | None, max_actions: int) -> None:
        self.tb = tb
        self.state_budget = state_budget
        self.deadline = None if time_limit_s is None else time.perf_counter() + time_limit_s
        self.max_actions = max_actions
        self.exact: dict[State, float] = {}
        self.lower: dict[State, float] = {}
        self.policy: dict[State, tuple[Action, State]] = {}
        self.bound_memo: dict[int, tuple[float, float, float]] = {}
        self.priority = tb.bottom_levels()
        self.states = 0
        self.exhaustive = True
        self.stack: list[tuple[State, Action]] = []
        self.g = 0.0
        self.incumbent_cost = float("inf")
        self.incumbent_path: list[tuple[State, Action]] | None = None

    def canonical(self, done: int, slots: list[Slot]) -> tuple[State, list[int]]:
        keep = self.tb.kv_parents_pending(done)
        trimmed = [(k, m, kv & keep) for k, m, kv in slots]
        perm = sorted(range(len(trimmed)), key=lambda i: trimmed[i])
        return (done, tuple(trimmed[i] for i in perm)), perm

    # -- search -------------------------------------------------------------------------------

    def solve(self, state: State, limit: float) -> float:
        tb = self.tb
        done, slots = state
        if done == tb.all_mask:
            self._offer([])
            return 0.0
        if state in self.exact:
            value = self.exact[state]
            if value < limit:
                self._offer(self.policy_walk(state))
            return value
        lb = max(self.bound(done, slots), self.lower.get(state, 0.0))
        if lb >= limit:
            return lb
        self.states += 1
        if self.states > self.state_budget or (
            self.deadline is not None and self.states % 64 == 0 and time.perf_counter() > self.deadline
        ):
            raise _Stop
        best, best_move = float("inf"), None
        for est, cost, action, nxt in self.actions(state, limit):
            bound = min(limit, best)
            if est >= bound:
                break
            self.stack.append((state, action))
            self.g += cost
            sub = self.solve(nxt, bound - cost)
            self.g -= cost
            self.stack.pop()
            if (nxt[0] == tb.all_mask or nxt in self.exact) and cost + sub < best:
                best, best_move = cost + sub, (action, nxt)
        if best < limit and best_move is not None:
            self.exact[state] = best
            self.policy[state] = best_move
            return best
        self.lower[state] = max(lb, limit)
        return max(lb, limit)

    def _offer(self, tail: list[tuple[State, Action]]) -> None:
        """A complete plan was reached: keep it if it beats the incumbent."""
        total = self.g + (self.exact[tail[0][0]] if tail else 0.0)
        if total < self.incumbent_cost:
            self.incumbent_cost = total
            self.incumbent_path = list(self.stack) + tail

    def policy_walk(self, state: State) -> list[tuple[State, Action]]:
        path = []
        while state[0] != self.tb.all_mask:
            action, nxt = self.policy[state]
            path.append((state, action))
            state = nxt
        return path

    def actions(self, state: State, limit: float) -> list[tuple[float, float, Action, State]]:
        """Every epoch from `state` whose cost plus bound stays under `limit`, cheapest estimate first."""
        tb = self.tb
        done, slots = state
        W = len(slots)
        ready = [t for t in range(tb.n) if not done >> t & 1 and tb.dep_mask[t] & done == tb.dep_mask[t]]
        ready.sort(key=lambda t: -self.priority[t])
        notdone = tb.all_mask & ~done
        speeds = [tb.kind_speed[k] for k, _, _ in slots]
        busy = [0.0] * W
        epoch_model = [-2] * W
        chosen: list[tuple[int, int]] = []
        out: list[tuple[float, float, Action, State]] = []
        rest_after = [0] * (len(ready) + 1)
        for i in range(len(ready) - 1, -1, -1):
            rest_after[i] = rest_after[i + 1] | 1 << ready[i]

        def rec(i: int, assigned: int) -> None:
            if len(out) >= self.max_actions:
                self.exhaustive = False
                return
            used = [b for b, m in zip(busy, epoch_model, strict=True) if m != -2]
            if used:
                partial = tb.epoch_cost(used) + self.bound(notdone & ~assigned & ~rest_after[i], None)
                if partial >= limit:
                    return
            if i == len(ready):
                if chosen:
                    self._emit(state, chosen, busy, epoch_model, out)
                return
            t = ready[i]
            m = tb.model_of[t]
            p = tb.parent[t]
            seen: set[Slot] = set()
            for j in range(W):
                if epoch_model[j] not in (-2, m):
                    continue
                fresh = epoch_model[j] == -2
                if fresh:
                    if slots[j] in seen:
                        continue
                    seen.add(slots[j])
                add = tb.load_s[m] if fresh and slots[j][1] != m else 0.0
                add += tb.task_time(t, speeds[j], p >= 0 and bool(slots[j][2] >> p & 1))
                old = busy[j], epoch_model[j]
                busy[j] += add
                epoch_model[j] = m
                chosen.append((t, j))
                rec(i + 1, assigned | 1 << t)
                chosen.pop()
                busy[j], epoch_model[j] = old
            rec(i + 1, assigned)

        rec(0, 0)
        out.sort(key=lambda a: a[0])
        return out

    def _emit(self, state: State, chosen, busy, epoch_model, out) -> None:
        tb = self.tb
        done, slots = state
        new_done = done
        new_slots = list(slots)
        for t, j in chosen:
            new_done |= 1 << t
            k, _, kv = new_slots[j]
            new_slots[j] = (k, tb.model_of[t], kv | 1 << t)
        nxt, _ = self.canonical(new_done, new_slots)
        cost = tb.epoch_cost([b for b, m in zip(busy, epoch_model, strict=True) if m != -2])
        out.append((cost + self.bound(nxt[0], nxt[1]), cost, tuple(chosen), nxt))

    def bound(self, done_or_remaining: int, slots: tuple[Slot, ...] | None) -> float:
        """Admissible lower bound on the cost to finish. With `slots` the first argument is the done
        mask (and loads of models resident nowhere count); without, it is the remaining-task mask."""
        tb = self.tb
        remaining = tb.all_mask & ~done_or_remaining if slots is not None else done_or_remaining
        if not remaining:
            return 0.0
        cached = self.bound_memo.get(remaining)
        if cached is None:
            down = [0.0] * tb.n
            depth = [0] * tb.n
            work = cp = 0.0
            levels = 0
            for t in reversed(range(tb.n)):
                if remaining >> t & 1:
                    w = tb.base_s[t] / tb.max_speed
                    work += w
                    kids = [c for c in tb.children[t] if remaining >> c & 1]
                    down[t] = w + max((down[c] for c in kids), default=0.0)
                    depth[t] = 1 + max((depth[c] for c in kids), default=0)
                    cp, levels = max(cp, down[t]), max(levels, depth[t])
            cached = (work, cp, levels * tb.overhead_s)
            self.bound_memo[remaining] = cached
        work, cp, overhead = cached
        if slots is not None:
            resident = {m for _, m, _ in slots}
            needed = {tb.model_of[t] for t in range(tb.n) if remaining >> t & 1}
            work += sum(tb.load_s[m] for m in needed - resident)
        return tb.w_makespan * (max(cp, work / tb.W) + overhead) + tb.w_load * work

    def replay(self, path: list[tuple[State, Action]]) -> list[list[tuple[str, str]]]:
        """Map a path of canonical actions back to real workers."""
        tb = self.tb
        done = 0
        actual: list[Slot] = [(tb.kind_of[w], tb.initial_model[w], 0) for w in range(tb.W)]
        epochs = []
        for expected, action in path:
            state, perm = self.canonical(done, actual)
            assert state == expected, "replay diverged from the search"
            epoch = []
            for t, j in action:
                w = perm[j]
                k, _, kv = actual[w]
                actual[w] = (k, tb.model_of[t], kv | 1 << t)
                done |= 1 << t
                epoch.append((tb.task_ids[t], tb.worker_ids[w]))
            epochs.append(epoch)
        return epochs
