"""`CostTable`: a `PlanProblem` flattened to integer-indexed arrays that every planner reads.

Tasks are numbered in topological order, workers in declaration order, models by first use. The
numbers here are the whole cost semantics of `problem.py`; nothing else prices a plan.
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
            deps = sorted({self.task_index[d] for d in t.depends_on})
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

    def epoch_cost(self, busy: list[float]) -> float:
        """Weighted cost of one epoch from its workers' busy times (rule 5)."""
        return self.w_makespan * (max(busy) + self.overhead_s) + self.w_load * sum(busy)

    def kv_parents_pending(self, done: int) -> int:
        """Mask of tasks whose KV still matters: kv parents of some task not yet done."""
        mask = 0
        for t in range(self.n):
            if not done >> t & 1 and self.parent[t] >= 0:
                mask |= 1 << self.parent[t]
        return mask

    def bottom_levels(self) -> list[float]:
        """Per task, the least time from its start to the end of the graph (critical-path priority)."""
        down = [0.0] * self.n
        for t in reversed(range(self.n)):
            down[t] = self.base_s[t] / self.max_speed + max((down[c] for c in self.children[t]), default=0.0)
        return down
