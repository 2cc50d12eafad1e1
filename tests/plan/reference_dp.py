"""The test reference of the epoch DP: a Python transcription, step for step, of the native search
(csrc/epoch_dp.cpp), which is the one production implementation (`halo.plan.search.plan_dp`).

python/halo/plan/search/dp.py's module docstring states the algorithm both follow (states, actions,
bound, phases, heuristic). `plan_dp(problem, search=search_python)` runs this one instead of the
native search; tests/plan/test_native_search.py holds the two to the same plans, the same proofs and
the same state counts. Masks here are Python ints, so any problem size works (slowly).
"""

from __future__ import annotations

import time
from dataclasses import replace

from halo.plan.search.cost_table import CostTable
from halo.plan.search.search_backend import SearchOptions, SearchResult

Slot = tuple[int, int, int]  # (kind, resident model or -1, KV mask)
State = tuple[int, int, tuple[Slot, ...]]  # (LLM tasks done, tools done, canonical slots)
Action = tuple[tuple[int, int], ...]  # (task, canonical slot); () is a tool-only epoch


class _Stop(Exception):
    pass


def search_python(tb: CostTable, incumbent_cost: float, options: SearchOptions) -> SearchResult:
    """The reference two-phase search (module docstring); `incumbent_cost` is a known plan's cost."""
    start = time.perf_counter()
    limit = options.time_limit_s
    exact = _Search(tb, options, None if limit is None else start + limit / 2, restricted=False)
    root = exact.root()
    exact.incumbent_cost = incumbent_cost * (1 + 1e-12) + 1e-12
    try:
        exact.solve(root, exact.incumbent_cost)
    except _Stop:
        pass
    else:
        if exact.exhaustive:
            path = exact.policy_walk(root) if root in exact.exact else exact.incumbent_path
            return SearchResult(None if path is None else exact.replay(path), exact.states, True, "python")
    # phase 2: restricted rounds, each wider than the last, until the budget or the deadline ends them
    best, states, used = exact, exact.states, 0
    width, actions = options.heuristic_width, options.heuristic_actions
    while used < options.state_budget:
        round_options = replace(
            options, state_budget=options.state_budget - used, heuristic_width=width, heuristic_actions=actions
        )
        heuristic = _Search(tb, round_options, None if limit is None else start + limit, restricted=True)
        heuristic.incumbent_cost = best.incumbent_cost
        stopped = False
        try:
            heuristic.solve(root, heuristic.incumbent_cost)
        except _Stop:
            stopped = True
        states += heuristic.states
        used += heuristic.states
        if heuristic.incumbent_path is not None:
            best = heuristic
        if stopped or (width >= tb.n and actions >= options.max_actions):
            break
        width, actions = width * 2, actions * 4
    path = best.incumbent_path
    return SearchResult(None if path is None else best.replay(path), states, False, "python")


class _Search:
    def __init__(self, tb: CostTable, options: SearchOptions, deadline: float | None, restricted: bool) -> None:
        self.tb = tb
        self.state_budget = options.state_budget
        self.deadline = deadline
        self.restricted = restricted
        self.max_actions = options.heuristic_actions if restricted else options.max_actions
        self.width = options.heuristic_width
        self.exact: dict[State, float] = {}
        self.lower: dict[State, float] = {}
        self.policy: dict[State, tuple[Action, State]] = {}
        self.bound_memo: dict[tuple[int, int], tuple[float, float, float, int, tuple[float, ...]]] = {}
        self.priority = tb.bottom_levels()
        self.states = 0
        self.steps = 0  # enumeration steps (for the time limit only)
        self.exhaustive = True
        self.stack: list[tuple[State, Action]] = []
        self.g = 0.0
        self.incumbent_cost = float("inf")
        self.incumbent_path: list[tuple[State, Action]] | None = None

    def root(self) -> State:
        tb = self.tb
        return self.canonical(0, 0, [(tb.kind_of[w], tb.initial_model[w], 0) for w in range(tb.W)])[0]

    def canonical(self, done: int, tools_done: int, slots: list[Slot]) -> tuple[State, list[int]]:
        keep = kv_parents_pending(self.tb, done)
        trimmed = [(k, m, kv & keep) for k, m, kv in slots]
        perm = sorted(range(len(trimmed)), key=lambda i: trimmed[i])
        return (done, tools_done, tuple(trimmed[i] for i in perm)), perm

    # -- search -------------------------------------------------------------------------------

    def solve(self, state: State, limit: float) -> float:
        tb = self.tb
        done, tools_done, slots = state
        if done == tb.all_mask and tools_done == tb.all_tools:
            self._offer([])
            return 0.0
        if state in self.exact:
            value = self.exact[state]
            if value < limit:
                self._offer(self.policy_walk(state))
            return value
        lb = max(self.bound(done, tools_done, slots), self.lower.get(state, 0.0))
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
            finished = nxt[0] == tb.all_mask and nxt[1] == tb.all_tools
            if (finished or nxt in self.exact) and cost + sub < best:
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
        while state[0] != self.tb.all_mask or state[1] != self.tb.all_tools:
            action, nxt = self.policy[state]
            path.append((state, action))
            state = nxt
        return path

    def actions(self, state: State, limit: float) -> list[tuple[float, float, Action, State]]:
        """Every epoch from `state` whose cost plus bound stays under `limit`, cheapest estimate first."""
        tb = self.tb
        done, tools_done, slots = state
        W = len(slots)
        ready = tb.ready(done, tools_done)
        ready.sort(key=lambda t: -self.priority[t])  # stable: ties keep task order
        if self.restricted:
            ready = ready[: self.width]
        wave = tb.available_tools(done) & ~tools_done
        wave_s = tb.wave_s(wave)
        future_tools = tb.all_tools & ~tools_done & ~wave
        notdone = tb.all_mask & ~done
        speeds = [tb.kind_speed[k] for k, _, _ in slots]
        busy = [0.0] * W
        epoch_model = [-2] * W
        chosen: list[tuple[int, int]] = []
        out: list[tuple[float, float, Action, State]] = []
        if wave:
            self._emit(state, wave, wave_s, chosen, busy, epoch_model, out)
        rest_after = [0] * (len(ready) + 1)
        for i in range(len(ready) - 1, -1, -1):
            rest_after[i] = rest_after[i + 1] | 1 << ready[i]

        def rec(i: int, assigned: int) -> None:
            if len(out) >= self.max_actions:
                self.exhaustive = False
                return
            self.steps += 1  # one state's epochs can be many: the time limit is checked here too
            if self.deadline is not None and self.steps % 4096 == 0 and time.perf_counter() > self.deadline:
                raise _Stop
            if chosen:
                used = [b for b, m in zip(busy, epoch_model, strict=True) if m != -2]
                remaining = notdone & ~assigned & ~rest_after[i]
                partial = tb.epoch_cost(used, wave_s) + self.bound_of(remaining, future_tools)[0]
                if partial >= limit:
                    return
            if i == len(ready):
                if chosen and not (self.restricted and self._leaves_idle(slots, ready, epoch_model, assigned)):
                    self._emit(state, wave, wave_s, chosen, busy, epoch_model, out)
                return
            t = ready[i]
            m = tb.model_of[t]
            p = tb.parent[t]
            seen: set[Slot] = set()
            loading_tried = False
            for j in range(W):
                if epoch_model[j] not in (-2, m):
                    continue
                fresh = epoch_model[j] == -2
                if fresh:
                    if slots[j] in seen:
                        continue
                    seen.add(slots[j])
                    if self.restricted and slots[j][1] != m and not (p >= 0 and slots[j][2] >> p & 1):
                        if loading_tried:
                            continue
                        loading_tried = True
                add = tb.load_s[m] if fresh and slots[j][1] != m else 0.0
                add += tb.task_time(t, speeds[j], p >= 0 and bool(slots[j][2] >> p & 1))
                old = busy[j], epoch_model[j]
                busy[j] += add
                epoch_model[j] = m
                chosen.append((t, j))
                rec(i + 1, assigned | 1 << t)
                chosen.pop()
                busy[j], epoch_model[j] = old
            # data-parallel splits: even shares over the k preferred fresh slots (holding the parent's
            # KV, then holding the model, then the rest; slot order within each)
            if tb.split_ways[t]:
                ranked = sorted(
                    (j for j in range(W) if epoch_model[j] == -2),
                    key=lambda j: 0 if p >= 0 and slots[j][2] >> p & 1 else 1 if slots[j][1] == m else 2,
                )
                for s, k in enumerate(tb.split_ways[t]):
                    if k > len(ranked):
                        continue
                    for j in ranked[:k]:
                        local = p >= 0 and bool(slots[j][2] >> p & 1)
                        busy[j] = (tb.load_s[m] if slots[j][1] != m else 0.0) + tb.share_time(t, s, speeds[j], local)
                        epoch_model[j] = m
                        chosen.append((t, j))
                    rec(i + 1, assigned | 1 << t)
                    for j in ranked[:k]:
                        chosen.pop()
                        busy[j], epoch_model[j] = 0.0, -2
            rec(i + 1, assigned)

        rec(0, 0)
        out.sort(key=lambda a: a[0])
        return out

    def _leaves_idle(self, slots, ready: list[int], epoch_model: list[int], assigned: int) -> bool:
        """Heuristic rule: an idle worker holds the model of a ready task that waits."""
        idle_models = {slots[j][1] for j in range(len(slots)) if epoch_model[j] == -2}
        return any(not assigned >> t & 1 and self.tb.model_of[t] in idle_models for t in ready)

    def _emit(self, state: State, wave: int, wave_s: float, chosen, busy, epoch_model, out) -> None:
        tb = self.tb
        done, tools_done, slots = state
        new_done = done
        new_slots = list(slots)
        for t, j in chosen:
            new_done |= 1 << t
            k, _, kv = new_slots[j]
            new_slots[j] = (k, tb.model_of[t], kv | 1 << t)
        nxt, _ = self.canonical(new_done, tools_done | wave, new_slots)
        cost = tb.epoch_cost([b for b, m in zip(busy, epoch_model, strict=True) if m != -2], wave_s)
        out.append((cost + self.bound(*nxt), cost, tuple(chosen), nxt))

    def bound_of(self, llm: int, tools: int) -> tuple[float, float, float, int, tuple[float, ...]]:
        """Bound terms of the remaining masks, before model loads: (makespan-and-work bound, work,
        span, epochs, per model the span it forces were it resident nowhere)."""
        key = (llm, tools)
        cached = self.bound_memo.get(key)
        if cached is None:
            tb = self.tb
            work = sum(tb.work_lb_s[t] for t in range(tb.n) if llm >> t & 1) / tb.max_speed
            cpu = tb.wave_s(tools)
            down, depth, tdown, tdepth = tb.paths(llm, tools)
            head = heads(tb, llm, tools)
            through = [float("inf")] * len(tb.models)
            shortest = [float("inf")] * len(tb.models)
            for t in range(tb.n):
                if llm >> t & 1:
                    m = tb.model_of[t]
                    through[m] = min(through[m], head[t] + down[t])
                    shortest[m] = min(shortest[m], tb.span_lb_s[t] / tb.max_speed)
            # per model, were it resident nowhere: its first epoch loads it; a task of it either runs
            # there (its chain plus the load) or later (after that epoch's load and shortest task)
            loaded = [0.0] * len(tb.models)
            for t in range(tb.n):
                if llm >> t & 1:
                    m = tb.model_of[t]
                    load = tb.load_s[m]
                    late = max(head[t], load + shortest[m])
                    loaded[m] = max(loaded[m], down[t] + min(head[t] + load, late), load + through[m])
            cp = max(max(down, default=0.0), max(tdown, default=0.0))
            levels = max(max(depth, default=0), max(tdepth, default=0))
            span = max(cp, work / tb.W, cpu)
            value = tb.w_makespan * (span + levels * tb.overhead_s) + tb.w_load * work
            cached = (value, work, span, levels, tuple(loaded))
            self.bound_memo[key] = cached
        return cached

    def bound(self, done: int, tools_done: int, slots: tuple[Slot, ...]) -> float:
        """Admissible lower bound on the cost to finish from a state. A model resident nowhere is
        loaded at least once (work), in the epoch of the first of its tasks to run, which lasts at
        least the load plus that task: the plan lasts at least the load plus the shortest chain
        through one of its tasks, and for each of its tasks t, t's chain after either the load
        (t runs first) or the longer of t's head and the load plus its model's shortest task (span)."""
        tb = self.tb
        llm = tb.all_mask & ~done
        tools = tb.all_tools & ~tools_done
        if not llm and not tools:
            return 0.0
        value, work, span, levels, loaded = self.bound_of(llm, tools)
        resident = {m for _, m, _ in slots}
        needed = {tb.model_of[t] for t in range(tb.n) if llm >> t & 1}
        missing = sorted(needed - resident)
        if not missing:
            return value
        for m in missing:
            work += tb.load_s[m]
            span = max(span, loaded[m])
        span = max(span, work / tb.W)
        return tb.w_makespan * (span + levels * tb.overhead_s) + tb.w_load * work

    def replay(self, path: list[tuple[State, Action]]) -> list[list[tuple[int, int]]]:
        """Map a path of canonical actions back to real workers: epochs of (task, worker) indices."""
        tb = self.tb
        done = tools_done = 0
        actual: list[Slot] = [(tb.kind_of[w], tb.initial_model[w], 0) for w in range(tb.W)]
        epochs = []
        for expected, action in path:
            state, perm = self.canonical(done, tools_done, actual)
            assert state == expected, "replay diverged from the search"
            tools_done = tb.available_tools(done)
            epoch = []
            for t, j in action:
                w = perm[j]
                k, _, kv = actual[w]
                actual[w] = (k, tb.model_of[t], kv | 1 << t)
                done |= 1 << t
                epoch.append((t, w))
            epochs.append(epoch)
        return epochs


def kv_parents_pending(tb: CostTable, done: int) -> int:
    """Mask of tasks whose KV still matters: kv parents of some task not yet done."""
    mask = 0
    for t in range(tb.n):
        if not done >> t & 1 and tb.parent[t] >= 0:
            mask |= 1 << tb.parent[t]
    return mask


def heads(tb: CostTable, llm: int, tools: int) -> list[float]:
    """Per LLM task in `llm`, the longest chain of remaining work (masks) that must run in epochs
    before its own: LLM tasks at full speed, tools' CPU (a chain of tools in one wave adds up)."""
    upto = [0.0] * tb.n  # chain ending with the task, inclusive
    tupto = [0.0] * tb.n_tools
    head = [0.0] * tb.n
    for is_tool, i in tb.node_order:
        if is_tool:
            if not tools >> i & 1:
                continue
            best = 0.0
            for d in tb.tool_llm_deps[i]:
                if llm >> d & 1:
                    best = max(best, upto[d])
            for d in tb.tool_tool_deps[i]:
                if tools >> d & 1:
                    best = max(best, tupto[d])
            tupto[i] = tb.tool_s[i] + best
        else:
            if not llm >> i & 1:
                continue
            best = 0.0
            for d in tb.deps[i]:
                if llm >> d & 1:
                    best = max(best, upto[d])
            for a in range(tb.n_tools):
                if tb.tool_dep_mask[i] >> a & 1 and tools >> a & 1:
                    best = max(best, tupto[a])
            head[i] = best
            upto[i] = tb.span_lb_s[i] / tb.max_speed + best
    return head
