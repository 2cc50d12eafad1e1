"""`EngineCalls`: the baselines' one-request-per-call access to an engine, stepped by Halo's own loop.

A serving engine steps itself and takes requests from anywhere; so does this: the engine becomes a
worker of an `OnlineSession` (its loop thread steps it, as it steps Halo's runs) and each call is a
guest request on it (`GuestRequests`). The operator-at-a-time system submits a node's whole batch from
its thread and waits for all, while the session's own thread steps the engine. The per-call system's
row tasks await calls on an event loop; there the session is stepped on that loop's thread
(`threaded=False`, `drive`), and the row tasks a step woke submit their next calls before the next
step starts, as they would on a serving engine's front: stepped from a second thread, the engine
started each step before the woken rows had their turn on the GIL (smaller batches, and 15-38% more
wall time on the six workloads, measured against the per-call system before the one loop). Either way
requests in flight share engine steps (continuous batching) and cached prompt prefixes, and the
baselines step the engine the same way Halo does: they differ only in what reaches the engine when.
"""

from __future__ import annotations

import asyncio
import itertools
from concurrent.futures import Future

from halo.engine import GenerationResult, LLMEngine, SamplingParams
from halo.engine.llm_engine import Prompt
from halo.errors import HaloError
from halo.runtime.guest_requests import GuestRequests
from halo.runtime.online_session import OnlineSession


class EngineCalls:
    """Calls on `engine` while the context is open: `submit` (a Future) or `await generate` (the text)."""

    def __init__(self, engine: LLMEngine, *, threaded: bool = True) -> None:
        self.session = OnlineSession()
        self.requests = GuestRequests.on_engine(self.session, engine)
        self.executed = 0  # requests that reached the engine
        self.threaded = threaded
        self._ids = itertools.count()
        self._wake: asyncio.Event | None = None
        self._closed = False

    def __enter__(self) -> EngineCalls:
        if self.threaded:
            self.session.start()
        self.requests.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._closed = True
        self.session.close()

    async def drive(self) -> None:
        """Step the session on this event loop (`threaded=False`) until `stop`: after each step, every
        task it woke runs (and submits) before the next one."""
        self._wake = asyncio.Event()
        while not self._closed:
            if self.session.idle:
                self._wake.clear()
                await self._wake.wait()
                continue
            self.session.turn()
            for _ in range(3):  # let tool completions and woken row tasks reach the next step
                await asyncio.sleep(0)

    def stop(self) -> None:
        self._closed = True
        if self._wake is not None:
            self._wake.set()

    def submit(self, prompt: Prompt, params: SamplingParams) -> Future[GenerationResult]:
        """One request, from any thread. A request the engine refuses (a prompt over the context window, a
        pool too small) or that fails in a step ends its future with a `HaloError`."""
        future: Future[GenerationResult] = Future()
        request_id = f"call-{next(self._ids)}"

        def settle(result: GenerationResult | None, error: str | None) -> None:
            if result is not None:
                future.set_result(result)
            else:
                future.set_exception(HaloError(error or "the engine failed"))

        def add() -> None:  # on the session thread, the only one touching the engine (its tokenizer too)
            try:
                ids = self.requests.engine.encode_prompt(prompt)
                self.requests.add_now(request_id, ids, params, settle)
            except Exception as exc:
                future.set_exception(exc)
                return
            self.executed += 1

        self.requests.session.call_soon(add)
        if self._wake is not None:  # the driving event loop's thread (threaded=False): wake `drive`
            self._wake.set()
        return future

    async def generate(self, prompt: Prompt, params: SamplingParams) -> str:
        return (await asyncio.wrap_future(self.submit(prompt, params))).text
