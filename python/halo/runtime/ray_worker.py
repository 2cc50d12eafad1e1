"""`RayWorker`: the driver's half of a worker whose engines run in a Ray actor (`engine_actor.py`).

It speaks the same protocol as a `LocalWorker` (`submit`, `poll`, `cancel`, `inflight`, prefixes),
so the Processor and the run loop drive both alike, but nothing here waits on the actor:

- `submit` sends the jobs at once (`EngineActor.submit`): they join the actor's running batch
  between two of its engine steps, exactly as on a local worker;
- while jobs are in flight one `drain` call is outstanding: it returns as soon as the actor has
  completions (or after `DRAIN_WAIT_S`), and `poll` collects it without blocking; its future is one
  of the worker's `wakeups()`, which the run loop sleeps on when nothing else moves (no spinning);
- `cancel(owner)` reaches the actor, which aborts that run's requests;
- if the actor dies (its process killed, its node gone: any error of a call to it), every job in
  flight comes back once as a failed `LLMDone` naming this worker, the worker turns `alive = False`
  and the Processor sends the rerun (per the node's `on_error`) and all later work to a live worker.
  A completion is either drained (and delivered) before the death or reported failed: never both.
"""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import logging
import time
from collections.abc import Mapping, Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any

from halo.engine import EngineStats
from halo.runtime.engine_actor import ACTOR_THREADS, EngineActor
from halo.runtime.llm_worker import EngineRecipe, LLMDone, LLMJob, Prompt

log = logging.getLogger("halo.runtime")

DRAIN_WAIT_S = 1.0  # how long one drain call waits in the actor for a completion before it returns empty


@dataclass(frozen=True)
class Placement:
    """Where a Ray worker's actor may run: the CPUs it reserves (its engine's threads: the whole
    part of `cpus`, at least one) and custom Ray resources it asks for (a node label, say)."""

    cpus: float
    resources: Mapping[str, float] = dataclasses.field(default_factory=dict)

    @property
    def threads(self) -> int:
        return max(1, int(self.cpus))


@dataclass
class _Sent:
    job: LLMJob
    start: float  # perf_counter when it was submitted (this process's clock)


class RayWorker:
    """A worker in a Ray actor (one engine process per worker), streaming jobs in and completions out."""

    remote = True  # its engines step in the actor: a poll only collects
    inflight_limit: int | None = None  # the Processor's max_inflight, as for a local worker

    def __init__(self, index: int, recipe: EngineRecipe, placement: Placement, capacity: int = 2) -> None:
        import ray

        self.index = index
        self.placement = placement
        actor_class = ray.remote(EngineActor).options(
            num_cpus=placement.cpus, resources=dict(placement.resources), max_concurrency=ACTOR_THREADS
        )
        self._actor = actor_class.remote(index, recipe, placement.threads, capacity)
        self._sent: dict[tuple[int, int], _Sent] = {}  # (owner, job id) -> the job, while the actor has it
        self._drain: Future | None = None  # the outstanding drain call
        self._calls: list[Future] = []  # submits and cancels not yet acknowledged (their errors count)
        self._imports: list[tuple[str, Any]] = []  # (model, ObjectRef of an export) for the next submit
        self._seq = itertools.count()  # numbers submits and cancels (the actor may run them out of order)
        self._requested: dict[str, None] = {}  # models asked to load here, in order (resident unless evicted)
        self._stats = EngineStats()  # the last stats read (what a dead worker reports)
        self._moved = 0
        self.preloads = 0
        self.alive = True
        self.death: str | None = None  # why the worker died

    @property
    def inflight(self) -> int:
        return len(self._sent)

    def resident_models(self) -> list[str]:
        """The models asked to load in the actor, in the order asked (the actor may have evicted some)."""
        return list(self._requested) if self.alive else []

    def submit(self, jobs: Sequence[LLMJob]) -> list[LLMDone]:
        if not self.alive:
            return [self._failed(_Sent(job, time.perf_counter())) for job in jobs]
        if not jobs and not self._imports:
            return []
        now = time.perf_counter()
        for job in jobs:
            self._sent[(job.owner, job.phys)] = _Sent(job, now)
        # The imports travel nested in a list: Ray passes them as references, which the actor resolves
        # without blocking (a top-level ref would make the call wait, and fail with a dead source).
        self._calls.append(self._actor.submit.remote(list(jobs), self._imports, next(self._seq)).future())
        self._imports = []
        self._ensure_drain()
        return []

    def cancel(self, owner: int) -> int:
        """Abort run `owner`'s jobs in the actor; their completions will never come back."""
        keys = [key for key in self._sent if key[0] == owner]
        for key in keys:
            del self._sent[key]
        if self.alive:
            self._calls.append(self._actor.cancel.remote(owner, next(self._seq)).future())
        return len(keys)

    def poll(self) -> list[LLMDone]:
        """What the actor finished since the last poll; never waits."""
        if not self.alive:
            return []
        for call in [c for c in self._calls if c.done()]:
            self._calls.remove(call)
            if call.exception() is not None:
                return self._died(call.exception())
        finished: list[LLMDone] = []
        if self._drain is not None and self._drain.done():
            drain, self._drain = self._drain, None
            if drain.exception() is not None:
                return self._died(drain.exception())
            now = time.perf_counter()
            for done, age in drain.result():
                sent = self._sent.pop((done.owner, done.phys), None)
                if sent is None:  # its run was cancelled meanwhile
                    continue
                # The actor's clock is not ours: the job started when we sent it, ended `age` ago.
                end = max(sent.start, now - age)
                finished.append(dataclasses.replace(done, worker=self.index, start=sent.start, end=end))
        self._ensure_drain()
        return finished

    def wakeups(self) -> list[Future]:
        """Futures that finish when a poll would find something (the run loop sleeps on them)."""
        if not self.alive:
            return []
        return [*self._calls, *([self._drain] if self._drain is not None else [])]

    def preload(self, model: str) -> None:
        import ray

        ref = self.preload_async(model)
        if ref is not None:
            ray.get(ref)

    def preload_async(self, model: str) -> Any:  # noqa: ANN401 - a Ray ObjectRef or None
        """Start loading `model` in the actor (between its steps); no wait here.
        Returns the load's ObjectRef, or None when it was asked for already (or the worker is dead)."""
        if model in self._requested or not self.alive:
            return None
        self._requested[model] = None
        self.preloads += 1
        return self._actor.preload.remote(model)

    def stats(self) -> EngineStats:
        """The actor's engine counters; the last ones read once it is unreachable (a poll, not this,
        reports its death: only a poll can hand back the jobs it held)."""
        import ray

        if self.alive:
            with contextlib.suppress(ray.exceptions.RayError):
                self._stats = ray.get(self._actor.stats.remote())
        return self._stats

    def node_id(self) -> str:
        """The Ray node the actor runs on."""
        import ray

        return ray.get(self._actor.node_id.remote())

    def pull_prefix(self, source: RayWorker, model: str, prompt: Prompt) -> None:
        """Move the KV `source` holds for `prompt`'s prefix into this worker, without waiting here.

        The exported prefix travels through Ray's object store straight from one actor to the other,
        with the next `submit` (the job that needs it): the actor adopts it before starting that job.
        """
        if self.alive and source.alive:
            self._imports.append((model, source._actor.export_prefix.remote(model, prompt)))

    def imported_tokens(self) -> int:
        """Tokens this worker's actor imported from other workers so far."""
        import ray

        if self.alive:
            with contextlib.suppress(ray.exceptions.RayError):
                self._moved = ray.get(self._actor.imported_tokens.remote())
        return self._moved

    def shutdown(self) -> None:
        import ray

        ray.kill(self._actor)
        self.alive = False

    # -- inside -------------------------------------------------------------------------------------

    def _ensure_drain(self) -> None:
        if self._drain is None and self._sent and self.alive:
            self._drain = self._actor.drain.remote(DRAIN_WAIT_S).future()

    def _died(self, error: BaseException) -> list[LLMDone]:
        """The actor is gone: fail every job it held, once; the worker takes no more work."""
        summary = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        self.death = f"Ray worker {self.index} failed ({type(error).__name__}: {summary})"
        log.warning("%s; %d jobs in flight there are reported failed", self.death, len(self._sent))
        self.alive = False
        import ray

        with contextlib.suppress(Exception):  # an actor that failed a call without dying holds its CPUs
            ray.kill(self._actor)
        sent, self._sent = list(self._sent.values()), {}
        self._drain, self._calls, self._imports = None, [], []
        return [self._failed(s) for s in sent]

    def _failed(self, sent: _Sent) -> LLMDone:
        message = f"{self.death or f'Ray worker {self.index} is not alive'}: the request was lost there"
        job = sent.job
        return LLMDone(job.phys, self.index, error=message, start=sent.start, end=time.perf_counter(), owner=job.owner)
