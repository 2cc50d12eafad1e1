"""`RemoteWorker`: the worker of a model an OpenAI-compatible server runs (`source: openai`).

It speaks the worker protocol the run loop and the Processor use for every worker (`index`,
`inflight`, `submit`, `poll`, `cancel`, `preload_async`, `resident_models`, `stats`, `pull_prefix`),
so a remote model's llm nodes go through the same dispatch, deduplication, result cache and
`settle` as a local engine's. Its calls run on an asyncio loop in a background thread, over one
`httpx.AsyncClient`, at most `max_concurrency` at once (a semaphore); `submit` hands a call to that
loop and keeps its `concurrent.futures.Future`, `poll` returns the calls whose futures are done (no
wait), and `wakeups` gives the loop those futures to sleep on when nothing else moves (no spinning);
it is `remote` (a poll only collects) and always `alive` (a failing server fails calls, not the worker).
`inflight_limit` tells the Processor to hand over every ready node at once: the worker queues what
exceeds `max_concurrency` itself.

Each call retries connection errors, timeouts, 429 (after `Retry-After` when the server sends one)
and 5xx with exponential backoff (`retry_backoff_s`, doubling, capped at `MAX_BACKOFF_S`), up to
`max_attempts` tries in all; any other failure is the call's error (the node's `on_error` decides),
naming the model, the endpoint, the HTTP status and the start of the body.
"""

from __future__ import annotations

import asyncio
import email.utils
import threading
import time
from collections.abc import Sequence
from concurrent.futures import Future
from typing import Any

import httpx

from halo.engine import EngineStats
from halo.plan.chat_tokenizer import ChatTokenizer
from halo.runtime.llm_worker import LLMDone, LLMJob, Prompt
from halo.runtime.remote_wire import excerpt, parse_response, request_body
from halo.spec.document import ModelSpec

MAX_BACKOFF_S = 30.0
MAX_RETRY_AFTER_S = 120.0  # a longer Retry-After is waited this long at most
INFLIGHT_LIMIT = 1 << 20  # jobs the Processor may hand over at once (the semaphore bounds the calls)


class RemoteCallError(Exception):
    """A call that failed for good (not retried, or out of tries)."""


class RemoteWorker:
    """The worker of remote model `name` (declared `spec`), worker `index` of its app."""

    inflight_limit = INFLIGHT_LIMIT
    remote = True  # its calls run on the server: a poll only collects
    alive = True  # an unreachable server fails each call (retried, then the row's error), never the worker

    def __init__(
        self, index: int, source: str, name: str, spec: ModelSpec, api_key: str | None, template: ChatTokenizer | None
    ) -> None:
        assert spec.base_url is not None and spec.model is not None
        self.index = index
        self.source = source  # the model source its jobs carry (`remote_source(name)`)
        self.name = name
        self.spec = spec
        self._template = template  # renders the prompt text of api: completions (None: contents joined)
        self._headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._calls: dict[tuple[int, int], Future[LLMDone]] = {}  # (owner, phys) -> its call
        self.observed: list[tuple[int, int, float]] = []  # (prompt tokens, generated tokens, seconds) per call
        self.retries = 0  # tries past the first, over all calls (read on the loop thread after polls)
        self._stats = EngineStats()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name=f"halo-remote-{name}", daemon=True)
        self._thread.start()
        self._client: httpx.AsyncClient | None = None
        self._limit: asyncio.Semaphore | None = None
        self._retried = 0  # written on the asyncio thread; copied into `retries` by poll

    # -- the worker protocol --------------------------------------------------------------------------

    @property
    def inflight(self) -> int:
        return len(self._calls)

    def resident_models(self) -> list[str]:
        return [self.source]

    def preload_async(self, model: str) -> None:
        """Nothing to load: the server holds the model."""

    def preload(self, model: str) -> None:
        """Nothing to load: the server holds the model."""

    def pull_prefix(self, source: Any, model: str, prompt: Prompt) -> None:
        """No KV moves to a server (the plan never asks: its tasks are not KV children)."""

    def submit(self, jobs: Sequence[LLMJob]) -> list[LLMDone]:
        for job in jobs:
            self._calls[(job.owner, job.phys)] = asyncio.run_coroutine_threadsafe(self._call(job), self._loop)
        return []

    def poll(self) -> list[LLMDone]:
        """The calls that finished since the last poll (never waits)."""
        finished = [key for key, future in self._calls.items() if future.done()]
        out = []
        for key in finished:
            done = self._calls.pop(key).result()  # _call never raises: an error is the LLMDone's
            if done.error is None:
                self.observed.append((done.prompt_tokens, done.generated_tokens, done.end - done.start))
                self._stats.requests += 1
                self._stats.prompt_tokens += done.prompt_tokens
                self._stats.cached_tokens += done.cached_tokens
                self._stats.prefill_tokens += done.prompt_tokens - done.cached_tokens
                self._stats.generated_tokens += done.generated_tokens
                self._stats.decode_tokens += done.generated_tokens
            out.append(done)
        self.retries = self._retried
        return out

    def wakeups(self) -> list[Future[LLMDone]]:
        """The calls in flight, for the run loop to sleep on when nothing else can move."""
        return list(self._calls.values())

    def cancel(self, owner: int) -> int:
        """Cancel run `owner`'s calls (requests in flight are closed; their completions never come)."""
        keys = [key for key in self._calls if key[0] == owner]
        for key in keys:
            self._calls.pop(key).cancel()
        return len(keys)

    def stats(self) -> EngineStats:
        """Tokens as the server's usage reported them (the other engine counters stay 0)."""
        return EngineStats(**self._stats.as_dict())

    def close(self) -> None:
        for future in self._calls.values():
            future.cancel()
        self._calls.clear()
        if self._client is not None:
            asyncio.run_coroutine_threadsafe(self._client.aclose(), self._loop).result(timeout=10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)
        self._loop.close()

    # -- on the asyncio thread ------------------------------------------------------------------------

    async def _call(self, job: LLMJob) -> LLMDone:
        start = time.perf_counter()
        try:
            if self._client is None:
                self._client = httpx.AsyncClient(
                    timeout=self.spec.timeout_s, limits=httpx.Limits(max_connections=self.spec.max_concurrency)
                )
                self._limit = asyncio.Semaphore(self.spec.max_concurrency)
            assert self._limit is not None
            body = request_body(job, self.spec.model or "", self.spec.api, self._template)
            async with self._limit:
                start = time.perf_counter()  # the call's latency, not its wait for a slot
                payload = await self._send(body)
            replies, usage = parse_response(payload, self.spec.api, job.n)
        except (RemoteCallError, ValueError) as exc:
            return LLMDone(job.phys, self.index, error=self._describe(str(exc)), start=start,
                           end=time.perf_counter(), owner=job.owner)  # fmt: skip
        return LLMDone(job.phys, self.index, replies, None, usage.prompt_tokens, usage.cached_tokens,
                       usage.completion_tokens, start, time.perf_counter(), job.owner)  # fmt: skip

    async def _send(self, body: dict[str, Any]) -> Any:
        """POST `body`, retrying what may pass (module docstring); the response's JSON."""
        assert self._client is not None
        url = f"{self.spec.base_url}/{'chat/completions' if self.spec.api == 'chat' else 'completions'}"
        backoff = self.spec.retry_backoff_s
        attempts = self.spec.max_attempts
        for attempt in range(1, attempts + 1):
            try:
                response = await self._client.post(url, json=body, headers=self._headers)
            except httpx.TransportError as exc:  # refused, reset, timed out...
                problem, wait_s = f"{type(exc).__name__}: {exc or 'no detail'}", backoff
            else:
                if response.status_code == 200:
                    try:
                        return response.json()
                    except ValueError:
                        raise RemoteCallError(
                            f"HTTP 200 with a body that is not JSON: {excerpt(response.text)}"
                        ) from None
                problem = f"HTTP {response.status_code}: {excerpt(response.text)}"
                if response.status_code != 429 and response.status_code < 500:
                    raise RemoteCallError(problem)
                wait_s = _retry_after(response) if response.status_code == 429 else None
                wait_s = backoff if wait_s is None else wait_s
            if attempt == attempts:
                raise RemoteCallError(f"{problem} (gave up after {attempts} tries)")
            self._retried += 1
            await asyncio.sleep(min(wait_s, MAX_RETRY_AFTER_S))
            backoff = min(backoff * 2, MAX_BACKOFF_S)
        raise AssertionError("unreachable")

    def _describe(self, problem: str) -> str:
        return f"remote model '{self.name}' ({self.spec.model} at {self.spec.base_url}, {self.spec.api} API): {problem}"


def _retry_after(response: httpx.Response) -> float | None:
    """Seconds the server asks to wait (`Retry-After`: seconds, or an HTTP date); None if it says nothing."""
    value = response.headers.get("retry-after")
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())
