"""The plan-search problem: LLM tasks, workers, and the one cost semantics every planner shares.

A task is one workflow node (all of its batch rows run inside it as one batch), so the problem's
size depends on the graph, never on the number of rows.

Cost semantics (the DP, the greedy planner, the baselines and the MILP oracle all use exactly
these; `CostTable` holds the numbers and `evaluate` is the one reference implementation):

1. A plan is an ordered list of epochs; an epoch assigns a set of tasks to workers. Every task runs
   exactly once, and all of its `depends_on` ran in earlier epochs (so an epoch runs only ready
   tasks, and the completed set is always dependency-closed).
2. A worker runs at most one model per epoch. If that model is not the worker's resident model, the
   worker first pays `model_load_s[model]` and the model becomes resident. An idle worker keeps its
   model (no speculative preloading). A worker's `resident` model may start as None (nothing loaded).
3. A task's time on a worker is `(prefill_s + decode_s) / speed`. A task with a `kv_parent` (which
   must be one of its own dependencies, of the same model) shares that parent's prefix: a worker keeps
   the KV of every task it ran, so on the parent's worker the task saves `kv_saving_s` of prefill;
   on any other worker it pays `min(kv_move_s, kv_saving_s)` on top of the saved time (move the
   KV or recompute the prefix, whichever is cheaper).
4. A worker's busy time in an epoch is its load time plus the sum of its tasks' times (tasks of one
   model on one worker run back to back in one engine; batching inside a task is already priced in
   its times).
5. Epoch time = max busy time over workers + `epoch_overhead_s`. The plan's makespan is the sum of
   its epoch times, its summed load the sum of all busy times, and its cost
   `makespan_weight * makespan + load_weight * summed load`.

Measured latency curves plug in through `CostCurves`: whoever builds a `PlanProblem` from a
consolidated graph asks the curves for each task's prefill/decode seconds and each model's load time.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Protocol


class CostCurves(Protocol):
    """Where task times come from (measured profiles, or defaults before profiling)."""

    def prefill_s(self, model: str, new_tokens: int, cached_tokens: int, batch: int) -> float: ...

    def decode_s(self, model: str, steps: int, batch: int, context_tokens: int) -> float: ...

    def load_s(self, model: str) -> float: ...


@dataclass(frozen=True)
class LLMTask:
    """One LLM node of the consolidated graph, with its predicted times (all rows batched)."""

    id: str
    model: str
    prefill_s: float
    decode_s: float
    depends_on: tuple[str, ...] = ()
    kv_parent: str | None = None
    kv_saving_s: float = 0.0
    kv_move_s: float = 0.0


@dataclass(frozen=True)
class Worker:
    """One engine. Workers of the same `kind` are interchangeable (and must share `speed`)."""

    id: str
    kind: str = "default"
    speed: float = 1.0


@dataclass(frozen=True)
class PlanProblem:
    tasks: tuple[LLMTask, ...]
    workers: tuple[Worker, ...]
    model_load_s: Mapping[str, float]
    resident: Mapping[str, str | None] = field(default_factory=dict)
    epoch_overhead_s: float = 0.0
    makespan_weight: float = 1.0
    load_weight: float = 0.0

    def __post_init__(self) -> None:
        ids = [t.id for t in self.tasks]
        if len(set(ids)) != len(ids):
            raise ValueError("task ids must be unique")
        if not self.workers or len({w.id for w in self.workers}) != len(self.workers):
            raise ValueError("need at least one worker, with unique ids")
        by_id = {t.id: t for t in self.tasks}
        speeds: dict[str, float] = {}
        for w in self.workers:
            if w.speed <= 0 or speeds.setdefault(w.kind, w.speed) != w.speed:
                raise ValueError(f"worker {w.id}: speed must be positive and equal within kind {w.kind!r}")
        for t in self.tasks:
            if t.model not in self.model_load_s:
                raise ValueError(f"task {t.id}: no model_load_s for model {t.model!r}")
            if min(t.prefill_s, t.decode_s, t.kv_saving_s, t.kv_move_s) < 0:
                raise ValueError(f"task {t.id}: times must be non-negative")
            for d in t.depends_on:
                if d not in by_id:
                    raise ValueError(f"task {t.id}: unknown dependency {d!r}")
            if t.kv_parent is not None:
                parent = by_id.get(t.kv_parent)
                if t.kv_parent not in t.depends_on or parent is None or parent.model != t.model:
                    raise ValueError(f"task {t.id}: kv_parent must be a dependency of the same model")
                if t.kv_saving_s > t.prefill_s:
                    raise ValueError(f"task {t.id}: kv_saving_s exceeds prefill_s")
        for w, m in self.resident.items():
            if m is not None and m not in self.model_load_s:
                raise ValueError(f"worker {w}: unknown resident model {m!r}")
        if min(self.epoch_overhead_s, self.makespan_weight, self.load_weight) < 0:
            raise ValueError("overhead and weights must be non-negative")
        self.topological_order()  # raises on a cycle

    def task(self, task_id: str) -> LLMTask:
        return next(t for t in self.tasks if t.id == task_id)

    def topological_order(self) -> list[str]:
        """Task ids in dependency order (ties keep declaration order)."""
        indeg = {t.id: len(set(t.depends_on)) for t in self.tasks}
        children: dict[str, list[str]] = {t.id: [] for t in self.tasks}
        for t in self.tasks:
            for d in set(t.depends_on):
                children[d].append(t.id)
        order = [t.id for t in self.tasks if indeg[t.id] == 0]
        for tid in order:
            for c in children[tid]:
                indeg[c] -= 1
                if indeg[c] == 0:
                    order.append(c)
        if len(order) != len(self.tasks):
            raise ValueError("task dependencies contain a cycle")
        return order
