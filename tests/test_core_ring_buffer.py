"""halo._core.RingBuffer: SPSC hand-off under concurrency (native and Python threads), zero-copy
slot views as torch tensors, timeouts, close semantics and protocol errors."""

from __future__ import annotations

import gc
import signal
import struct
import threading
import time

import numpy as np
import pytest
import torch
from halo._core import RingBuffer, RingBufferClosed, cuda_enabled, ring_buffer_stress


def address(buffer) -> int:
    """Address of the first byte of a buffer-protocol object (no copy is made)."""
    return np.frombuffer(buffer, dtype=np.uint8).ctypes.data


def run_in_thread(fn) -> tuple[threading.Thread, dict]:
    """Start fn in a daemon thread; its result or exception lands in the returned dict."""
    out: dict = {}

    def body():
        try:
            out["result"] = fn()
        except BaseException as e:  # handed to the test thread
            out["error"] = e

    t = threading.Thread(target=body, daemon=True)
    t.start()
    return t, out


# --- concurrency --------------------------------------------------------------------------------


def assert_clean(stats: dict, num_items: int) -> None:
    assert stats["sent"] == num_items
    assert stats["received"] == num_items, stats
    assert (stats["lost"], stats["duplicated"], stats["out_of_order"], stats["corrupted"]) == (0, 0, 0, 0), stats


def test_native_stress_millions_of_items_through_wraparound():
    stats = ring_buffer_stress(3_000_000, 64, 64)
    assert_clean(stats, 3_000_000)
    assert stats["items_per_second"] > 0
    assert stats["pinned"] is False or cuda_enabled()


@pytest.mark.parametrize(("num_items", "num_slots", "slot_bytes"), [
    (20_000, 1, 16),  # every item waits for the previous one: full and empty on each hand-off
    (200_000, 7, 100),  # slot count not a power of two, slot size not a multiple of 64
    (0, 4, 16),
])
def test_native_stress_edge_shapes(num_items, num_slots, slot_bytes):
    assert_clean(ring_buffer_stress(num_items, num_slots, slot_bytes), num_items)


def test_native_stress_rejects_bad_arguments():
    with pytest.raises(ValueError, match="slot_bytes must be >= 16"):
        ring_buffer_stress(10, 4, 8)
    with pytest.raises(ValueError, match="num_items must be >= 0"):
        ring_buffer_stress(-1, 4, 16)
    with pytest.raises(ValueError, match="num_slots must be >= 1"):
        ring_buffer_stress(10, 0, 16)


def item(seq: int) -> bytes:
    return struct.pack("<Q", seq) + bytes([seq % 251]) * (seq % 23)


def test_two_python_threads_push_pop_exact_sequence():
    n = 100_000
    # 64 slots: ~1,500 wraparounds, and few enough blocking hand-offs that the test stays fast
    # when other processes compete for the cores (each hand-off then costs a scheduler slice).
    rb = RingBuffer(64, 64)

    def produce():
        for seq in range(n):
            assert rb.push(item(seq))
        rb.close()

    producer, out = run_in_thread(produce)
    received = []
    while (data := rb.pop(timeout=30)) is not None:
        received.append(data)
    producer.join(timeout=30)
    assert "error" not in out, out.get("error")
    assert len(received) == n
    assert received == [item(seq) for seq in range(n)]
    assert rb.size == 0 and rb.closed


def test_blocked_pop_releases_the_gil_and_does_not_spin():
    rb = RingBuffer(2, 8)

    def wait_for_item():
        start = time.thread_time()
        data = rb.pop()
        return data, time.thread_time() - start

    consumer, out = run_in_thread(wait_for_item)
    # This thread keeps running Python while the consumer is blocked: the GIL is free.
    deadline = time.monotonic() + 0.3
    spins = 0
    while time.monotonic() < deadline:
        spins += 1
    rb.push(b"late")
    consumer.join(timeout=10)
    data, cpu_seconds = out["result"]
    assert data == b"late"
    assert spins > 10_000
    assert cpu_seconds < 0.1, f"a 0.3 s wait burned {cpu_seconds:.3f} s of CPU"


def test_blocked_pop_is_interruptible_by_signals():
    rb = RingBuffer(2, 8)

    class Interrupted(Exception):
        pass

    def handler(signum, frame):
        raise Interrupted

    previous = signal.signal(signal.SIGALRM, handler)
    try:
        signal.setitimer(signal.ITIMER_REAL, 0.1)
        start = time.monotonic()
        with pytest.raises(Interrupted):
            rb.pop()
        assert time.monotonic() - start < 2
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


# --- zero-copy slots and torch --------------------------------------------------------------------


def test_slot_protocol_round_trip():
    rb = RingBuffer(3, 10)
    assert (rb.num_slots, rb.slot_bytes, rb.size, rb.closed) == (3, 10, 0, False)
    for expected_slot in [0, 1, 2, 0, 1]:  # wraps around
        i = rb.acquire_write()
        assert i == expected_slot
        view = rb.slot(i)
        assert len(view) == 10 and not view.readonly
        view[:5] = b"hello"
        rb.commit_write(5)
        assert rb.size == 1
        j = rb.acquire_read()
        assert j == i
        assert rb.slot_nbytes(j) == 5
        assert bytes(rb.slot(j)[: rb.slot_nbytes(j)]) == b"hello"
        rb.release_read()
        assert rb.size == 0


def test_slots_are_aligned_views_into_one_allocation():
    rb = RingBuffer(5, 100)
    assert rb.slot_stride == 128
    base = address(rb)
    assert base % 4096 == 0
    assert len(memoryview(rb)) == 5 * rb.slot_stride
    for i in range(5):
        assert address(rb.slot(i)) == base + i * rb.slot_stride
    if not cuda_enabled():
        assert rb.pinned is False


def test_torch_tensors_through_slots_without_copies():
    numel = 1024
    rb = RingBuffer(4, numel * 4)
    gen = torch.Generator().manual_seed(0)
    for _ in range(10):  # more items than slots: slots are reused
        src = torch.randn(numel, generator=gen)
        i = rb.acquire_write()
        view = rb.slot(i)
        slot_tensor = torch.frombuffer(view, dtype=torch.float32)
        assert slot_tensor.data_ptr() == address(view)  # the tensor is the slot's memory
        slot_tensor.copy_(src)
        rb.commit_write(slot_tensor.nbytes)

        j = rb.acquire_read()
        received = torch.frombuffer(rb.slot(j), dtype=torch.float32)[: rb.slot_nbytes(j) // 4]
        assert received.data_ptr() == slot_tensor.data_ptr()
        assert torch.equal(received, src)
        rb.release_read()


def test_torch_tensors_between_threads():
    shape, count = (16, 64), 200
    rb = RingBuffer(3, 16 * 64 * 4)
    expected = [torch.full(shape, float(k)) + torch.arange(64.0) for k in range(count)]

    def produce():
        for tensor in expected:
            i = rb.acquire_write(timeout=30)
            torch.frombuffer(rb.slot(i), dtype=torch.float32).view(shape).copy_(tensor)
            rb.commit_write(tensor.nbytes)
        rb.close()

    producer, out = run_in_thread(produce)
    received = []
    while (j := rb.acquire_read(timeout=30)) >= 0:
        received.append(torch.frombuffer(rb.slot(j), dtype=torch.float32).view(shape).clone())
        rb.release_read()
    producer.join(timeout=30)
    assert "error" not in out, out.get("error")
    assert len(received) == count
    assert all(torch.equal(a, b) for a, b in zip(received, expected, strict=True))


def test_slot_views_keep_the_buffer_alive():
    view = RingBuffer(2, 16).slot(1)
    tensor = torch.frombuffer(RingBuffer(2, 16).slot(0), dtype=torch.uint8)
    gc.collect()
    view[:] = b"x" * 16
    tensor.fill_(7)
    assert bytes(view) == b"x" * 16 and int(tensor.sum()) == 7 * 16


def test_push_accepts_bytes_like_objects():
    rb = RingBuffer(4, 32)
    rb.push(bytearray(b"abc"))
    rb.push(memoryview(b"defg"))
    rb.push(np.arange(4, dtype=np.int32))
    rb.push(b"")
    assert rb.pop() == b"abc"
    assert rb.pop() == b"defg"
    assert np.array_equal(np.frombuffer(rb.pop(), dtype=np.int32), np.arange(4))
    assert rb.pop(timeout=0) == b""


def test_cancel_gives_the_slot_back():
    rb = RingBuffer(2, 8)
    i = rb.acquire_write()
    rb.cancel_write()
    assert rb.size == 0 and rb.acquire_write() == i
    rb.slot(i)[:2] = b"ok"
    rb.commit_write(2)
    assert rb.acquire_read() == i
    rb.cancel_read()
    assert rb.size == 1
    assert rb.pop() == b"ok"


# --- timeouts ---------------------------------------------------------------------------------------


def test_empty_buffer_times_out():
    rb = RingBuffer(2, 8)
    assert rb.try_pop() is None
    assert rb.pop(timeout=0) is None
    assert rb.acquire_read(timeout=0) == -1
    start = time.monotonic()
    assert rb.pop(timeout=0.05) is None
    assert rb.acquire_read(timeout=0.05) == -1
    elapsed = time.monotonic() - start
    assert 0.09 <= elapsed < 2


def test_full_buffer_times_out():
    rb = RingBuffer(2, 8)
    assert rb.try_push(b"a") and rb.push(b"b", timeout=0)
    assert rb.size == 2
    assert rb.try_push(b"c") is False
    start = time.monotonic()
    assert rb.push(b"c", timeout=0.05) is False
    assert rb.acquire_write(timeout=0.05) == -1
    assert 0.09 <= time.monotonic() - start < 2
    assert [rb.pop(), rb.pop()] == [b"a", b"b"]  # nothing was half-written


def test_blocked_producer_resumes_when_consumer_frees_a_slot():
    rb = RingBuffer(1, 8)
    rb.push(b"first")
    producer, out = run_in_thread(lambda: rb.push(b"second", timeout=10))
    time.sleep(0.05)
    assert rb.pop() == b"first"
    producer.join(timeout=10)
    assert out["result"] is True
    assert rb.pop(timeout=10) == b"second"


@pytest.mark.parametrize("bad", [-0.5, float("nan")])
def test_bad_timeouts_are_rejected(bad):
    rb = RingBuffer(1, 8)
    with pytest.raises(ValueError, match="timeout must be None or >= 0"):
        rb.pop(timeout=bad)
    with pytest.raises(ValueError, match="timeout must be None or >= 0"):
        rb.acquire_write(timeout=bad)


def test_infinite_timeout_means_wait_for_ever():
    rb = RingBuffer(1, 8)
    rb.push(b"x", timeout=float("inf"))
    assert rb.pop(timeout=float("inf")) == b"x"


# --- close ------------------------------------------------------------------------------------------


def test_close_drains_remaining_items_then_reports_the_end():
    rb = RingBuffer(4, 8)
    for data in (b"1", b"2", b"3"):
        rb.push(data)
    rb.close()
    rb.close()  # idempotent
    assert rb.closed
    assert [rb.pop(), rb.try_pop(), rb.pop(timeout=1)] == [b"1", b"2", b"3"]
    assert rb.pop() is None  # would block for ever on an open buffer
    assert rb.acquire_read() == -1
    assert rb.try_pop() is None


def test_writes_to_a_closed_buffer_raise():
    rb = RingBuffer(2, 8)
    rb.close()
    assert issubclass(RingBufferClosed, RuntimeError)
    with pytest.raises(RingBufferClosed, match="closed"):
        rb.push(b"x")
    with pytest.raises(RingBufferClosed):
        rb.try_push(b"x")
    with pytest.raises(RingBufferClosed):
        rb.acquire_write(timeout=0)


def test_close_discards_a_write_acquired_before_it():
    rb = RingBuffer(2, 8)
    i = rb.acquire_write()
    rb.slot(i)[:1] = b"z"
    rb.close()
    with pytest.raises(RingBufferClosed, match="discarded"):
        rb.commit_write(1)
    assert rb.pop() is None
    with pytest.raises(RuntimeError, match="commit_write without"):  # the slot was given up
        rb.commit_write(1)


def test_close_wakes_a_blocked_consumer():
    rb = RingBuffer(2, 8)
    consumer, out = run_in_thread(rb.pop)
    time.sleep(0.05)
    assert consumer.is_alive()
    rb.close()
    consumer.join(timeout=5)
    assert not consumer.is_alive()
    assert out == {"result": None}


def test_close_wakes_a_blocked_producer_with_an_error():
    rb = RingBuffer(1, 8)
    rb.push(b"full")
    producer, out = run_in_thread(lambda: rb.push(b"blocked"))
    time.sleep(0.05)
    assert producer.is_alive()
    rb.close()
    producer.join(timeout=5)
    assert isinstance(out.get("error"), RingBufferClosed)
    assert rb.pop() == b"full" and rb.pop() is None


# --- errors -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(("args", "message"), [
    ((0, 8), "num_slots must be >= 1, got 0"),
    ((-3, 8), "num_slots must be >= 1, got -3"),
    ((4, 0), "slot_bytes must be >= 1, got 0"),
    ((2**40, 2**40), "too large"),
])
def test_bad_constructor_arguments(args, message):
    with pytest.raises(ValueError, match=message):
        RingBuffer(*args)


def test_impossible_size_is_a_memory_error():
    with pytest.raises(MemoryError, match="cannot map"):
        RingBuffer(2**20, 2**40)  # 1 EiB, beyond any address space: refused by mmap


def test_oversized_push_is_a_value_error():
    rb = RingBuffer(2, 8)
    with pytest.raises(ValueError, match="9 bytes do not fit in a 8-byte slot"):
        rb.push(b"123456789")
    with pytest.raises(ValueError, match="do not fit"):
        rb.try_push(b"123456789")
    assert rb.size == 0


def test_non_buffers_and_strided_buffers_are_rejected():
    rb = RingBuffer(2, 8)
    with pytest.raises(TypeError):
        rb.push("text is not bytes")
    with pytest.raises(BufferError):
        rb.push(memoryview(b"abcdef")[::2])


def test_protocol_misuse_raises_clear_errors():
    rb = RingBuffer(2, 8)
    with pytest.raises(RuntimeError, match="commit_write without a successful acquire_write"):
        rb.commit_write(1)
    with pytest.raises(RuntimeError, match="release_read without a successful acquire_read"):
        rb.release_read()
    with pytest.raises(RuntimeError, match="cancel_write without"):
        rb.cancel_write()
    rb.acquire_write()
    with pytest.raises(RuntimeError, match="already acquired"):
        rb.acquire_write()
    with pytest.raises(ValueError, match=r"nbytes must be in \[0, 8\], got 9"):
        rb.commit_write(9)
    with pytest.raises(ValueError, match="got -1"):
        rb.commit_write(-1)
    rb.commit_write(8)  # the slot is still held after the rejected commits
    rb.acquire_read()
    with pytest.raises(RuntimeError, match="already acquired"):
        rb.acquire_read()
    rb.release_read()


@pytest.mark.parametrize("index", [-1, 2, 100])
def test_slot_index_out_of_range(index):
    rb = RingBuffer(2, 8)
    with pytest.raises(IndexError, match=rf"slot index {index} out of range \[0, 2\)"):
        rb.slot(index)
    with pytest.raises(IndexError, match="out of range"):
        rb.slot_nbytes(index)


def test_cuda_entry_points_match_the_build():
    assert isinstance(cuda_enabled(), bool)
    import halo._core as core

    # KV blocks move on a GPU through the Triton kernel (halo.kernels.copy_blocks); the core has no copy of its own.
    assert not hasattr(core, "cuda_copy_blocks")
