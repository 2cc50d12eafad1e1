"""Emit: the plan leaves Python as an `ExecutionGraph`, flat arrays the native scheduler core reads.

One entry per physical node of the consolidated batch: whom it waits for (CSR upstream arrays),
which ready queue hands it out (the planned worker for llm nodes, the tool pool for the rest) and
its priority (the plan's epoch first, then the physical id, which is topological). Placement and
epoch come from the `ExecutionPlan`'s tasks, one per llm graph node; a tool node is prepared in the
epoch the plan prepares it in (else the earliest epoch among the llm nodes that read it), so it runs
ahead of them on the CPU pool.

A node the plan splits data-parallel (rule 3b of halo.plan.search.problem) gets one queue per
instance: `split_assignment` deals its physical nodes to the share workers in proportion to the
plan's shares, first each instance whose parent instance (its KV parent's, else its first llm
upstream's) ran on a share worker to that worker while its share has room (KV locality), then the
rest in order to the worker with the most room left. Unsplit nodes keep one worker per node. An
instance of a split node (or of a child of one) whose parent instance ran on another worker pulls
that prefix's KV from there (`kv_source_of`) unless the plan recomputes it.
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
    workers_of: dict[str, tuple[int, ...]] = field(default_factory=dict)  # split llm node -> its share workers
    # per physical node of a split node (or of a child of one): the worker to pull its parent's prefix
    # KV from, where that instance's parent ran elsewhere and the plan moves rather than recomputes
    kv_source_of: dict[int, int] = field(default_factory=dict)

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
                worker_of.setdefault(placement.task, worker_index.get(placement.worker, 0))
            for tool in epoch.tools:  # prepared ahead in this epoch on the CPU pool
                planned_tools.setdefault(tool, e)
    # split nodes: per worker index, its share of the node's instances (their KV moves are per
    # instance, `kv_source_of`, not per node)
    shares = {
        task: {worker_index.get(w, 0): n for w, n in by_worker.items()}
        for task, by_worker in (plan.shares() if plan is not None else {}).items()
    }
    kv_source: dict[str, int] = {}
    if plan is not None:
        for epoch in plan.epochs:
            for placement in epoch.placements:
                parent = (kv_parents or {}).get(placement.task)
                split = placement.task in shares or parent in shares
                if placement.kv == "move" and parent is not None and parent in worker_of and not split:
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
    for node_id, by_worker in shares.items():  # physical ids are topological: parents are assigned first
        mine = [phys for phys in range(n) if table.node[phys] == node_id]
        parent_of = _parent_instances(graph, node_id, mine, (kv_parents or {}).get(node_id))
        parent_worker = [None if up is None else int(queue[up]) for up in parent_of]
        for phys, worker in zip(mine, split_assignment(parent_worker, by_worker), strict=True):
            queue[phys] = worker
    kv_source_of: dict[int, int] = {}
    if plan is not None:
        handling: dict[str, set[str]] = {}
        for epoch in plan.epochs:
            for placement in epoch.placements:
                handling.setdefault(placement.task, set()).add(placement.kv)
        for node_id, parent in (kv_parents or {}).items():
            kv = handling.get(node_id, set())
            if not (node_id in shares or parent in shares) or "recompute" in kv or not kv & {"local", "move"}:
                continue
            mine = [phys for phys in range(n) if table.node[phys] == node_id]
            for phys, up in zip(mine, _parent_instances(graph, node_id, mine, parent), strict=True):
                if up is not None and table.node[up] == parent and queue[up] != queue[phys]:
                    kv_source_of[phys] = int(queue[up])
    return ExecutionGraph(
        upstream_offsets=np.cumsum(counts),
        upstream_indices=np.asarray(indices, dtype=np.int32),
        queue=queue,
        priority=priority,
        epoch_of=epoch_of,
        worker_of=worker_of,
        num_workers=num_workers,
        kv_source=kv_source,
        workers_of={task: tuple(by_worker) for task, by_worker in shares.items()},
        kv_source_of=kv_source_of,
    )


def split_assignment(parent_worker: list[int | None], shares: Mapping[int, int]) -> list[int]:
    """The worker of each instance of a split node (the module docstring's rule).

    `parent_worker`: per instance, in physical order, the worker its parent instance ran on (None:
    no parent); `shares`: worker -> planned instances. Shares are rescaled to the instances there are
    (largest remainder) when the plan counted a different number.
    """
    n = len(parent_worker)
    workers = list(shares)
    total = sum(shares.values())
    if total != n:
        exact = [shares[w] * n / total if total else n / len(workers) for w in workers]
        room = [int(x) for x in exact]
        by_remainder = sorted(range(len(workers)), key=lambda i: room[i] - exact[i])
        for i in by_remainder[: n - sum(room)]:
            room[i] += 1
        left = dict(zip(workers, room, strict=True))
    else:
        left = dict(shares)
    out: list[int | None] = [None] * n
    for i, w in enumerate(parent_worker):
        if w is not None and left.get(w, 0) > 0:
            out[i] = w
            left[w] -= 1
    for i in range(n):
        if out[i] is None:
            w = max(workers, key=lambda x: left[x])  # ties: the first share worker
            out[i] = w
            left[w] -= 1
    return [int(w) for w in out if w is not None]


def _parent_instances(
    graph: ConsolidatedGraph, node_id: str, mine: list[int], kv_parent: str | None
) -> list[int | None]:
    """Per physical node of `node_id`, its parent instance: the upstream one of its KV parent, else
    of its first llm upstream node (None: it reads no llm node)."""
    table = graph.physical
    llm = {node.id for node in graph.workflow.nodes if node.kind == "llm"}
    out: list[int | None] = []
    for phys in mine:
        upstream = table.key[phys][2]
        pick = next((u for u in upstream if table.node[u] == kv_parent), None)
        if pick is None:
            pick = next((u for u in upstream if table.node[u] in llm), None)
        out.append(pick)
    return out
