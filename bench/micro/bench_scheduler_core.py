"""Micro-benchmarks of halo._core.SchedulerCore on a consolidated batch of 10,000 rows x 17 nodes
(170k nodes, ~310k dependency entries): construction, draining (pop a batch per queue, complete it,
repeat until finished), both together, and the same drain by a plain-Python heapq scheduler for a
side-by-side ratio.

Run: ``.venv/bin/python -m pytest bench/micro/bench_scheduler_core.py -s`` (``-s`` shows the
nodes/s lines; they are also in ``extra_info`` of ``--benchmark-json``). Medians and bests, not
means: the 2-core machines are shared and the mean swings.
"""

from __future__ import annotations

import heapq

import numpy as np
import pytest
from halo._core import SchedulerCore

ROWS, TEMPLATE_NODES, WORKERS, GROUP = 10_000, 17, 4, 100


def batch_graph(rows: int = ROWS) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """rows copies of a 17-node workflow whose node 3 also reads a node shared by GROUP rows; llm
    nodes (odd) on worker row % 4, tools (even) on the pool queue. Same shape as the scale test."""
    template = [[]] + [sorted({k - 1, k // 2, max(k - 3, 0)} - {k}) for k in range(1, TEMPLATE_NODES)]
    row = np.arange(rows, dtype=np.int64)
    base = row * TEMPLATE_NODES
    columns = []
    for k, ups in enumerate(template):
        columns += [base + u for u in ups]
        if k == 3:
            columns.append((row - row % GROUP) * TEMPLATE_NODES)
    counts = np.array([len(ups) + (k == 3) for k, ups in enumerate(template)], dtype=np.int64)
    indices = np.stack(columns, axis=1).ravel().astype(np.int32)  # row-major: node order
    offsets = np.zeros(rows * TEMPLATE_NODES + 1, dtype=np.int64)
    offsets[1:] = np.cumsum(np.tile(counts, rows))
    k = np.tile(np.arange(TEMPLATE_NODES), rows)
    queue = np.where(k % 2 == 1, np.repeat(row % WORKERS, TEMPLATE_NODES), WORKERS).astype(np.int32)
    priority = k.astype(np.int64) * (1 << 32) + np.arange(rows * TEMPLATE_NODES)
    return offsets, indices, queue, priority


GRAPH = batch_graph()
NODES = ROWS * TEMPLATE_NODES


def drain(core: SchedulerCore, batch: int) -> int:
    """Pop up to batch nodes per queue, complete them, until finished. Returns the pop calls made."""
    calls = 0
    while not core.finished:
        for q in range(core.num_queues):
            ids = core.pop(q, batch)
            calls += 1
            if len(ids):
                core.complete(ids)
    return calls


def python_drain(offsets, indices, queue, priority, batch: int) -> None:
    """The same rules with lists and heapq: the baseline the native core replaces."""
    n = len(queue)
    waiting = np.diff(offsets).tolist()
    successors: list[list[int]] = [[] for _ in range(n)]
    for v, (lo, hi) in enumerate(zip(offsets[:-1].tolist(), offsets[1:].tolist(), strict=True)):
        for u in indices[lo:hi].tolist():
            successors[u].append(v)
    queue, priority = queue.tolist(), priority.tolist()
    heaps: list[list[tuple[int, int]]] = [[] for _ in range(max(queue) + 1)]
    for v in range(n):
        if waiting[v] == 0:
            heaps[queue[v]].append((priority[v], v))
    for heap in heaps:
        heapq.heapify(heap)
    remaining = n
    while remaining:
        for heap in heaps:
            ids = [heapq.heappop(heap)[1] for _ in range(min(batch, len(heap)))]
            remaining -= len(ids)
            for u in ids:
                for v in successors[u]:
                    waiting[v] -= 1
                    if waiting[v] == 0:
                        heapq.heappush(heaps[queue[v]], (priority[v], v))


def _report(benchmark, label: str, nodes: int, **info) -> None:
    """Attach nodes/s at the median and best time to extra_info, and print them."""
    benchmark.extra_info.update(info, nodes=nodes, edges=len(GRAPH[1]))
    if benchmark.stats is None:  # --benchmark-disable: ran once, nothing measured
        return
    stats = benchmark.stats.stats
    median, best = nodes / stats.median / 1e6, nodes / stats.min / 1e6
    benchmark.extra_info.update({"M nodes/s median": round(median, 3), "M nodes/s best": round(best, 3)})
    print(f"\n{label}: {median:,.2f} M nodes/s median, {best:,.2f} best ({stats.median * 1e3:,.1f} ms median)")


def test_construct(benchmark):
    core = benchmark(SchedulerCore, *GRAPH)
    assert core.num_nodes == NODES
    _report(benchmark, "construct 170k nodes", NODES)


@pytest.mark.parametrize("batch", [64, 4096])
def test_drain(benchmark, batch):
    def setup():
        return (SchedulerCore(*GRAPH), batch), {}

    calls = benchmark.pedantic(drain, setup=setup, rounds=10, iterations=1)
    _report(benchmark, f"drain 170k nodes, pop batches of {batch}", NODES, batch=batch, pop_calls=calls)


def test_build_and_drain(benchmark):
    def build_and_drain():
        core = SchedulerCore(*GRAPH)
        drain(core, 1024)
        return core

    core = benchmark.pedantic(build_and_drain, rounds=10, iterations=1)
    assert (core.states() == SchedulerCore.DONE).all()
    _report(benchmark, "build + drain 170k nodes, pop batches of 1024", NODES, batch=1024)


def test_python_heapq_baseline(benchmark):
    benchmark.pedantic(python_drain, args=(*GRAPH, 1024), rounds=3, iterations=1)
    _report(benchmark, "plain-Python heapq build + drain, batches of 1024", NODES, batch=1024)
