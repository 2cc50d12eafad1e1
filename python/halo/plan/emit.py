"""Emit: the plan leaves Python as an `ExecutionGraph`, flat arrays the native scheduler core reads.

One entry per physical node of the consolidated batch: whom it waits for (CSR upstream arrays),
which ready queue hands it out (the planned worker for llm nodes, the tool pool for the rest) and
its priority (the plan's epoch first, then the physical id, which is topological). Placement and
epoch come from the `ExecutionPlan`'s tasks, one per llm graph node; a tool node is prepared in the
epoch the plan prepares it in (else the earliest epoch among the llm nodes that read it), so it runs
ahead of them on the CPU pool.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np

from halo.plan.consolidated_graph import ConsolidatedGraph
from halo.plan.search import ExecutionPlan

EPOCH_STRIDE = 1 << 32  # priority = epoch * stride + physical id: epochs first, then topological order


@dataclass(frozen=True)
class ExecutionGraph:
    """The flat, per-physical-node view of a plan that `halo._core.SchedulerCore` consumes."""

    upstream_offsets: np.ndarray  # int64 (n + 1,)
    upstream_indices: np.ndarray  # int32
    queue: np.ndarray  # int32 (n,): worker index for llm nodes, `tool_queue` for the others
    priority: np.ndarray  # int64 (n,)
    epoch_of: dict[str, int]  # graph node id -> planned epoch (0-based)
    worker_of: dict[str, int]  # llm graph node id -> planned worker index
    num_workers: int
    kv_source: dict[str, int] = field(default_factory=dict)  # llm node -> worker to pull its prefix KV from

    @property
    def tool_queue(self) -> int:
        return self.num_workers

    @property
    def num_nodes(self) -> int:
        return len(self.queue)


def emit(
    graph: ConsolidatedGraph,
    plan: ExecutionPlan | None,
    num_workers: int,
    kv_parents: Mapping[str, str] | None = None,
    pinned: Mapping[str, int] | None = None,
) -> ExecutionGraph:
    """Flatten `graph` under `plan` (None: every llm node on worker 0, all in epoch 0).

    `kv_parents` (llm node -> the llm node whose prompt prefix it shares) marks the placements the
    plan prices as a KV move: the child's prefix is pulled from the parent's worker before it runs.
    `pinned` (llm node -> worker index) places the nodes of remote models on their endpoint's worker
    (indices past the plan's workers, within `num_workers`); the plan prices them as tools
    (`plan/remote_task.py`), so their epoch is the one the plan prepares them in.
    """
    wf = graph.workflow
    pinned = dict(pinned or {})
    worker_index = {f"w{i}": i for i in range(num_workers)}
    epoch_of: dict[str, int] = {}
    worker_of: dict[str, int] = {}
    planned_tools: dict[str, int] = {}
    if plan is not None:
        for e, epoch in enumerate(plan.epochs):
            for placement in epoch.placements:
                epoch_of[placement.task] = e
                worker_of[placement.task] = worker_index.get(placement.worker, 0)
            for tool in epoch.tools:  # prepared ahead in this epoch on the CPU pool
                planned_tools.setdefault(tool, e)
    kv_source: dict[str, int] = {}
    if plan is not None:
        for epoch in plan.epochs:
            for placement in epoch.placements:
                parent = (kv_parents or {}).get(placement.task)
                if placement.kv == "move" and parent is not None and parent in worker_of:
                    kv_source[placement.task] = worker_of[parent]
    # A tool runs in the earliest epoch of the llm nodes downstream of it (prepared ahead); a node
    # with no llm consumer runs as soon as it can (epoch of its own upstream, else 0).
    readers: dict[str, list[str]] = {}
    for node in wf.nodes:
        for up in node.upstream:
            readers.setdefault(up, []).append(node.id)
    for node_id, worker in pinned.items():
        worker_of[node_id] = worker
        if node_id in planned_tools:
            epoch_of[node_id] = planned_tools[node_id]
    for node in reversed(wf.nodes):
        if node.kind == "llm":
            epoch_of.setdefault(node.id, 0)
            worker_of.setdefault(node.id, 0)
            continue
        if node.id in planned_tools:
            epoch_of[node.id] = planned_tools[node.id]
            continue
        below = [epoch_of[r] for r in readers.get(node.id, ()) if r in epoch_of]
        epoch_of[node.id] = min(below) if below else -1
    for node in wf.nodes:  # nodes nobody reads inherit their upstream's epoch
        if epoch_of[node.id] < 0:
            epoch_of[node.id] = max((epoch_of[u] for u in node.upstream), default=0)

    table = graph.physical
    n = len(table)
    counts = np.zeros(n + 1, dtype=np.int64)
    indices: list[int] = []
    queue = np.empty(n, dtype=np.int32)
    priority = np.empty(n, dtype=np.int64)
    kinds = {node.id: node.kind for node in wf.nodes}
    for phys in range(n):
        node_id = table.node[phys]
        upstream = table.key[phys][2]
        indices.extend(upstream)
        counts[phys + 1] = len(upstream)
        queue[phys] = worker_of[node_id] if kinds[node_id] == "llm" else num_workers
        priority[phys] = epoch_of[node_id] * EPOCH_STRIDE + phys
    return ExecutionGraph(
        upstream_offsets=np.cumsum(counts),
        upstream_indices=np.asarray(indices, dtype=np.int32),
        queue=queue,
        priority=priority,
        epoch_of=epoch_of,
        worker_of=worker_of,
        num_workers=num_workers,
        kv_source=kv_source,
    )
