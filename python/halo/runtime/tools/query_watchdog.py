"""`QueryWatchdog`: cancels DuckDB queries that run past their deadline, from one timer thread per database.

DuckDB has no statement timeout; a query is stopped by `interrupt()` on the cursor running it, which
leaves the instance's other cursors (other tool threads' queries) running. Two facts of DuckDB 1.5
shape the protocol:

- An interrupt reaches only a query already running: starting a query clears the flag, so one sent
  while the cursor is still preparing is lost. So past its deadline a query is interrupted again
  every `REPEAT_S` until its caller leaves `deadline()`.
- The next query on the same cursor must not be hit by an interrupt meant for the last one: the
  watchdog interrupts only while holding the lock under which `deadline()` releases the cursor.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass

import duckdb

REPEAT_S = 0.05  # how often an expired query is interrupted again until it stops


@dataclass(eq=False)
class Deadline:
    """One query's deadline; `expired` is set (before its first interrupt) once it has passed."""

    cursor: duckdb.DuckDBPyConnection
    at: float  # time.monotonic()
    expired: bool = False


class QueryWatchdog:
    """Armed deadlines of the queries in flight on one database; thread-safe; `close` stops its thread."""

    def __init__(self) -> None:
        self._wake = threading.Condition()
        self._armed: set[Deadline] = set()
        self._next_wake = float("inf")  # when the watch thread wakes next on its own
        self._thread: threading.Thread | None = None
        self._closed = False

    @contextmanager
    def deadline(self, cursor: duckdb.DuckDBPyConnection, timeout_s: float) -> Iterator[Deadline]:
        """Interrupt `cursor` if the block is still running `timeout_s` from now; read `expired` after."""
        deadline = Deadline(cursor, time.monotonic() + timeout_s)
        with self._wake:
            if self._closed:
                raise RuntimeError("the query watchdog is closed")
            self._armed.add(deadline)
            if self._thread is None:
                self._thread = threading.Thread(target=self._watch, name="halo-duckdb-watchdog", daemon=True)
                self._thread.start()
            if deadline.at < self._next_wake:  # otherwise the thread wakes in time anyway: no switch per query
                self._wake.notify()
        try:
            yield deadline
        finally:
            with self._wake:
                self._armed.discard(deadline)

    def close(self) -> None:
        with self._wake:
            self._closed = True
            self._wake.notify()
            thread = self._thread
        if thread is not None:
            thread.join()

    def _watch(self) -> None:
        with self._wake:
            while not self._closed:
                now = time.monotonic()
                for deadline in self._armed:
                    if deadline.at <= now:
                        deadline.expired = True
                        with suppress(duckdb.Error):  # its database closed under it: nothing left to stop
                            deadline.cursor.interrupt()
                waits = [REPEAT_S if deadline.expired else deadline.at - now for deadline in self._armed]
                self._next_wake = now + min(waits) if waits else float("inf")
                self._wake.wait(min(waits) if waits else None)
