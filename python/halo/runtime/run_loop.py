"""`RunLoop`: drives one or several Processors over shared workers, one iteration per `step`.

Invariant: older runs come first. Each step hands out ready work run by run in the order the runs
were added (oldest first), so an older run's ready llm nodes take a worker's in-flight room before a
newer run's do, and no run starves however many arrive after it; the room a run leaves is filled by
the next one, so a new run's first nodes join the engine batch while older runs still decode
(continuous batching across runs). Then every worker advances once (one engine step in-process) and
each completion goes back to the run whose `owner` id it carries; guest requests (chat) ride the same
steps. A remote worker (`remote = True`: a Ray actor steps its own engine) is only collected from,
never waited on; when nothing moved in a step the loop sleeps until a tool call or a remote worker's
wakeup finishes (`_idle_wait`), so the driver neither blocks on one worker nor spins.
`CompiledWorkflow.run` is a loop with one run; the online session keeps one loop for all.
Only the thread calling `step` touches the workers. The loop knows a run only by the `LoopRun` protocol
(`Processor` implements it, and its `run()` is a loop of its own), so it sits below the Processor.
"""

from __future__ import annotations

import itertools
import logging
import time
from concurrent.futures import FIRST_COMPLETED, Future, wait
from typing import Any, Generic, Protocol, TypeVar

from halo.runtime.llm_worker import LLMDone
from halo.runtime.request_board import RequestBoard

log = logging.getLogger("halo.runtime")

IDLE_WAIT_S = 0.005  # the longest an idle step sleeps: commands of an online session wait no longer


class LoopRun(Protocol):
    """One run as the loop drives it; `add` sets `owner` (namespaces its jobs on shared workers) and `board`."""

    owner: int
    board: RequestBoard
    error: BaseException | None  # what ended the run early; the loop sets it on cancel
    workers: list[Any]

    @property
    def finished(self) -> bool: ...

    @property
    def tool_calls(self) -> list[Future]: ...  # its calls on the tool pool now

    def dispatch(self) -> None: ...  # hand ready nodes to the tool pool and the workers

    def llm_finished(self, done: LLMDone) -> None: ...

    def collect_tools(self) -> bool: ...  # True when a tool call finished

    def has_ready(self) -> bool: ...

    def check_stalled(self) -> None: ...  # raise when nothing can make progress any more

    def cancel(self) -> None: ...

    def report_progress(self, force: bool = False) -> None: ...


RunT = TypeVar("RunT", bound=LoopRun)


class RunLoop(Generic[RunT]):
    """Runs added Processors to their end; `isolate=True` confines a failing run's exception to it."""

    def __init__(self, *, isolate: bool = True) -> None:
        self.isolate = isolate
        self.active: list[RunT] = []  # oldest first
        self.guest_workers: list[Any] = []  # workers that may hold guest requests of no run
        self.board = RequestBoard()
        self._by_owner: dict[int, RunT] = {}
        self._owners = itertools.count()

    # -- protocol: add / step / cancel ----------------------------------------------------------------

    def add(self, processor: RunT) -> None:
        processor.owner = next(self._owners)
        processor.board = self.board
        self.active.append(processor)
        self._by_owner[processor.owner] = processor

    def step(self) -> list[RunT]:
        """One iteration over every active run; returns the runs that ended in it (finished or failed)."""
        for processor in list(self.active):
            self._guarded(processor, processor.dispatch)
        stepped = False
        for worker in self._workers():
            busy = worker.inflight > 0 and not worker.remote  # a remote worker's poll steps nothing here
            finished = worker.poll()
            for done in finished:
                processor = self._by_owner.get(done.owner)
                if processor is not None:  # else its run was cancelled meanwhile
                    self._guarded(processor, lambda p=processor, d=done: p.llm_finished(d))
            stepped |= busy or bool(finished)
        tools_done = False
        for processor in list(self.active):
            tools_done |= bool(self._guarded(processor, processor.collect_tools))
        ended = [p for p in self.active if p.finished or p.error is not None]
        for processor in ended:
            self._remove(processor)
            processor.report_progress(force=True)
        for processor in self.active:
            processor.report_progress()
        if self.active and not stepped and not tools_done and not ended:
            self._idle_wait()
        return ended

    def cancel(self, processor: RunT, reason: BaseException) -> None:
        """End `processor` now: its jobs leave the workers and `reason` becomes its error."""
        if processor in self.active:
            self._remove(processor)
            processor.error = reason
            processor.cancel()

    @property
    def busy(self) -> bool:
        """Anything to step: active runs, or guest requests on a worker."""
        return bool(self.active) or any(w.inflight for w in self.guest_workers)

    # -- inside -------------------------------------------------------------------------------------------

    def _workers(self) -> list[Any]:
        seen: dict[int, Any] = {}
        for processor in self.active:
            for worker in processor.workers:
                seen.setdefault(id(worker), worker)
        for worker in self.guest_workers:
            seen.setdefault(id(worker), worker)
        return list(seen.values())

    def _guarded(self, processor: RunT, action: Any) -> Any:
        """Run `action` of `processor`; with `isolate`, an exception ends that run only."""
        if processor.error is not None:
            return None
        try:
            return action()
        except Exception as exc:
            if not self.isolate:
                raise
            log.exception("run %d failed", processor.owner)
            self.cancel(processor, exc)
            return None

    def _remove(self, processor: RunT) -> None:
        self.active.remove(processor)
        self._by_owner.pop(processor.owner, None)

    def _idle_wait(self) -> None:
        """Nothing advanced: wait a little for a tool call or a remote worker, or report a stall.

        A node still ready after dispatch is one whose worker has no room; it waits like the rest."""
        futures = [f for p in self.active for f in p.tool_calls]
        futures += [f for w in self._workers() if w.remote for f in w.wakeups()]
        if futures:
            wait(futures, timeout=IDLE_WAIT_S, return_when=FIRST_COMPLETED)
            return
        if any(p.has_ready() for p in self.active):
            return
        for processor in list(self.active):
            self._guarded(processor, processor.check_stalled)
        time.sleep(0.001)
