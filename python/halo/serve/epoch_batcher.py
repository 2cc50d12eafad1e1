"""`EpochBatcher`: workflow rows arriving from many clients, buffered into epochs and run as batches.

Invariant: an epoch holds rows of one workflow; it closes `epoch_s` after its first row arrived or when
it holds `epoch_rows` rows; closed epochs run one at a time on the runner thread, oldest first (by
their first arrival, so no query starves), each as one `CompiledWorkflow.run` over all its rows, so
consolidation and prefix sharing apply across clients and a row's output equals `app.run` on its epoch.
"""

from __future__ import annotations

import itertools
import logging
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from halo.serve.metrics import Metrics
from halo.serve.run_store import RunRecord, RunStore

log = logging.getLogger("halo.serve")


class BatcherClosed(Exception):
    """The server is shutting down and takes no new rows."""


@dataclass
class Epoch:
    index: int
    workflow: str
    opened: float  # monotonic time of its first row
    records: list[RunRecord] = field(default_factory=list)


class EpochBatcher:
    """Buffers rows per workflow into epochs and runs them on one runner thread (see the module doc)."""

    def __init__(
        self,
        apps: Mapping[str, Any],
        store: RunStore,
        metrics: Metrics,
        *,
        epoch_s: float,
        epoch_rows: int,
        on_finished: Callable[[int], None] = lambda n: None,
    ) -> None:
        self.apps = dict(apps)
        self.store = store
        self.metrics = metrics
        self.epoch_s = epoch_s
        self.epoch_rows = epoch_rows
        self.on_finished = on_finished  # rows that left the system (frees admission slots)
        self._cond = threading.Condition()
        self._open: dict[str, Epoch] = {}
        self._ready: list[Epoch] = []
        self._running: Epoch | None = None
        self._closing = False
        self._indices = itertools.count()
        self._thread = threading.Thread(target=self._loop, name="halo-epoch-runner", daemon=True)

    # -- protocol: start / submit / close ---------------------------------------------------------

    def start(self) -> None:
        self._thread.start()

    def submit(self, workflow: str, records: list[RunRecord]) -> None:
        """Queue already validated run records of `workflow`; raises BatcherClosed after `close`."""
        with self._cond:
            if self._closing:
                raise BatcherClosed("the server is shutting down and accepts no new runs")
            for record in records:
                epoch = self._open.get(workflow)
                if epoch is None:
                    epoch = self._open[workflow] = Epoch(next(self._indices), workflow, time.monotonic())
                epoch.records.append(record)
                if len(epoch.records) >= self.epoch_rows:
                    self._ready.append(self._open.pop(workflow))
            self._cond.notify_all()

    def close(self, timeout: float | None = None) -> bool:
        """Take no new rows, run every buffered epoch to the end; False if `timeout` passed first."""
        with self._cond:
            self._closing = True
            self._ready.extend(self._open.values())
            self._open.clear()
            self._cond.notify_all()
        if self._thread.is_alive():
            self._thread.join(timeout)
        return not self._thread.is_alive()

    @property
    def buffered_rows(self) -> int:
        with self._cond:
            return sum(len(e.records) for e in self._open.values()) + sum(len(e.records) for e in self._ready)

    @property
    def running_rows(self) -> int:
        running = self._running
        return len(running.records) if running is not None else 0

    # -- the runner thread --------------------------------------------------------------------------

    def _loop(self) -> None:
        while True:
            with self._cond:
                epoch = self._next_epoch()
                if epoch is None:
                    return
                self._running = epoch
            try:
                self._run(epoch)
            finally:
                with self._cond:
                    self._running = None

    def _next_epoch(self) -> Epoch | None:
        """The oldest closed epoch, waiting for one to close; None once closing and nothing is left."""
        while True:
            now = time.monotonic()
            for name, epoch in list(self._open.items()):
                if now - epoch.opened >= self.epoch_s:
                    self._ready.append(self._open.pop(name))
            if self._ready:
                oldest = min(self._ready, key=lambda e: (e.opened, e.index))
                self._ready.remove(oldest)
                return oldest
            if self._closing and not self._open:
                return None
            deadlines = [e.opened + self.epoch_s for e in self._open.values()]
            self._cond.wait(max(0.0, min(deadlines) - now) if deadlines else None)

    def _run(self, epoch: Epoch) -> None:
        records = epoch.records
        self.store.mark_running(records, epoch.index)
        clock = time.perf_counter()
        stats = None
        failed = 0
        try:
            result = self.apps[epoch.workflow].run([r.row for r in records])
            stats = result.stats
            errors = {e.row: {"node": e.node, "message": e.message} for e in result.errors}
            for i, record in enumerate(records):
                failed += i in errors
                self.store.finish(record, result.outputs[i], errors.get(i))
        except Exception as exc:  # the whole epoch failed: every row says why, the server keeps going
            log.exception("epoch %d of %s failed", epoch.index, epoch.workflow)
            for record in records:
                if not record.done:
                    failed += 1
                    self.store.finish(record, None, {"node": "<epoch>", "message": f"{type(exc).__name__}: {exc}"})
        finally:
            self.metrics.observe_epoch(time.perf_counter() - clock, len(records) - failed, failed, stats)
            self.on_finished(len(records))
