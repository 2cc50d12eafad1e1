"""One shared engine behind an asyncio front, as a serving engine is: requests join the running
batch at the next step (continuous batching); the engine's prefix cache reuses shared prompt heads."""

from __future__ import annotations

import asyncio

from halo.engine import LLMEngine, SamplingParams
from halo.engine.llm_engine import Prompt
from halo.engine.sampling_params import GenerationResult


class EngineLoop:
    """`await generate(prompt, params)` from any task; `run()` is the step loop (one task drives it)."""

    def __init__(self, engine: LLMEngine) -> None:
        self.engine = engine
        self.executed = 0
        self._waiting: dict[str, asyncio.Future[GenerationResult]] = {}
        self._wake = asyncio.Event()
        self._stopped = False

    async def generate(self, prompt: Prompt, params: SamplingParams) -> GenerationResult:
        request_id = self.engine.add_request(prompt, params)  # a bad request raises here, to its caller
        self.executed += 1
        future = asyncio.get_running_loop().create_future()
        self._waiting[request_id] = future
        self._wake.set()
        return await future

    def stop(self) -> None:
        self._stopped = True
        self._wake.set()

    async def run(self) -> None:
        # Invariant: every request the engine holds has a waiting future; each step resolves the
        # futures of the requests it finished, then yields so woken tasks can submit before the next.
        while not self._stopped:
            if not self.engine.has_unfinished():
                self._wake.clear()
                await self._wake.wait()
                continue
            try:
                finished = self.engine.step()
            except Exception as exc:  # the pool cannot fit what is queued: fail everything waiting
                for request_id, future in self._waiting.items():
                    self.engine.abort(request_id)
                    if not future.done():
                        future.set_exception(exc)
                self._waiting.clear()
                continue
            for result in finished:
                future = self._waiting.pop(result.request_id)
                if not future.done():
                    future.set_result(result)
            for _ in range(3):  # let tool completions and woken row tasks reach the next step
                await asyncio.sleep(0)
