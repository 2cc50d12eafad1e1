"""`EngineActor`: the remote half of a Ray worker, a `LocalWorker` stepped by a loop thread of its own.

The actor is threaded (Ray's `max_concurrency`): its methods run on Ray's call threads and only hand
work to the loop thread through one inbox under one condition variable, so the loop thread is the
only one that ever touches the `LocalWorker` (its single-thread rule) and it sleeps on the condition
when there is nothing to step. It runs the same continuous-batching loop as an in-process worker:

    loop:
        wait until a command arrives, an import lands, or a job is in flight
        run the commands in arrival order (submit, cancel, preload, export, stats)
        start the jobs whose imported prefixes have arrived (their imports first)
        one poll of the LocalWorker (one engine step); finished jobs go to the outbox

`submit` returns at once; `drain` (a long poll: it waits until the outbox holds something or its
timeout passes) hands the outbox to the driver, so completions stream back while the batch runs and
new jobs join it between steps. A job may come with KV prefixes exported by another actor (their
ObjectRefs, resolved through Ray's object store); the jobs wait in `_staged` until those arrive, and
no thread of this actor ever blocks on another actor (two actors importing from each other at once
cannot deadlock). A run's `cancel` aborts its requests here. Ray may run a threaded actor's calls out
of order, so the driver numbers its calls (`seq`): a submit numbered before a cancel of its run is
dropped even if it arrives after it, one numbered after it (a later run reusing the owner id) runs.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any, TypeVar

from halo.engine import EngineStats
from halo.engine.kv_prefix import KVPrefix
from halo.runtime.llm_worker import EngineRecipe, EngineSet, LLMDone, LLMJob, LocalWorker, Prompt

log = logging.getLogger("halo.runtime")

ACTOR_THREADS = 16  # Ray call threads: a waiting drain, submits, cancels and the calls that wait on the loop
T = TypeVar("T")


@dataclass
class _Staged:
    """Jobs of one `submit` waiting for the prefixes they import (model, future of the exported prefix)."""

    jobs: list[LLMJob]
    imports: list[tuple[str, Future]]
    seq: int  # the driver's number of the submit

    @property
    def ready(self) -> bool:
        return all(future.done() for _, future in self.imports)


class EngineActor:
    """The body of a Ray worker: its engines, stepped continuously by the loop thread."""

    def __init__(self, index: int, recipe: EngineRecipe, threads: int, capacity: int) -> None:
        # Each actor owns its share of the cores: more threads than cores makes every op 10-50x slower.
        os.environ["OMP_NUM_THREADS"] = str(threads)
        self.threads = threads
        # A source maps to the model loaded instead, as in-process (the driver's tokenizer is that model's).
        self.worker = LocalWorker(index, EngineSet(recipe.with_options(num_threads=threads).build, capacity))
        self.imported = 0  # tokens of the prefixes imported from other actors
        self.iterations = 0  # of the loop thread (it sleeps while idle: a test reads this)
        self._cond = threading.Condition()
        self._inbox: list[Callable[[], None]] = []  # commands for the loop thread, in arrival order
        self._outbox: list[LLMDone] = []  # completions the driver has not drained yet
        self._woken = False  # an import arrived
        self._closed = False
        self._staged: list[_Staged] = []  # loop thread only
        self._cancelled: dict[int, int] = {}  # owner -> seq of its latest cancel (loop thread only)
        self._thread = threading.Thread(target=self._loop, name=f"halo-engine-actor-{index}", daemon=True)
        self._thread.start()

    # -- Ray calls (any thread) ---------------------------------------------------------------------

    def submit(self, jobs: list[LLMJob], imports: list[tuple[str, Any]] | None = None, seq: int = 0) -> None:
        """Queue `jobs` for the running batch; `imports` are (model, ObjectRef of an exported prefix)
        pairs the jobs' prompts start with, adopted before the jobs start. Returns at once."""
        futures = [(model, self._future_of(ref)) for model, ref in imports or ()]
        for _, future in futures:
            future.add_done_callback(lambda _: self._wake())
        self._post(lambda: self._staged.append(_Staged(list(jobs), futures, seq)))

    def drain(self, timeout_s: float) -> list[tuple[LLMDone, float]]:
        """The completions finished since the last drain, each with its age (seconds since it finished,
        so the driver can place it on its own clock); waits up to `timeout_s` while there are none."""
        with self._cond:
            self._cond.wait_for(lambda: self._outbox or self._closed, timeout=timeout_s)
            done, self._outbox = self._outbox, []
        now = time.perf_counter()
        return [(d, now - d.end) for d in done]

    def cancel(self, owner: int, seq: int = 0) -> None:
        """Abort run `owner`'s requests here; its jobs of submits numbered before `seq` are dropped."""
        self._post(lambda: self._cancel(owner, seq))

    def preload(self, model: str) -> float:
        """Load `model` (on the loop thread, between steps); the seconds it took."""
        clock = time.perf_counter()
        self._call(lambda: self.worker.preload(model))
        return time.perf_counter() - clock

    def export_prefix(self, model: str, prompt: Prompt) -> KVPrefix | None:
        return self._call(lambda: self.worker.export_prefix(model, prompt))

    def import_prefix(self, model: str, prefix: KVPrefix | None) -> int:
        return self._call(lambda: self._import(model, prefix))

    def imported_tokens(self) -> int:
        return self._call(lambda: self.imported)

    def stats(self) -> EngineStats:
        return self._call(self.worker.stats)

    def inflight(self) -> int:
        """Jobs here not finished: running, waiting for room, or waiting for their imports."""
        return self._call(lambda: self.worker.inflight + sum(len(s.jobs) for s in self._staged))

    def node_id(self) -> str:
        """The Ray node this actor runs on."""
        import ray

        return ray.get_runtime_context().get_node_id()

    def close(self) -> None:
        """Stop the loop thread (what is in flight is dropped); for an actor used in-process."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        self._thread.join()

    # -- the loop thread ----------------------------------------------------------------------------

    def _loop(self) -> None:
        import torch

        torch.set_num_threads(self.threads)  # OpenMP's thread count is per thread: set it where ops run
        while True:
            with self._cond:
                self._cond.wait_for(lambda: self._inbox or self._woken or self._closed or self.worker.inflight)
                if self._closed:
                    return
                commands, self._inbox, self._woken = self._inbox, [], False
            self.iterations += 1
            finished: list[LLMDone] = []
            try:
                for command in commands:  # a submit's jobs start before the next command (a cancel) runs
                    command()
                    finished.extend(self._start_ready())
                finished.extend(self._start_ready())  # imports that arrived
                if self.worker.inflight:
                    finished.extend(self.worker.poll())
            except Exception as exc:  # a broken step must not leave jobs hanging: fail them, keep serving
                log.exception("engine actor %d: step failed", self.worker.index)
                finished.extend(self.worker.fail_all(f"worker {self.worker.index}: {type(exc).__name__}: {exc}"))
            if finished:
                with self._cond:
                    self._outbox.extend(finished)  # the driver drops what a cancelled run left
                    self._cond.notify_all()

    def _start_ready(self) -> list[LLMDone]:
        """Start the staged jobs whose imports have arrived (a failed export is skipped: they prefill)."""
        failed: list[LLMDone] = []
        waiting: list[_Staged] = []
        for staged in self._staged:
            if not staged.ready:
                waiting.append(staged)
                continue
            for model, future in staged.imports:
                if future.exception() is None:
                    self._import(model, future.result())
                else:
                    log.warning("engine actor %d: a prefix export failed: %s", self.worker.index, future.exception())
            live = [j for j in staged.jobs if staged.seq > self._cancelled.get(j.owner, -1)]
            failed.extend(self.worker.submit(live))
        self._staged = waiting
        return failed

    def _cancel(self, owner: int, seq: int) -> None:
        self._cancelled[owner] = max(seq, self._cancelled.get(owner, -1))
        self.worker.cancel(owner)

    def _import(self, model: str, prefix: KVPrefix | None) -> int:
        tokens = self.worker.import_prefix(model, prefix)
        self.imported += tokens
        return tokens

    # -- between the two ----------------------------------------------------------------------------

    def _post(self, command: Callable[[], None]) -> None:
        with self._cond:
            self._inbox.append(command)
            self._cond.notify_all()

    def _wake(self) -> None:
        with self._cond:
            self._woken = True
            self._cond.notify_all()

    def _call(self, fn: Callable[[], T]) -> T:
        """Run `fn` on the loop thread (between two steps) and wait for its result."""
        future: Future[T] = Future()

        def command() -> None:
            try:
                future.set_result(fn())
            except BaseException as exc:  # noqa: BLE001 - handed to the waiting caller
                future.set_exception(exc)

        self._post(command)
        return future.result()

    @staticmethod
    def _future_of(ref: Any) -> Future:  # noqa: ANN401 - a Ray ObjectRef; in-process a Future or the prefix
        if isinstance(ref, Future):
            return ref
        if isinstance(ref, KVPrefix) or ref is None:
            future: Future = Future()
            future.set_result(ref)
            return future
        return ref.future()
