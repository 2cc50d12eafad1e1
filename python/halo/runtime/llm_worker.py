"""LLM workers: one engine per resident model, in this process (`LocalWorker`) or in a Ray actor.

Every kind takes `LLMJob`s and hands back `LLMDone`s through the same calls, so the Processor drives
them alike: `submit(jobs)` (returns jobs that failed validation at once, e.g. a prompt over the
context window), `poll()` (advances the work a little and returns what finished), `cancel(owner)`
and `inflight`. A local worker advances by one engine step per poll, so new requests join the
running batch between steps (continuous batching across nodes, and across runs: a job's `owner` says
which run it belongs to, so several runs share one worker and each gets its own completions back). A
local worker also takes *guest* requests (`add_guest`): engine requests added by whoever owns the
worker's thread (the server's chat completions), stepped in the same batches, finished through a
callback. A Ray worker (`ray_worker.RayWorker`) runs this same `LocalWorker` inside its actor
(`engine_actor.EngineActor`), on a loop thread of its own: jobs stream in and completions stream out.
Two attributes tell the run loop how to wait: `remote` (its engine steps elsewhere, so a `poll` only
collects) with `wakeups()` (futures that finish when there is something to collect), and `alive`
(False once a remote worker's process is gone: the Processor sends its work to a live worker).

A job's prompt is token ids (the Processor encoded them once, with the tokenizer of the job's
model: see `Processor._prompts`), so an engine here, or in a Ray actor, does not encode it again;
only a run that knows no tokenizer for a model sends chat messages, which the engine then encodes.

A job's `group` names its node (the Processor passes the node's output-length history key), so an
engine that drafts speculatively keeps acceptance per node and stops drafting where it does not pay
(engine/speculation.py). A finished job carries its node's draft figures on this engine since the
last job of that node finished here (`SpeculationFigures`): the engine keeps them per group, not per
request, so a node's jobs together carry exactly what its group drafted, verified and accepted, which
the planner turns into the node's tokens per decode step (plan/cost/output_history.py).

A job of `n` samples (an llm node's `n: k`) is one logical call: the worker adds `n` engine requests of
the same prompt at once, sample `i` seeded `seed + i` (`sample_params`), so the prefix cache computes the
prompt's full blocks once for all of them, and answers with one `LLMDone` holding the `n` replies in
sample order when the last one finishes.
"""

from __future__ import annotations

import dataclasses
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future
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
class SpeculationFigures:
    """Draft tokens verified, how many the model accepted, and the verify steps (sequence-steps) of one
    request group: what engine/draft_state.Acceptance counts, as plain numbers that cross Ray."""

    proposed: int = 0
    accepted: int = 0
    verifies: int = 0

    def __add__(self, other: SpeculationFigures) -> SpeculationFigures:
        return SpeculationFigures(
            self.proposed + other.proposed, self.accepted + other.accepted, self.verifies + other.verifies
        )

    def __sub__(self, other: SpeculationFigures) -> SpeculationFigures:
        return SpeculationFigures(
            self.proposed - other.proposed, self.accepted - other.accepted, self.verifies - other.verifies
        )


NO_DRAFTS = SpeculationFigures()


@dataclass(frozen=True)
class LLMJob:
    phys: int  # the job: a physical node, or one element call of a foreach node (the Processor's ids)
    model: str  # model source
    prompt: Prompt  # token ids (chat messages only where the run knows no tokenizer of the model)
    params: SamplingParams  # sample 0's; sample i's are sample_params(params, i)
    owner: int = 0  # the run this job belongs to (request ids and completions are namespaced by it)
    n: int = 1  # samples: engine requests of this prompt, answered together
    group: str | None = None  # the engine's request group: its node (speculation's acceptance per node)


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
    speculation: SpeculationFigures = NO_DRAFTS  # its group's drafts since the group's last finished job

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

    remote = False  # its engines step in `poll`, on the caller's thread
    alive = True
    inflight_limit: int | None = None  # None: the Processor's max_inflight bounds what it is handed

    def __init__(self, index: int, engines: EngineSet) -> None:
        self.index = index
        self.engines = engines
        self._waiting: list[LLMJob] = []  # jobs whose model has no room yet
        self._running: dict[str, _Call] = {}  # engine request id -> the call it is a sample of
        self._guests: dict[str, tuple[str, GuestDone]] = {}  # request id -> model, completion callback
        self._by_model: dict[str, int] = {}
        # (model, group) -> the group's draft figures on that engine when its last job finished here
        self._drafts_seen: dict[tuple[str, str], SpeculationFigures] = {}

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

    def wakeups(self) -> list[Future]:
        """Nothing to wait for: this worker advances when polled."""
        return []

    def fail_all(self, message: str) -> list[LLMDone]:
        """Abort every job here, waiting or running, and report each as failed with `message`."""
        now = time.perf_counter()
        failed = [LLMDone(j.phys, self.index, error=message, start=now, end=now, owner=j.owner) for j in self._waiting]
        self._waiting = []
        for model, engine in self.engines.engines.items():
            failed.extend(self._fail_model(model, engine, message))
        return failed

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
                if call.job.group is not None:
                    call.speculation += self._drafts_since(model, engine, call.job.group)
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

    def _drafts_since(self, model: str, engine: LLMEngine, group: str) -> SpeculationFigures:
        """What `group` drafted on `engine` since its last job finished here (see the module docstring)."""
        figures = engine.speculator.groups.get(group)
        if figures is None:
            return NO_DRAFTS
        now = SpeculationFigures(figures.proposed, figures.accepted, figures.verifies)
        seen = self._drafts_seen.get((model, group), NO_DRAFTS)
        if now.proposed < seen.proposed:  # the engine was rebuilt (evicted, loaded again): it counts afresh
            seen = NO_DRAFTS
        self._drafts_seen[(model, group)] = now
        return now - seen

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
                engine.add_request(job.prompt, sample_params(job.params, index), request_id=request_id, group=job.group)
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
        self.speculation = NO_DRAFTS

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
            self.speculation,
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
