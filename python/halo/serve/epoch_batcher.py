"""`EpochBatcher`: workflow rows arriving from many clients, buffered into epochs and run as batches.

Invariant: an epoch holds rows of one workflow; it closes `epoch_s` after its first row arrived or when
it holds `epoch_rows` rows; closed epochs start oldest first (by their first arrival) on up to
`max_active` runner threads, each as one `CompiledWorkflow.run` over all its rows, so consolidation
and prefix sharing apply across clients and a row's output equals `app.run` on its epoch. Closed
epochs of one workflow that wait for a runner merge when it frees (up to `merge_rows`): the busier
the server, the larger its epochs, instead of a queue of one-row epochs. A row is answered as soon
as its own nodes are done, not when its whole epoch is. Epochs
overlap: an app attached to the server's `OnlineSession` runs its epochs on the session's one loop,
where a newer epoch's nodes join the engine batch while older epochs decode, and older epochs get a
worker's room first (no query starves).

Shutdown (`close`): no new rows (`admit` refuses them before they are recorded or journaled, under the
lock that closes, so a refused row never runs, here or after a restart); buffered epochs still start;
at the deadline whatever has not ended is cancelled by whoever owns the session, and `cancel_unstarted`
ends epochs that never started, so every admitted row ends in a state a client can read (succeeded,
failed or cancelled).
"""

from __future__ import annotations

import itertools
import logging
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from halo.runtime.online_session import RunCancelled
from halo.serve.metrics import Metrics
from halo.serve.run_record import RunRecord
from halo.serve.run_store import RunStore

log = logging.getLogger("halo.serve")


class BatcherClosed(Exception):
    """The server is shutting down and takes no new rows."""


@dataclass
class ArrivalBatch:
    """The rows of one workflow that arrived within one epoch window, run as one batch. (Not the plan's
    `Epoch`, a step of an execution plan: this one is a window of arrivals.)"""

    index: int
    workflow: str
    opened: float  # monotonic time of its first row
    records: list[RunRecord] = field(default_factory=list)


class EpochBatcher:
    """Buffers rows per workflow into epochs and runs them on runner threads (see the module doc)."""

    def __init__(
        self,
        apps: Mapping[str, Any],
        store: RunStore,
        metrics: Metrics,
        *,
        epoch_s: float,
        epoch_rows: int,
        max_active: int = 8,
        merge_rows: int = 64,
        on_finished: Callable[[int], None] = lambda n: None,
        cancel_message: str = "cancelled: the server is shutting down",
        resumable: bool = False,
    ) -> None:
        self.apps = dict(apps)
        self.store = store
        self.metrics = metrics
        self.epoch_s = epoch_s
        self.epoch_rows = epoch_rows
        self.max_active = max_active
        self.merge_rows = merge_rows
        self.on_finished = on_finished  # rows that left the system (frees admission slots)
        self.cancel_message = cancel_message
        self.resumable = resumable  # a journal keeps cancelled rows for the next server
        self._cond = threading.Condition()
        self._open: dict[str, ArrivalBatch] = {}
        self._ready: list[ArrivalBatch] = []
        self._running: list[ArrivalBatch] = []
        self._closing = False
        self._indices = itertools.count()
        self._thread = threading.Thread(target=self._loop, name="halo-epoch-dispatcher", daemon=True)
        self._runners: list[threading.Thread] = []

    # -- protocol: start / admit / submit / close / cancel_unstarted --------------------------------

    def start(self) -> None:
        self._thread.start()

    def admit(self, workflow: str, rows: list[dict[str, Any]]) -> list[RunRecord]:
        """Record (and journal) validated rows of `workflow` as runs and queue them, as one step: raises
        BatcherClosed, having recorded nothing, once `close` began."""
        with self._cond:
            if self._closing:
                raise BatcherClosed("the server is shutting down and accepts no new runs")
            records = self.store.create(workflow, rows)
            self._queue(workflow, records)
        return records

    def submit(self, workflow: str, records: list[RunRecord]) -> None:
        """Queue run records that already exist (a journal's, to run again); raises BatcherClosed after `close`."""
        with self._cond:
            if self._closing:
                raise BatcherClosed("the server is shutting down and accepts no new runs")
            self._queue(workflow, records)

    def _queue(self, workflow: str, records: list[RunRecord]) -> None:
        """Put records into `workflow`'s open epoch (the caller holds the lock)."""
        for record in records:
            epoch = self._open.get(workflow)
            if epoch is None:
                epoch = self._open[workflow] = ArrivalBatch(next(self._indices), workflow, time.monotonic())
            epoch.records.append(record)
            if len(epoch.records) >= self.epoch_rows:
                self._ready.append(self._open.pop(workflow))
        self._cond.notify_all()

    def close(self, timeout: float | None = None) -> bool:
        """Take no new rows, close every open epoch and wait for all epochs to end; False if `timeout`
        passed first (the caller then cancels the runs in flight and calls `cancel_unstarted`)."""
        with self._cond:
            self._closing = True
            self._ready.extend(self._open.values())
            self._open.clear()
            self._cond.notify_all()
            deadline = None if timeout is None else time.monotonic() + timeout
            while self._ready or self._running:
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    return False
                self._cond.wait(left)
        return True

    def cancel_unstarted(self, join_s: float = 30.0) -> None:
        """End every epoch that never started as cancelled, then wait for the runners to settle theirs."""
        with self._cond:
            unstarted, self._ready = self._ready, []
            self._cond.notify_all()
        for epoch in unstarted:
            self._cancel(epoch)
        deadline = time.monotonic() + join_s
        for runner in list(self._runners):
            runner.join(max(0.0, deadline - time.monotonic()))
        self._thread.join(max(0.0, deadline - time.monotonic()))

    @property
    def buffered_rows(self) -> int:
        with self._cond:
            return sum(len(e.records) for e in self._open.values()) + sum(len(e.records) for e in self._ready)

    @property
    def waiting_epochs(self) -> int:
        """Closed epochs waiting for a runner (they merge when one frees)."""
        with self._cond:
            return len(self._ready)

    @property
    def running_rows(self) -> int:
        with self._cond:
            return sum(len(e.records) for e in self._running)

    # -- the dispatcher thread and its runners -------------------------------------------------------

    def _loop(self) -> None:
        while True:
            with self._cond:
                epoch = self._next_epoch()
                if epoch is None:
                    return
                self._running.append(epoch)
                runner = threading.Thread(
                    target=self._run, args=(epoch,), name=f"halo-epoch-{epoch.index}", daemon=True
                )
                self._runners = [r for r in self._runners if r.is_alive()] + [runner]
            runner.start()

    def _next_epoch(self) -> ArrivalBatch | None:
        """The oldest closed epoch once a runner is free; None once closing and nothing is left."""
        while True:
            now = time.monotonic()
            for name, epoch in list(self._open.items()):
                if now - epoch.opened >= self.epoch_s:
                    self._ready.append(self._open.pop(name))
            if self._ready and len(self._running) < self.max_active:
                oldest = min(self._ready, key=lambda e: (e.opened, e.index))
                self._ready.remove(oldest)
                self._absorb(oldest)
                return oldest
            if self._closing and not self._open and not self._ready:
                return None
            deadlines = [e.opened + self.epoch_s for e in self._open.values()]
            self._cond.wait(max(0.0, min(deadlines) - now) if deadlines else None)

    def _absorb(self, epoch: ArrivalBatch) -> None:
        """Merge into `epoch` the later closed epochs of its workflow that waited for a runner, while it
        holds at most `merge_rows` (and `epoch_rows`) rows: under load, epochs grow instead of
        queueing, so the engines get more rows to batch and consolidate at once. The cap keeps epochs a
        size the engines finish in turn (oldest first), so answers keep flowing, not in one late burst."""
        limit = min(self.merge_rows, self.epoch_rows)
        for other in sorted(self._ready, key=lambda e: (e.opened, e.index)):
            if other.workflow == epoch.workflow and len(epoch.records) + len(other.records) <= limit:
                self._ready.remove(other)
                epoch.records.extend(other.records)

    def _run(self, epoch: ArrivalBatch) -> None:
        records = epoch.records
        self.store.mark_running(records, epoch.index)
        clock = time.perf_counter()
        stats = None
        failed = 0
        released = 0
        app = self.apps[epoch.workflow]

        def finish(record: RunRecord, outputs: dict[str, Any] | None, error: dict[str, str] | None) -> None:
            # A row is answered (and its admission slot freed) as soon as it is done, not when its epoch is.
            nonlocal failed, released
            if record.done:
                return
            failed += error is not None
            self.store.finish(record, outputs, error)
            released += 1
            self.on_finished(1)

        def run(part: list[RunRecord]) -> Any:
            def row_done(index: int, outputs: dict[str, Any], error: Any) -> None:
                finish(part[index], outputs, None if error is None else {"node": error.node, "message": error.message})

            result = app.run([r.row for r in part], on_row=row_done)
            errors = {e.row: e for e in result.errors}
            for i in range(len(part)):
                row_done(i, result.outputs[i], errors.get(i))
            return result.stats

        def isolate(part: list[RunRecord], exc: Exception) -> None:
            """A run failed as a whole (not one row's error: those are rows' own): halve what is left and
            run each half alone, so a failure that one client's row provokes ends up on that row only."""
            left = [r for r in part if not r.done]
            if not left:
                return
            if len(left) == 1:
                finish(left[0], None, {"node": "<epoch>", "message": f"{type(exc).__name__}: {exc}"})
                return
            for half in (left[: len(left) // 2], left[len(left) // 2 :]):
                try:
                    run(half)
                except RunCancelled:
                    raise
                except Exception as again:
                    isolate(half, again)

        try:
            try:
                stats = run(records)
            except RunCancelled:
                raise
            except Exception as exc:  # the server keeps going; rows that can run still do
                log.exception("epoch %d of %s failed; running its rows apart", epoch.index, epoch.workflow)
                isolate(records, exc)
        except RunCancelled:
            log.warning("epoch %d of %s cancelled at shutdown (%d rows)", epoch.index, epoch.workflow, len(records))
            failed += sum(1 for r in records if not r.done)
            self._cancel(epoch, count=False)
        finally:
            self.metrics.observe_epoch(time.perf_counter() - clock, len(records) - failed, failed, stats)
            with self._cond:
                self._running.remove(epoch)
                self._cond.notify_all()
            self.on_finished(len(records) - released)

    def _cancel(self, epoch: ArrivalBatch, *, count: bool = True) -> None:
        for record in epoch.records:
            if not record.done:
                self.store.cancel(record, self.cancel_message, resumable=self.resumable)
        if count:
            self.on_finished(len(epoch.records))
