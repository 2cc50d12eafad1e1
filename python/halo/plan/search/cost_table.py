"""`CostTable`: a `PlanProblem` flattened to integer-indexed arrays that every planner reads.

LLM tasks and tools are numbered in topological order (each in its own index space), workers in
declaration order, models by name. The numbers here are the whole cost semantics of `problem.py`;
nothing else prices a plan (`execution_plan.evaluate`), and the native search's `halo._core.PlanCost`
is built from these arrays.
"""

from __future__ import annotations

from halo.plan.search.problem import PlanProblem


class CostTable:
    def __init__(self, problem: PlanProblem) -> None:
        self.problem = problem
        order = problem.topological_order()
        by_id = {t.id: t for t in problem.tasks}
        self.task_ids: list[str] = order
        self.task_index = {tid: i for i, tid in enumerate(order)}
        self.models: list[str] = sorted(problem.model_load_s)
        self.model_index = {m: i for i, m in enumerate(self.models)}
        self.load_s: list[float] = [float(problem.model_load_s[m]) for m in self.models]
        n = len(order)
        self.n = n
        self.model_of: list[int] = []
        self.dep_mask: list[int] = []
        self.deps: list[list[int]] = []
        self.children: list[list[int]] = [[] for _ in range(n)]
        self.parent: list[int] = []
        self.base_s: list[float] = []  # time with the parent's KV local (or no parent), at speed 1
        self.penalty_s: list[float] = []  # extra time when the parent's KV is elsewhere, at speed 1
        for i, tid in enumerate(order):
            t = by_id[tid]
            deps = sorted({self.task_index[d] for d in t.depends_on if d in self.task_index})
            self.deps.append(deps)
            self.dep_mask.append(sum(1 << d for d in deps))
            for d in deps:
                self.children[d].append(i)
            self.model_of.append(self.model_index[t.model])
            if t.kv_parent is None:
                self.parent.append(-1)
                self.base_s.append(t.prefill_s + t.decode_s)
                self.penalty_s.append(0.0)
            else:
                self.parent.append(self.task_index[t.kv_parent])
                self.base_s.append(t.prefill_s - t.kv_saving_s + t.decode_s)
                self.penalty_s.append(min(t.kv_move_s, t.kv_saving_s))
        # data-parallel splits (rule 3b): per task its degrees and one share's times, as above; the
        # bounds read the least span and the least total work over whole and split placements
        self.split_ways: list[list[int]] = []
        self.split_base_s: list[list[float]] = []
        self.split_penalty_s: list[list[float]] = []
        self.span_lb_s: list[float] = []
        self.work_lb_s: list[float] = []
        self.instances: list[int] = []
        for i, tid in enumerate(order):
            t = by_id[tid]
            splits = sorted(t.splits, key=lambda sp: sp.ways)
            has_parent = self.parent[i] >= 0
            self.split_ways.append([sp.ways for sp in splits])
            self.split_base_s.append(
                [sp.prefill_s - (sp.kv_saving_s if has_parent else 0.0) + sp.decode_s for sp in splits]
            )
            self.split_penalty_s.append([min(sp.kv_move_s, sp.kv_saving_s) if has_parent else 0.0 for sp in splits])
            self.span_lb_s.append(min([self.base_s[i], *self.split_base_s[i]]))
            self.work_lb_s.append(
                min([self.base_s[i], *(k * b for k, b in zip(self.split_ways[i], self.split_base_s[i], strict=True))])
            )
            self.instances.append(t.instances)
        # tools: index space of their own; an LLM task reads tools through `tool_dep_mask`
        self.tool_ids: list[str] = problem.tool_order()
        self.tool_index = {tid: i for i, tid in enumerate(self.tool_ids)}
        self.n_tools = len(self.tool_ids)
        self.all_tools = (1 << self.n_tools) - 1
        self.tool_s: list[float] = []
        self.tool_llm_deps: list[list[int]] = []  # direct LLM inputs
        self.tool_tool_deps: list[list[int]] = []  # direct tool inputs
        self.tool_anc: list[int] = []  # LLM tasks reached through tool-only paths (mask): rule 5
        for tid in self.tool_ids:
            tool = problem.tool(tid)
            self.tool_s.append(float(tool.cpu_s))
            llm = sorted({self.task_index[d] for d in tool.depends_on if d in self.task_index})
            tools = sorted({self.tool_index[d] for d in tool.depends_on if d in self.tool_index})
            self.tool_llm_deps.append(llm)
            self.tool_tool_deps.append(tools)
            anc = sum(1 << d for d in llm)
            for d in tools:
                anc |= self.tool_anc[d]
            self.tool_anc.append(anc)
        self.tool_dep_mask: list[int] = []  # per LLM task, the tools it reads
        self.before_mask: list[int] = []  # per LLM task, LLM tasks that must run in an earlier epoch
        self.tool_children: list[list[int]] = [[] for _ in range(self.n_tools)]  # tool -> LLM readers
        for i, tid in enumerate(order):
            tools = sorted({self.tool_index[d] for d in by_id[tid].depends_on if d in self.tool_index})
            self.tool_dep_mask.append(sum(1 << d for d in tools))
            before = self.dep_mask[i]
            for d in tools:
                before |= self.tool_anc[d]
            self.before_mask.append(before)
            for d in tools:
                self.tool_children[d].append(i)
        self.llm_tool_children: list[list[int]] = [[] for _ in range(n)]  # LLM task -> tools reading it
        self.tool_tool_children: list[list[int]] = [[] for _ in range(self.n_tools)]
        for a in range(self.n_tools):
            for d in self.tool_llm_deps[a]:
                self.llm_tool_children[d].append(a)
            for d in self.tool_tool_deps[a]:
                self.tool_tool_children[d].append(a)
        # LLM tasks and tools in one dependency order: (is_tool, index)
        self.node_order: list[tuple[bool, int]] = [
            (True, self.tool_index[i]) if i in self.tool_index else (False, self.task_index[i])
            for i in problem.all_in_order()
        ]
        self.worker_ids = [w.id for w in problem.workers]
        self.W = len(self.worker_ids)
        self.speed = [w.speed for w in problem.workers]
        kinds = sorted({w.kind for w in problem.workers})
        self.kind_of = [kinds.index(w.kind) for w in problem.workers]
        self.kind_speed = [next(w.speed for w in problem.workers if w.kind == k) for k in kinds]
        self.initial_model = [
            -1 if problem.resident.get(w.id) is None else self.model_index[problem.resident[w.id]]
            for w in problem.workers
        ]
        self.overhead_s = problem.epoch_overhead_s
        self.w_makespan = problem.makespan_weight
        self.w_load = problem.load_weight
        self.max_speed = max(self.speed)
        self.all_mask = (1 << n) - 1

    def task_time(self, t: int, speed: float, parent_local: bool) -> float:
        """Seconds task `t` takes on a worker of `speed` (rule 3 of the cost semantics)."""
        if self.parent[t] < 0 or parent_local:
            return self.base_s[t] / speed
        return (self.base_s[t] + self.penalty_s[t]) / speed

    def split_index(self, t: int, ways: int) -> int:
        """Position of task `t`'s `ways`-way split in its split arrays, or -1 if it offers none."""
        return self.split_ways[t].index(ways) if ways in self.split_ways[t] else -1

    def share_time(self, t: int, s: int, speed: float, parent_local: bool) -> float:
        """Seconds one share of task `t`'s split number `s` takes on a worker of `speed` (rule 3b)."""
        base = self.split_base_s[t][s]
        if self.parent[t] < 0 or parent_local:
            return base / speed
        return (base + self.split_penalty_s[t][s]) / speed

    def epoch_cost(self, busy: list[float], tool_s: float = 0.0) -> float:
        """Weighted cost of one epoch from its workers' busy times and its tool wave's CPU time (rule 6)."""
        return self.w_makespan * (max(max(busy, default=0.0), tool_s) + self.overhead_s) + self.w_load * sum(busy)

    def available_tools(self, done: int) -> int:
        """Mask of tools whose inputs are complete once the LLM tasks in `done` are (rule 5)."""
        mask = 0
        for a in range(self.n_tools):
            if self.tool_anc[a] & done == self.tool_anc[a]:
                mask |= 1 << a
        return mask

    def wave_s(self, wave: int) -> float:
        """CPU seconds of a tool wave (its tools run back to back on the pool)."""
        return sum(self.tool_s[a] for a in range(self.n_tools) if wave >> a & 1)

    def ready(self, done: int, tools_done: int) -> list[int]:
        """LLM tasks not done whose LLM inputs are done and whose tool inputs ran in an earlier epoch."""
        return [
            t
            for t in range(self.n)
            if not done >> t & 1
            and self.dep_mask[t] & done == self.dep_mask[t]
            and self.tool_dep_mask[t] & tools_done == self.tool_dep_mask[t]
        ]

    def bottom_levels(self) -> list[float]:
        """Per task, the least time from its start to the end of the graph (critical-path priority)."""
        return self.paths(self.all_mask, self.all_tools)[0]

    def paths(self, llm: int, tools: int) -> tuple[list[float], list[int], list[float], list[int]]:
        """Longest remaining paths within the LLM tasks `llm` and the tools `tools` (masks).

        Per LLM task and per tool: the least time from its start to the end of the graph (LLM work at
        full speed, tool CPU) and the least number of epochs. Every reader of an LLM task runs in a
        later epoch; a tool's LLM readers run in later epochs, its tool readers in its own epoch.
        """
        down, depth = [0.0] * self.n, [0] * self.n
        tdown, tdepth = [0.0] * self.n_tools, [0] * self.n_tools
        for is_tool, i in reversed(self.node_order):
            if is_tool:
                if not tools >> i & 1:
                    continue
                best, levels = 0.0, 1
                for c in self.tool_children[i]:
                    if llm >> c & 1:
                        best, levels = max(best, down[c]), max(levels, 1 + depth[c])
                for b in self.tool_tool_children[i]:
                    if tools >> b & 1:
                        best, levels = max(best, tdown[b]), max(levels, tdepth[b])
                tdown[i], tdepth[i] = self.tool_s[i] + best, levels
            else:
                if not llm >> i & 1:
                    continue
                best, levels = 0.0, 0
                for c in self.children[i]:
                    if llm >> c & 1:
                        best, levels = max(best, down[c]), max(levels, depth[c])
                for b in self.llm_tool_children[i]:
                    if tools >> b & 1:
                        best, levels = max(best, tdown[b]), max(levels, tdepth[b])
                down[i], depth[i] = self.span_lb_s[i] / self.max_speed + best, 1 + levels
        return down, depth, tdown, tdepth
