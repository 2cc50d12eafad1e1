"""`EngineCalls`: the baselines' one-request-per-call access to an engine, stepped by Halo's own loop.

A serving engine steps itself and takes requests from anywhere; so does this: the engine becomes a
worker of an `OnlineSession` (its loop thread steps it, as it steps Halo's runs) and each call is a
guest request on it (`GuestRequests`). The per-call system awaits calls from its row tasks; the
operator-at-a-time system submits a node's whole batch and waits for all. Either way requests in
flight share engine steps (continuous batching) and cached prompt prefixes, and the baselines step
the engine the same way Halo does: they differ only in what reaches the engine when.
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

    def __init__(self, engine: LLMEngine) -> None:
        self.session = OnlineSession()
        self.requests = GuestRequests.on_engine(self.session, engine)
        self.executed = 0  # requests that reached the engine
        self._ids = itertools.count()

    def __enter__(self) -> EngineCalls:
        self.session.start()
        self.requests.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.session.close()

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
        return future

    async def generate(self, prompt: Prompt, params: SamplingParams) -> str:
        return (await asyncio.wrap_future(self.submit(prompt, params))).text
