"""The epoch policy: rows from concurrent submits share an epoch; an epoch closes by size or by age;
the oldest closed epoch runs first across workflows; closed epochs waiting for a runner merge."""

from __future__ import annotations

import time

from conftest import EchoApp
from halo.serve.epoch_batcher import EpochBatcher
from halo.serve.metrics import Metrics
from halo.serve.run_store import RunStore


def _until(predicate, what: str, timeout_s: float = 10.0) -> None:
    """Wait for a state of the batcher, not for an amount of time."""
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting until {what}"
        time.sleep(0.005)


def _batcher(apps, epoch_s=0.05, epoch_rows=256):
    store = RunStore()
    return EpochBatcher(apps, store, Metrics(), epoch_s=epoch_s, epoch_rows=epoch_rows), store


def test_submits_within_the_window_share_one_epoch_and_size_closes_early():
    echo = EchoApp()
    batcher, store = _batcher({"echo": echo}, epoch_s=0.2, epoch_rows=5)
    batcher.start()
    for i in range(3):
        batcher.submit("echo", store.create("echo", [{"x": i}]))  # three clients, one epoch
    clock = time.monotonic()
    batcher.submit("echo", store.create("echo", [{"x": i} for i in range(3, 10)]))  # fills it: closes at once
    assert batcher.close(10)
    assert [len(b) for b in echo.batches] == [5, 5]
    assert time.monotonic() - clock < 5


def test_epochs_start_oldest_first_and_a_held_epoch_does_not_block_newer_ones():
    first, second = EchoApp(), EchoApp()
    first.gate.clear()
    order: list[str] = []
    for name, app in (("a", first), ("b", second)):
        run = app.run
        app.run = lambda rows, run=run, name=name, **kw: (order.append(name), run(rows, **kw))[1]
    batcher, store = _batcher({"a": first, "b": second}, epoch_s=0.01)
    batcher.start()
    held = store.create("a", [{"x": 0}])
    batcher.submit("a", held)
    _until(lambda: held[0].status == "running", "a's epoch runs (held by the gate)")
    passing = store.create("b", [{"x": 1}])
    batcher.submit("b", passing)
    _until(lambda: passing[0].status != "queued", "b's epoch started")
    batcher.submit("a", store.create("a", [{"x": 2}]))
    _until(lambda: passing[0].done, "b's epoch is done")
    assert passing[0].status == "succeeded" and not held[0].done  # b overlapped a's epoch
    first.gate.set()
    assert batcher.close(10)
    assert order == ["a", "b", "a"]


def test_epochs_waiting_for_a_runner_merge_up_to_the_row_limit():
    echo = EchoApp()
    echo.gate.clear()
    batcher, store = _batcher({"echo": echo}, epoch_s=0.01)
    batcher.max_active, batcher.merge_rows = 1, 3
    batcher.start()
    records = store.create("echo", [{"x": 0}])
    batcher.submit("echo", records)
    _until(lambda: records[0].status == "running", "epoch 0 holds the only runner")
    for i in range(1, 5):  # four one-row epochs close while they wait
        batch = store.create("echo", [{"x": i}])
        records += batch
        batcher.submit("echo", batch)
        _until(lambda i=i: batcher.waiting_epochs == i, f"epoch {i} closed and waits")
    echo.gate.set()
    assert batcher.close(10)
    assert [[r["x"] for r in b] for b in echo.batches] == [[0], [1, 2, 3], [4]]  # oldest first, in arrival order
    assert [r.output for r in records] == [{"echo": str(i)} for i in range(5)]


def test_a_row_is_answered_when_it_is_done_not_when_its_epoch_is():
    echo = EchoApp()
    echo.tail_gate.clear()
    batcher, store = _batcher({"echo": echo}, epoch_s=0.01)
    batcher.start()
    first, second = records = store.create("echo", [{"x": "a"}, {"x": "b"}])
    batcher.submit("echo", records)
    _until(lambda: first.done, "the first row is answered")
    assert first.status == "succeeded" and first.output == {"echo": "a"}
    assert second.status == "running"  # its epoch is still going
    echo.tail_gate.set()
    assert batcher.close(10)
    assert second.output == {"echo": "b"}


def test_close_past_its_timeout_cancels_what_never_ended():
    echo = EchoApp()
    echo.gate.clear()
    batcher, store = _batcher({"echo": echo}, epoch_s=0.01)
    batcher.max_active = 1
    batcher.start()
    running = store.create("echo", [{"x": 0}])
    batcher.submit("echo", running)
    _until(lambda: running[0].status == "running", "the first epoch holds the only runner")
    waiting = store.create("echo", [{"x": 1}])
    batcher.submit("echo", waiting)
    assert batcher.close(0.2) is False
    batcher.cancel_unstarted(join_s=0.1)
    assert waiting[0].status == "cancelled" and "shutting down" in waiting[0].error["message"]
    echo.gate.set()


def test_an_epoch_that_fails_as_a_whole_runs_its_rows_apart_and_only_the_culprit_fails():
    echo = EchoApp()
    run = echo.run

    def fragile(rows, **kw):  # a failure of the whole batch, provoked by one row (not a row error)
        if any(r["x"] == "poison" for r in rows):
            raise RuntimeError("the batch broke")
        return run(rows, **kw)

    echo.run = fragile
    batcher, store = _batcher({"echo": echo}, epoch_s=0.2, epoch_rows=5)
    batcher.start()
    records = store.create("echo", [{"x": "a"}, {"x": "b"}, {"x": "poison"}, {"x": "c"}, {"x": "d"}])
    batcher.submit("echo", records)  # five rows: the epoch closes by size at once
    assert batcher.close(10)
    assert [r.status for r in records] == ["succeeded", "succeeded", "failed", "succeeded", "succeeded"]
    assert [r.output for r in records if r.output] == [{"echo": x} for x in "abcd"]
    assert records[2].error == {"node": "<epoch>", "message": "RuntimeError: the batch broke"}
