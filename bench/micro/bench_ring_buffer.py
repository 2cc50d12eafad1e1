"""Micro-benchmarks of halo._core.RingBuffer: item rate of push/pop round trips (Python and the
native two-thread stress) and bandwidth of slot-sized torch tensor transfers through slot views.

Run: ``.venv/bin/python -m pytest bench/micro/bench_ring_buffer.py -s`` (``-s`` shows the items/s
and GB/s lines; they are also in ``extra_info`` of ``--benchmark-json``). GB/s counts payload bytes
through the buffer once; each transfer reads and writes them twice (into the slot, out of it).
Medians and bests, not means: the 2-core machines are shared and the mean swings.
"""

from __future__ import annotations

import threading

import pytest
import torch
from halo._core import RingBuffer, ring_buffer_stress


def _report(benchmark, label: str, per_call: float, unit: str, scale: float = 1.0, **info) -> None:
    """Attach per_call/median-time and per_call/best-time (in unit) to extra_info, and print them."""
    benchmark.extra_info.update(info, cpu_capability=torch.backends.cpu.get_cpu_capability())
    if benchmark.stats is None:  # --benchmark-disable: ran once, nothing measured
        return
    stats = benchmark.stats.stats
    median, best = per_call / stats.median / scale, per_call / stats.min / scale
    benchmark.extra_info.update({f"{unit} median": round(median, 3), f"{unit} best": round(best, 3)})
    print(f"\n{label}: {median:,.3f} {unit} median, {best:,.3f} best")


@pytest.mark.parametrize("payload", [16, 4096])
def test_push_pop_round_trip(benchmark, payload):
    """One Python thread: push then pop, the per-item cost of the copying API."""
    items = 2000
    rb = RingBuffer(64, payload)
    data = bytes(payload)

    def round_trips():
        for _ in range(items):
            rb.push(data)
            rb.pop()

    benchmark(round_trips)
    _report(benchmark, f"push/pop round trip, {payload} B", items, "M items/s", 1e6, payload=payload,
            pinned=rb.pinned)


def test_two_python_threads(benchmark):
    """A producer thread pushing and the calling thread popping: hand-off cost with the GIL."""
    items = 20_000
    rb = RingBuffer(64, 64)
    data = bytes(64)

    def transfer():
        def produce():
            for _ in range(items):
                rb.push(data)

        producer = threading.Thread(target=produce)
        producer.start()
        for _ in range(items):
            rb.pop()
        producer.join()

    benchmark.pedantic(transfer, rounds=5, iterations=1)
    _report(benchmark, "two Python threads push/pop", items, "M items/s", 1e6, pinned=rb.pinned)


def test_native_two_thread_stress(benchmark):
    """C++ producer and consumer threads: the buffer's own hand-off rate, no Python per item."""
    items = 500_000
    result = benchmark.pedantic(ring_buffer_stress, args=(items, 64, 64), rounds=5, iterations=1)
    assert result["received"] == items and result["lost"] == 0
    _report(benchmark, "native stress, 64 slots x 64 B", items, "M items/s", 1e6, pinned=result["pinned"])


@pytest.mark.parametrize("slot_bytes", [64 * 1024, 1024 * 1024])
def test_tensor_slot_transfer(benchmark, slot_bytes):
    """Slot-sized float32 tensors in and out through zero-copy slot views (the KV swap pattern)."""
    num_slots, transfers = 4, 16
    rb = RingBuffer(num_slots, slot_bytes)
    slots = [torch.frombuffer(rb.slot(i), dtype=torch.float32) for i in range(num_slots)]  # made once
    src = torch.randn(slot_bytes // 4)
    dst = torch.empty_like(src)

    def transfer():
        for _ in range(transfers):
            i = rb.acquire_write()
            slots[i].copy_(src)
            rb.commit_write(src.nbytes)
            j = rb.acquire_read()
            dst.copy_(slots[j])
            rb.release_read()

    benchmark(transfer)
    assert torch.equal(dst, src)
    _report(benchmark, f"tensor transfer, {slot_bytes // 1024} KiB slots", transfers * slot_bytes, "GB/s", 1e9,
            slot_bytes=slot_bytes, pinned=rb.pinned)
