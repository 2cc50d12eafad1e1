"""The plan-search problem: LLM tasks, CPU tool tasks, workers, and the one cost semantics every planner shares.

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
3b. Data-parallel splits: a task with `splits` may instead run as `ways` even shares of its instances
   on `ways` distinct workers of one epoch (each worker then runs the task's model). A share's time
   is the `Split`'s (priced at the share's batch size, a shared prompt prefix prefilled or moved once
   per share), divided by its worker's speed; its KV saving applies on a worker that ran (a share
   of) the parent, else it pays the move-or-recompute penalty as in rule 3. Every worker that runs a
   share counts as having run the task (it holds that share's KV). This is exact when the parent ran
   whole or both are split over the same workers (the runtime sends each row to its parent's
   worker); when the parent's shares ran on workers the child does not use, the rows of those
   shares are still priced as local: an approximation of a state with one KV bit per worker and task.
4. A worker's busy time in an epoch is its load time plus the sum of its tasks' times (tasks of one
   model on one worker run back to back in one engine; batching inside a task is already priced in
   its times).
5. Tools are "prepared ahead", never chosen: a `ToolTask` runs on the CPU tool pool in the first
   epoch at whose start all of its inputs are complete, overlapped with that epoch's LLM work. Its
   inputs are complete once every LLM task it reaches through tool-only paths (`llm_ancestors`) ran
   in an earlier epoch, so a chain of tools fed by the same LLM results runs within one epoch. The
   tools of one epoch (its "wave") run back to back: `cpu_s` is a node's time with the whole pool
   (all of its rows spread over the pool's width), so the wave's CPU time is the sum of theirs. An
   LLM task that reads a tool is ready only in an epoch after that tool's epoch. An epoch may run
   no LLM task at all (a tool-only epoch) when its wave is not empty, e.g. when every ready LLM task
   waits for a tool, or for tools after the last LLM task.
6. Epoch time = max(max busy time over workers, the wave's CPU time) + `epoch_overhead_s`: only the
   tool time that exceeds the LLM work costs. The plan's makespan is the sum of its epoch times, its
   summed load the sum of all busy times (LLM workers only), and its cost
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
class Split:
    """One share of a `ways`-way split of an LLM task: its times when the task's instances are divided
    evenly over `ways` workers (rule 3b)."""

    ways: int
    prefill_s: float
    decode_s: float
    kv_saving_s: float = 0.0
    kv_move_s: float = 0.0


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
    # For reports only (no planner reads them): the tokens the times were priced with, over all of the
    # task's requests (EXPLAIN prints them beside what a run measured).
    prompt_tokens: int = 0
    output_tokens: int = 0  # generated
    instances: int = 0  # physical nodes (executions) of the node: what a split divides
    splits: tuple[Split, ...] = ()  # the split degrees it may take (rule 3b); empty: it runs whole


@dataclass(frozen=True)
class ToolTask:
    """One tool node (sql/http/python/rule) with all its rows: `cpu_s` seconds on the whole tool pool."""

    id: str
    cpu_s: float
    depends_on: tuple[str, ...] = ()  # LLM task ids and tool ids


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
    tools: tuple[ToolTask, ...] = ()
    # For reports only (no planner reads it): the predicted seconds of running the batch the plain
    # way, every logical call of every row on its own (no merging, no shared prefixes, batch 1).
    per_call_s: float = 0.0

    def __post_init__(self) -> None:
        ids = [t.id for t in self.tasks] + [t.id for t in self.tools]
        if len(set(ids)) != len(ids):
            raise ValueError("task ids must be unique (LLM and tool tasks share one namespace)")
        if not self.workers or len({w.id for w in self.workers}) != len(self.workers):
            raise ValueError("need at least one worker, with unique ids")
        by_id = {t.id: t for t in self.tasks}
        tool_ids = {t.id for t in self.tools}
        for tool in self.tools:
            if tool.cpu_s < 0:
                raise ValueError(f"tool {tool.id}: cpu_s must be non-negative")
            for d in tool.depends_on:
                if d not in by_id and d not in tool_ids:
                    raise ValueError(f"tool {tool.id}: unknown dependency {d!r}")
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
                if d not in by_id and d not in tool_ids:
                    raise ValueError(f"task {t.id}: unknown dependency {d!r}")
            if t.kv_parent is not None:
                parent = by_id.get(t.kv_parent)
                if t.kv_parent not in t.depends_on or parent is None or parent.model != t.model:
                    raise ValueError(f"task {t.id}: kv_parent must be a dependency of the same model")
                if t.kv_saving_s > t.prefill_s:
                    raise ValueError(f"task {t.id}: kv_saving_s exceeds prefill_s")
            ways = [s.ways for s in t.splits]
            if len(set(ways)) != len(ways) or any(k < 2 for k in ways):
                raise ValueError(f"task {t.id}: split ways must be distinct and at least 2")
            for sp in t.splits:
                if min(sp.prefill_s, sp.decode_s, sp.kv_saving_s, sp.kv_move_s) < 0:
                    raise ValueError(f"task {t.id}: split {sp.ways}: times must be non-negative")
                if sp.kv_saving_s > sp.prefill_s:
                    raise ValueError(f"task {t.id}: split {sp.ways}: kv_saving_s exceeds prefill_s")
        for w, m in self.resident.items():
            if m is not None and m not in self.model_load_s:
                raise ValueError(f"worker {w}: unknown resident model {m!r}")
        if min(self.epoch_overhead_s, self.makespan_weight, self.load_weight) < 0:
            raise ValueError("overhead and weights must be non-negative")
        self.topological_order()  # raises on a cycle

    def task(self, task_id: str) -> LLMTask:
        return next(t for t in self.tasks if t.id == task_id)

    def tool(self, tool_id: str) -> ToolTask:
        return next(t for t in self.tools if t.id == tool_id)

    def topological_order(self) -> list[str]:
        """LLM task ids in dependency order (ties keep declaration order)."""
        llm = {t.id for t in self.tasks}
        return [tid for tid in self.all_in_order() if tid in llm]

    def tool_order(self) -> list[str]:
        """Tool ids in dependency order (ties keep declaration order)."""
        tools = {t.id for t in self.tools}
        return [tid for tid in self.all_in_order() if tid in tools]

    def all_in_order(self) -> list[str]:
        """LLM task and tool ids together in dependency order (raises on a cycle)."""
        nodes = [*self.tasks, *self.tools]
        indeg = {t.id: len(set(t.depends_on)) for t in nodes}
        children: dict[str, list[str]] = {t.id: [] for t in nodes}
        for t in nodes:
            for d in set(t.depends_on):
                children[d].append(t.id)
        order = [t.id for t in nodes if indeg[t.id] == 0]
        for tid in order:
            for c in children[tid]:
                indeg[c] -= 1
                if indeg[c] == 0:
                    order.append(c)
        if len(order) != len(nodes):
            raise ValueError("task dependencies contain a cycle")
        return order
