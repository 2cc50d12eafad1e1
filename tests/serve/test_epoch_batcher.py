"""The epoch policy: rows from concurrent submits share an epoch; an epoch closes by size or by age;
the oldest closed epoch runs first across workflows."""

from __future__ import annotations

import time

from conftest import EchoApp
from halo.serve.epoch_batcher import EpochBatcher
from halo.serve.metrics import Metrics
from halo.serve.run_store import RunStore


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


def test_oldest_epoch_runs_first_across_workflows():
    first, second = EchoApp(), EchoApp()
    first.gate.clear()
    order: list[str] = []
    for name, app in (("a", first), ("b", second)):
        run = app.run
        app.run = lambda rows, run=run, name=name: (order.append(name), run(rows))[1]
    batcher, store = _batcher({"a": first, "b": second}, epoch_s=0.01)
    batcher.start()
    batcher.submit("a", store.create("a", [{"x": 0}]))
    time.sleep(0.1)  # a's epoch is running (held by the gate)
    batcher.submit("b", store.create("b", [{"x": 1}]))
    time.sleep(0.05)
    batcher.submit("a", store.create("a", [{"x": 2}]))
    time.sleep(0.05)
    first.gate.set()
    assert batcher.close(10)
    assert order == ["a", "b", "a"]
