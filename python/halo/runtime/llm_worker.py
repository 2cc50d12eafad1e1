"""LLM workers: one engine per resident model, in this process (one worker) or as Ray actors (several).

Both kinds take `LLMJob`s and hand back `LLMDone`s through the same three calls, so the Processor
drives them alike: `submit(jobs)` (returns jobs that failed validation at once, e.g. a prompt over
the context window), `poll()` (advances the work a little and returns what finished) and
`inflight`. A local worker advances by one engine step per poll, so new requests join the running
batch between steps (continuous batching across nodes, and across runs: a job's `owner` says which
run it belongs to, so several runs share one worker and each gets its own completions back). A
local worker also takes *guest* requests (`add_guest`): engine requests added by whoever owns the
worker's thread (the server's chat completions), stepped in the same batches, finished through a
callback. A Ray worker runs whole batches in its actor; the next batch starts as soon as the
previous one returns.

A job's prompt is token ids (the Processor encoded them once, with the tokenizer of the job's
model: see `Processor._prompts`), so an engine here, or in a Ray actor, does not encode it again;
only a run that knows no tokenizer for a model sends chat messages, which the engine then encodes.

A job of `n` samples (an llm node's `n: k`) is one logical call: the worker adds `n` engine requests of
the same prompt at once, sample `i` seeded `seed + i` (`sample_params`), so the prefix cache computes the
prompt's full blocks once for all of them, and answers with one `LLMDone` holding the `n` replies in
sample order when the last one finishes.
"""

from __future__ import annotations

import dataclasses
import os
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from halo.engine import EngineStats, GenerationResult, LLMEngine, SamplingParams
from halo.engine.choice_scoring import ChoiceScores
from halo.engine.kv_prefix import KVPrefix
from halo.engine.sampling_params import MAX_SEED
from halo.errors import HaloError

Prompt = list[int] | list[dict[str, str]]  # token ids, or chat messages for the engine to encode


def sample_params(params: SamplingParams, index: int) -> SamplingParams:
    """Sample `index`'s params of a request drawn `n` times: seeded `seed + index` (wrapping past the
    largest seed), as the OpenAI server seeds choice `index`; unseeded samples stay unseeded."""
    if index == 0 or params.seed is None:
        return params
    return dataclasses.replace(params, seed=(params.seed + index) % (MAX_SEED + 1))


@dataclass(frozen=True)
class LlmReply:
    """What one engine request answered, as an llm node's result reads it (slim enough to cross Ray)."""

    text: str
    finish_reason: str | None = None  # the engine's: "stop", "length" (max_tokens, the context) or "error"
    format_error: str | None = None  # why a constrained output is incomplete (the engine's); None: complete
    token_logprobs: tuple[float, ...] = ()  # per generated token, when the request asked for logprobs
    choice_scores: ChoiceScores | None = None  # a scoring request's (choice_mode="score")

    @classmethod
    def of(cls, result: GenerationResult) -> LlmReply:
        return cls(
            result.text, result.finish_reason, result.format_error, tuple(result.token_logprobs), result.choice_scores
        )

    @staticmethod
    def generated_tokens(result: GenerationResult) -> int:
        """Tokens the request generated: its output's, none for scoring (it decodes nothing)."""
        return 0 if result.choice_scores is not None else len(result.token_ids)


@dataclass(frozen=True)
class LLMJob:
    phys: int  # the job: a physical node, or one element call of a foreach node (the Processor's ids)
    model: str  # model source
    prompt: Prompt  # token ids (chat messages only where the run knows no tokenizer of the model)
    params: SamplingParams  # sample 0's; sample i's are sample_params(params, i)
    owner: int = 0  # the run this job belongs to (request ids and completions are namespaced by it)
    n: int = 1  # samples: engine requests of this prompt, answered together


@dataclass(frozen=True)
class LLMDone:
    phys: int
    worker: int
    replies: tuple[LlmReply, ...] = ()  # one per sample, in sample order; () when the request failed
    error: str | None = None
    prompt_tokens: int = 0  # over all samples, as the engine counted them
    cached_tokens: int = 0
    generated_tokens: int = 0
    start: float = 0.0  # perf_counter of submission and of completion (this process's clock)
    end: float = 0.0
    owner: int = 0

    @property
    def text(self) -> str | None:
        """The first sample's text (None when the request failed)."""
        return self.replies[0].text if self.replies else None


GuestDone = Callable[[GenerationResult | None, str | None], None]  # (result, error message)


@dataclass
class EngineSet:
    """The engines one worker holds, by model, at most `capacity` of them (least recently used leaves)."""

    factory: Callable[[str], LLMEngine]
    capacity: int = 2
    engines: OrderedDict[str, LLMEngine] = field(default_factory=OrderedDict)
    loads: int = 0
    load_seconds: float = 0.0

    def get(self, model: str, busy: Callable[[str], bool] = lambda m: False) -> LLMEngine | None:
        """The engine of `model`, loading it if needed; None while no idle engine can make room."""
        engine = self.engines.get(model)
        if engine is not None:
            self.engines.move_to_end(model)
            return engine
        if len(self.engines) >= self.capacity:
            idle = next((m for m in self.engines if not busy(m)), None)
            if idle is None:
                return None
            del self.engines[idle]
        clock = time.perf_counter()
        engine = self.engines[model] = self.factory(model)
        self.loads += 1
        self.load_seconds += time.perf_counter() - clock
        return engine

    def stats(self) -> EngineStats:
        total = EngineStats()
        for engine in self.engines.values():
            s = engine.stats()
            for name, value in s.as_dict().items():
                setattr(total, name, getattr(total, name) + value)
        return total


class LocalWorker:
    """A worker whose engines run in this process, one engine step per `poll`.

    Only one thread may call into a worker (and so step its engines): the one running its runs.
    """

    def __init__(self, index: int, engines: EngineSet) -> None:
        self.index = index
        self.engines = engines
        self._waiting: list[LLMJob] = []  # jobs whose model has no room yet
        self._running: dict[str, _Call] = {}  # engine request id -> the call it is a sample of
        self._guests: dict[str, tuple[str, GuestDone]] = {}  # request id -> model, completion callback
        self._by_model: dict[str, int] = {}

    @property
    def inflight(self) -> int:
        return len(self._running) + len(self._waiting) + len(self._guests)

    def resident_models(self) -> list[str]:
        """The models loaded here, least recently used first (the last is the one running now)."""
        return list(self.engines.engines)

    def preload(self, model: str) -> None:
        self.engines.get(model, self._busy)

    def preload_async(self, model: str) -> None:
        """In-process loading would stall the whole loop; compile() already loaded every model here."""

    def submit(self, jobs: Sequence[LLMJob]) -> list[LLMDone]:
        failed: list[LLMDone] = []
        for job in jobs:
            done = self._start(job)
            if done is not None:
                failed.append(done)
        return failed

    def cancel(self, owner: int) -> int:
        """Abort every job of run `owner` here (its completions will never come); the number aborted."""
        self._waiting = [j for j in self._waiting if j.owner != owner]
        calls = {id(call): call for call in self._running.values() if call.job.owner == owner}
        for call in calls.values():
            for request_id in call.pending():
                self._drop(request_id, call.job.model)
        return len(calls)

    def add_guest(
        self, model: str, prompt: list[int], params: SamplingParams, request_id: str, on_done: GuestDone
    ) -> None:
        """Add an engine request that belongs to no run; `on_done` gets its result (or error) from `poll`.
        Raises what `add_request` raises (too long a prompt, a full pool) or HaloError if no room."""
        engine = self.engines.get(model, self._busy)
        if engine is None:
            raise HaloError(f"worker {self.index} has no room to load model {model!r} now")
        engine.add_request(prompt, params, request_id=request_id)
        self._guests[request_id] = (model, on_done)
        self._by_model[model] = self._by_model.get(model, 0) + 1

    def abort_guest(self, request_id: str) -> None:
        guest = self._guests.pop(request_id, None)
        if guest is not None:
            engine = self.engines.engines.get(guest[0])
            if engine is not None:
                engine.abort(request_id)
            self._by_model[guest[0]] -= 1

    def poll(self) -> list[LLMDone]:
        if self._waiting:
            waiting, self._waiting = self._waiting, []
            failed = self.submit(waiting)
            if failed:
                return failed
        finished: list[LLMDone] = []
        for model, engine in list(self.engines.engines.items()):
            if not self._by_model.get(model) or not engine.has_unfinished():
                continue
            try:
                results = engine.step()
            except HaloError as exc:  # e.g. a KV pool too small for any waiting request: fail them, go on
                finished.extend(self._fail_model(model, engine, str(exc)))
                continue
            for result in results:
                self._by_model[model] -= 1
                guest = self._guests.pop(result.request_id, None)
                if guest is not None:
                    guest[1](result, None)
                    continue
                call = self._running.pop(result.request_id)
                if call.record(result):
                    finished.append(call.done(self.index))
        return finished

    def stats(self) -> EngineStats:
        return self.engines.stats()

    def _drop(self, request_id: str, model: str) -> None:
        engine = self.engines.engines.get(model)
        if engine is not None:
            engine.abort(request_id)
        del self._running[request_id]
        self._by_model[model] -= 1

    def _fail_model(self, model: str, engine: LLMEngine, message: str) -> list[LLMDone]:
        """Abort every request of `model` here and report each as failed with `message`."""
        failed: dict[int, LLMDone] = {}  # one per call, however many of its samples were running
        for request_id, call in list(self._running.items()):
            if call.job.model == model:
                engine.abort(request_id)
                del self._running[request_id]
                job = call.job
                failed[id(call)] = LLMDone(
                    job.phys, self.index, error=message, start=call.start, end=time.perf_counter(), owner=job.owner
                )
        for request_id, (guest_model, on_done) in list(self._guests.items()):
            if guest_model == model:
                engine.abort(request_id)
                del self._guests[request_id]
                on_done(None, message)
        self._by_model[model] = 0
        return list(failed.values())

    def export_prefix(self, model: str, prompt: Prompt) -> KVPrefix | None:
        """The K/V this worker caches for the longest whole-block prefix of `prompt` (None if none)."""
        engine = self.engines.engines.get(model)
        return engine.export_prefix(prompt) if engine is not None else None

    def import_prefix(self, model: str, prefix: KVPrefix | None) -> int:
        """Adopt a prefix exported by another worker into this one's prefix cache; tokens added."""
        if prefix is None:
            return 0
        engine = self.engines.get(model, self._busy)
        return engine.import_prefix(prefix) if engine is not None else 0

    def pull_prefix(self, source: LocalWorker, model: str, prompt: Prompt) -> None:
        """Copy the KV `source` holds for `prompt`'s prefix here, before the request that needs it runs."""
        self.import_prefix(model, source.export_prefix(model, prompt))

    def _busy(self, model: str) -> bool:
        return self._by_model.get(model, 0) > 0

    def _start(self, job: LLMJob) -> LLMDone | None:
        start = time.perf_counter()
        try:
            engine = self.engines.get(job.model, self._busy)
        except HaloError as exc:
            return LLMDone(job.phys, self.index, error=str(exc), start=start, end=time.perf_counter(), owner=job.owner)
        if engine is None:
            self._waiting.append(job)
            return None
        call = _Call(job, start)
        added: list[str] = []
        try:
            for index, request_id in enumerate(call.request_ids):  # together, so the samples share the prefill
                engine.add_request(job.prompt, sample_params(job.params, index), request_id=request_id)
                added.append(request_id)
        except HaloError as exc:
            for request_id in added:  # all samples or none
                engine.abort(request_id)
            return LLMDone(job.phys, self.index, error=str(exc), start=start, end=time.perf_counter(), owner=job.owner)
        for request_id in added:
            self._running[request_id] = call
        self._by_model[job.model] = self._by_model.get(job.model, 0) + len(added)
        return None


class _Call:
    """One job in flight: its `n` engine requests (ids `p{owner}-{phys}`, then `.1`, `.2`, ... for
    samples past the first) and the results of those finished so far."""

    def __init__(self, job: LLMJob, start: float) -> None:
        self.job = job
        self.start = start
        base = f"p{job.owner}-{job.phys}"
        self.request_ids = tuple(base if i == 0 else f"{base}.{i}" for i in range(job.n))
        self.results: dict[str, GenerationResult] = {}

    def pending(self) -> list[str]:
        return [r for r in self.request_ids if r not in self.results]

    def record(self, result: GenerationResult) -> bool:
        """Keep one sample's result; True when it was the last one outstanding."""
        self.results[result.request_id] = result
        return len(self.results) == len(self.request_ids)

    def done(self, worker: int) -> LLMDone:
        results = [self.results[r] for r in self.request_ids]
        return LLMDone(
            self.job.phys,
            worker,
            tuple(LlmReply.of(r) for r in results),
            None,
            sum(r.prompt_tokens for r in results),
            sum(r.cached_tokens for r in results),
            sum(LlmReply.generated_tokens(r) for r in results),
            self.start,
            time.perf_counter(),
            self.job.owner,
        )


@dataclass(frozen=True)
class EngineRecipe:
    """How a worker builds the engine of a model source: the run's engine options (dtype, weights, pool
    size, threads...), the workflow's per-source settings over them (a model declared with its own
    `dtype`/`weights`), and `models`, a source mapped to the model loaded instead (a local GGUF, say).
    Plain data, so a Ray actor receives the same recipe as the in-process worker."""

    options: Mapping[str, Any]
    per_source: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    models: Mapping[str, str] = field(default_factory=dict)

    def options_for(self, source: str) -> dict[str, Any]:
        return {**self.options, **self.per_source.get(source, {})}

    def build(self, source: str) -> LLMEngine:
        return LLMEngine(model=self.models.get(source, source), **self.options_for(source))

    def with_options(self, **options: Any) -> EngineRecipe:
        return EngineRecipe({**self.options, **options}, self.per_source, self.models)


class EngineActor:
    """The body of a Ray worker: its engines, driven a batch at a time (`run` returns when all finish)."""

    def __init__(self, index: int, recipe: EngineRecipe, threads: int, capacity: int) -> None:
        import torch

        # Each actor owns its share of the cores: more threads than cores makes every op 10-50x slower.
        torch.set_num_threads(threads)
        os.environ["OMP_NUM_THREADS"] = str(threads)
        # A source maps to the model loaded instead, as in-process (the driver's tokenizer is that model's).
        self.worker = LocalWorker(index, EngineSet(recipe.with_options(num_threads=threads).build, capacity))

    def preload(self, model: str) -> float:
        clock = time.perf_counter()
        self.worker.preload(model)
        return time.perf_counter() - clock

    def run(self, jobs: list[LLMJob]) -> list[tuple[LLMDone, float]]:
        """Run `jobs` to completion; each result comes with its (start, end) as offsets from the call.

        The remote half of a `RayWorker`: the run loop polls the RayWorker, this polls the actor's own
        `LocalWorker` (the same stepping code) until the batch it was sent is done."""
        base = time.perf_counter()
        out = self.worker.submit(jobs)
        while self.worker.inflight:
            out.extend(self.worker.poll())
        return [(d, d.start - base) for d in out]

    def stats(self) -> EngineStats:
        return self.worker.stats()

    def export_prefix(self, model: str, prompt: Prompt) -> KVPrefix | None:
        return self.worker.export_prefix(model, prompt)

    def import_prefix(self, model: str, prefix: KVPrefix | None) -> int:
        return self.worker.import_prefix(model, prefix)


class RayWorker:
    """A worker in a Ray actor (one engine process per worker), fed one batch at a time."""

    def __init__(self, index: int, recipe: EngineRecipe, threads: int, capacity: int = 2) -> None:
        import ray

        self.index = index
        actor_class = ray.remote(num_cpus=threads)(EngineActor)
        self._actor = actor_class.remote(index, recipe, threads, capacity)
        self._pending: list[LLMJob] = []
        self._call: Any = None  # the ObjectRef of the batch running now
        self._call_jobs = 0
        self._call_start = 0.0
        self._imports: list[Any] = []  # ObjectRefs of KV imports in flight
        self._requested: dict[str, None] = {}  # models asked to load here, in order (resident unless evicted)
        self.preloads = 0
        self._moved = 0
        self._cancelled: set[int] = set()  # runs whose completions are dropped (see `cancel`)

    @property
    def inflight(self) -> int:
        return len(self._pending) + self._call_jobs

    def resident_models(self) -> list[str]:
        """The models asked to load in the actor, in the order asked (the actor may have evicted some)."""
        return list(self._requested)

    def cancel(self, owner: int) -> int:
        """Drop run `owner`'s jobs not sent yet; those inside the running batch finish and are discarded."""
        before = len(self._pending)
        self._pending = [j for j in self._pending if j.owner != owner]
        self._cancelled.add(owner)
        return before - len(self._pending)

    def preload(self, model: str) -> None:
        import ray

        ref = self.preload_async(model)
        if ref is not None:
            ray.get(ref)

    def preload_async(self, model: str) -> Any:
        """Start loading `model` in the actor (it runs before this worker's next batch); no wait here.
        Returns the load's ObjectRef, or None when it was asked for already."""
        if model in self._requested:
            return None
        self._requested[model] = None
        self.preloads += 1
        return self._actor.preload.remote(model)

    def submit(self, jobs: Sequence[LLMJob]) -> list[LLMDone]:
        self._pending.extend(jobs)
        self._launch()
        return []

    def poll(self) -> list[LLMDone]:
        import ray

        if self._call is None:
            self._launch()
            return []
        ready, _ = ray.wait([self._call], timeout=0)
        if not ready:
            return []
        base, end = self._call_start, time.perf_counter()
        results = ray.get(self._call)
        self._call, self._call_jobs = None, 0
        self._launch()
        # The actor's clock is not ours: place each request by its offset inside the call.
        return [
            dataclasses.replace(d, worker=self.index, start=base + offset, end=end)
            for d, offset in results
            if d.owner not in self._cancelled
        ]

    def stats(self) -> EngineStats:
        import ray

        return ray.get(self._actor.stats.remote())

    def pull_prefix(self, source: RayWorker, model: str, prompt: Prompt) -> None:
        """Move the KV `source` holds for `prompt`'s prefix into this worker, without waiting here.

        The exported prefix travels through Ray's object store straight from one actor to the other;
        an actor runs its calls in order, so the import lands before the next batch this worker runs.
        """
        exported = source._actor.export_prefix.remote(model, prompt)
        self._imports.append(self._actor.import_prefix.remote(model, exported))

    def imported_tokens(self) -> int:
        """Tokens imported so far by `pull_prefix` (waits for the moves still in flight)."""
        import ray

        self._moved += sum(ray.get(self._imports))
        self._imports = []
        return self._moved

    def shutdown(self) -> None:
        import ray

        ray.kill(self._actor)

    def _launch(self) -> None:
        if self._call is None and self._pending:
            jobs, self._pending = self._pending, []
            self._call_start = time.perf_counter()
            self._call_jobs = len(jobs)
            self._call = self._actor.run.remote(jobs)
