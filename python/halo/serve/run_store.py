"""The store of workflow run records (`run_record.py`) and the async waiters that watch them.

A record changes state on an epoch runner thread (queued → running → succeeded | failed | cancelled) and
is read by request handlers on the event loop. `cancelled` is the end of a run the server stopped at
shutdown (its error says whether a restart with the same journal resumes it). With a `RunJournal`,
every admitted row and every end is recorded, so a restarted server answers for them. Every change
bumps `version` and wakes the waiters through their own loop (`call_soon_threadsafe`), so waiting
costs no thread per client.
"""

from __future__ import annotations

import asyncio
import threading
import time
import uuid
from collections import OrderedDict
from typing import Any

from halo.runtime.json_values import json_safe
from halo.serve.run_journal import RunJournal
from halo.serve.run_record import RunRecord


class RunStore:
    """Run records by id; finished ones beyond `max_finished` are dropped oldest first."""

    def __init__(self, max_finished: int = 100_000, journal: RunJournal | None = None) -> None:
        self._lock = threading.Lock()
        self._runs: dict[str, RunRecord] = {}
        self._finished: OrderedDict[str, None] = OrderedDict()
        self._max_finished = max_finished
        self.journal = journal

    def create(self, workflow: str, rows: list[dict[str, Any]]) -> list[RunRecord]:
        records = [RunRecord(f"run-{uuid.uuid4().hex}", workflow, row) for row in rows]
        with self._lock:
            for record in records:
                self._runs[record.id] = record
        if self.journal is not None:
            self.journal.admitted(records)
        return records

    def restore(self, record: RunRecord) -> None:
        """Take back a record a journal kept (finished, or admitted and to be run again)."""
        with self._lock:
            self._runs[record.id] = record
            if record.done:
                self._finished[record.id] = None

    def get(self, run_id: str) -> RunRecord | None:
        with self._lock:
            return self._runs.get(run_id)

    def mark_running(self, records: list[RunRecord], epoch: int) -> None:
        now = time.time()
        for record in records:
            self._change(record, status="running", epoch=epoch, started=now)

    def finish(self, record: RunRecord, output: dict[str, Any] | None, error: dict[str, str] | None) -> None:
        # Stored as plain JSON values (NaN and ±Infinity as null, as `halo run` writes them): every
        # reader — the run's JSON, its events, the journal — then writes valid JSON.
        self._change(
            record,
            status="failed" if error else "succeeded",
            output=json_safe(output),
            error=error,
            finished=time.time(),
        )
        if self.journal is not None:
            self.journal.ended(record)
        self._forget_old(record)

    def cancel(self, record: RunRecord, message: str, *, resumable: bool) -> None:
        """End a run the server stops at shutdown; a `resumable` one stays unfinished in the journal."""
        self._change(record, status="cancelled", error={"node": "<server>", "message": message}, finished=time.time())
        if self.journal is not None and not resumable:
            self.journal.ended(record)
        self._forget_old(record)

    def _forget_old(self, record: RunRecord) -> None:
        with self._lock:
            self._finished[record.id] = None
            while len(self._finished) > self._max_finished:
                old, _ = self._finished.popitem(last=False)
                self._runs.pop(old, None)

    def _change(self, record: RunRecord, **fields: Any) -> None:
        with self._lock:
            for name, value in fields.items():
                setattr(record, name, value)
            record.version += 1
            waiters, record._waiters = record._waiters, []
        for loop, future in waiters:
            loop.call_soon_threadsafe(_resolve, future)

    async def wait_change(self, record: RunRecord, seen_version: int, timeout: float) -> bool:
        """Wait until `record.version` differs from `seen_version`; False if `timeout` passed first."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[None] = loop.create_future()
        with self._lock:
            if record.version != seen_version:
                return True
            record._waiters.append((loop, future))
        try:
            await asyncio.wait_for(future, timeout)
        except TimeoutError:
            return False
        return True

    async def wait_done(self, record: RunRecord, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while not record.done:
            left = deadline - time.monotonic()
            if left <= 0 or not await self.wait_change(record, record.version, left):
                return record.done
        return True


def _resolve(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)
