"""`OnlineSession`: one thread that owns the workers of every attached app and runs their batches together.

Runs arrive from any thread (`execute`, which blocks its caller until the run ends) and join one
`RunLoop`, ordered by age: a run's nodes enter the engines while older runs are still decoding, and
older runs always get a worker's room first. Whatever else must touch an engine (chat completions
sharing a workflow's engine, `GuestRequests`) crosses to the loop thread through `call_soon`;
`after_step` hooks run there after every iteration, `on_step_failure` hooks when a step fails outside
any one run. Invariant: only the session thread steps the engines of attached apps.

`close(grace_s)` takes no new runs, lets the runs in flight finish for up to `grace_s`, then cancels
what is left: each cancelled caller gets `RunCancelled` (nothing is lost silently).
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any

from halo.errors import HaloError
from halo.runtime.processor import Processor, ProcessorOutcome
from halo.runtime.run_loop import RunLoop

log = logging.getLogger("halo.runtime")
IDLE_POLL_S = 0.05


class RunCancelled(HaloError):
    """The run was cancelled before it finished (the session shut down)."""


class SessionClosed(RunCancelled):
    """The session is closing and takes no new runs."""


class OnlineSession:
    """The loop thread and its `RunLoop`; see the module doc for the protocol."""

    def __init__(self) -> None:
        self.loop = RunLoop(isolate=True)
        self._inbox: queue.Queue[Callable[[], None]] = queue.Queue()
        self._futures: dict[int, Future[ProcessorOutcome]] = {}  # owner -> its caller's future
        self._ages: dict[int, float] = {}
        self._hooks: list[Callable[[], None]] = []
        self._failure_hooks: list[Callable[[BaseException], None]] = []
        self._closing = False
        self._stop = False
        self._thread = threading.Thread(target=self._run, name="halo-online-session", daemon=True)

    # -- protocol: start / execute / call_soon / close --------------------------------------------------

    def start(self) -> None:
        self._thread.start()

    def execute(self, processor: Processor, arrived: float | None = None) -> ProcessorOutcome:
        """Run `processor` on the loop, aged by `arrived` (monotonic; default now); blocks until it ends.
        Raises RunCancelled if the session cancelled it, or what the run raised."""
        if self._closing:
            raise SessionClosed("the session is shutting down and takes no new runs")
        future: Future[ProcessorOutcome] = Future()
        age = time.monotonic() if arrived is None else arrived
        self.call_soon(lambda: self._add(processor, age, future))
        return future.result()

    def call_soon(self, command: Callable[[], None]) -> None:
        """Run `command` on the loop thread between two steps."""
        self._inbox.put(command)

    def after_step(self, hook: Callable[[], None]) -> None:
        """Call `hook` on the loop thread after every step (e.g. to stream new tokens)."""
        self.call_soon(lambda: self._hooks.append(hook))

    def on_step_failure(self, hook: Callable[[BaseException], None]) -> None:
        """Call `hook(exc)` on the loop thread when a step fails outside any one run (guest requests end)."""
        self.call_soon(lambda: self._failure_hooks.append(hook))

    def add_guest_worker(self, worker: Any) -> None:
        """Step `worker` even when no run is active: it holds guest requests (chat)."""
        self.call_soon(lambda: self.loop.guest_workers.append(worker))

    @property
    def runs_in_flight(self) -> int:
        return len(self._futures)

    def close(self, grace_s: float | None = None) -> bool:
        """Take no new runs; let those in flight finish for up to `grace_s` seconds, then cancel the rest
        and stop the thread. True if every run finished (none was cancelled)."""
        self._closing = True
        deadline = None if grace_s is None else time.monotonic() + grace_s
        while self._thread.is_alive() and (self._futures or not self._inbox.empty()):
            if deadline is not None and time.monotonic() >= deadline:
                break
            time.sleep(0.01)
        clean = not self._futures
        done = threading.Event()

        def cancel_all() -> None:
            for processor in list(reversed(self.loop.active)):
                self.loop.cancel(processor, RunCancelled("cancelled: the server is shutting down"))
                self._settle(processor)
            self._stop = True
            done.set()

        if self._thread.is_alive():
            self.call_soon(cancel_all)
            done.wait(30.0)
            self._thread.join(30.0)
        return clean

    # -- the loop thread ------------------------------------------------------------------------------------

    def _add(self, processor: Processor, age: float, future: Future[ProcessorOutcome]) -> None:
        self.loop.add(processor)
        self._futures[processor.owner] = future
        self._ages[processor.owner] = age
        # Oldest first: the loop hands out work in this order (a run planned late is still as old as it is).
        self.loop.active.sort(key=lambda p: self._ages.get(p.owner, age))

    def _settle(self, processor: Processor) -> None:
        future = self._futures.pop(processor.owner, None)
        self._ages.pop(processor.owner, None)
        if future is None:
            return
        if processor.error is not None:
            future.set_exception(processor.error)
        else:
            future.set_result(processor.out)

    def _drain(self, block: bool) -> None:
        try:
            command = self._inbox.get(timeout=IDLE_POLL_S) if block else self._inbox.get_nowait()
            while True:
                try:
                    command()
                except Exception:  # a bad command must not kill the thread every run depends on
                    log.exception("online session command failed")
                command = self._inbox.get_nowait()
        except queue.Empty:
            pass

    @property
    def idle(self) -> bool:
        """Nothing to step and no command waiting."""
        return not self.loop.busy and self._inbox.empty()

    def turn(self, block: bool = False) -> None:
        """One iteration of the loop on the calling thread: the waiting commands, then one step if anything
        is in flight. The session thread's body; a session that was never started is driven by calling
        this from one thread of its owner's (the per-call baseline's event loop), which then is the
        session thread of the invariant. `block` waits up to IDLE_POLL_S for a command when idle."""
        self._drain(block=block and not self.loop.busy)
        if self._stop or not self.loop.busy:
            return
        self._step()

    def _run(self) -> None:
        while not self._stop:
            self.turn(block=True)

    def _step(self) -> None:
        try:
            ended = self.loop.step()
        except Exception as exc:  # a worker failed outside any one run: end every run with it
            log.exception("online session step failed")
            ended = list(self.loop.active)
            for processor in ended:
                self.loop.cancel(processor, exc)
            for failed in self._failure_hooks:
                failed(exc)
        for processor in ended:
            self._settle(processor)
        for hook in self._hooks:
            try:
                hook()
            except Exception:
                log.exception("online session hook failed")
