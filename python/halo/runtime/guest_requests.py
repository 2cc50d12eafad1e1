"""`GuestRequests`: single engine requests that belong to no workflow run, stepped by an `OnlineSession`.

Chat completions (`halo serve`) and the benchmark's per-call baselines send one engine request per
call. They do not get an engine loop of their own: they enter a worker of the session's `RunLoop` as
*guest* requests (`LocalWorker.add_guest`), so the one loop that steps workflow epochs steps them too,
in the same engine batches (continuous batching across chat, calls and runs). `add` and `abort` may be
called from any thread; they cross to the session thread through `call_soon`. Completions come back
through each request's callback, on the session thread. A step that fails outside any one request (a
bug, a device error) ends every guest request in flight with that error, and the session goes on.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field

from halo.engine import GenerationResult, LLMEngine, SamplingParams
from halo.errors import HaloError
from halo.runtime.llm_worker import EngineSet, GuestDone, LocalWorker
from halo.runtime.online_session import OnlineSession


@dataclass
class GuestRequests:
    """Guest requests on `worker`'s engine of `model`, stepped by `session` (see the module doc)."""

    session: OnlineSession
    worker: LocalWorker
    model: str
    _callbacks: dict[str, GuestDone] = field(default_factory=dict)  # session thread only

    @classmethod
    def on_engine(cls, session: OnlineSession, engine: LLMEngine, model: str = "guest") -> GuestRequests:
        """Guest requests on an engine no compiled workflow holds: a worker of its own that loads nothing."""

        def no_loading(name: str) -> LLMEngine:
            raise HaloError(f"this worker holds one engine ({model!r}) and loads no other model ({name!r})")

        engines = EngineSet(no_loading, capacity=1, engines=OrderedDict({model: engine}))
        return cls(session, LocalWorker(0, engines), model)

    @property
    def engine(self) -> LLMEngine:
        return self.worker.engines.engines[self.model]

    @property
    def in_flight(self) -> int:
        return len(self._callbacks)

    def start(self) -> None:
        """Have the session step this worker even when no run is active (call before the first `add`)."""
        self.session.add_guest_worker(self.worker)
        self.session.on_step_failure(self._fail_all)

    def add(self, request_id: str, prompt_ids: list[int], params: SamplingParams, on_done: GuestDone) -> None:
        """Queue one request; `on_done(result, None)` or `on_done(None, message)` follows on the session thread.
        A request the engine refuses (too long for the context, too big for the pool) ends at once the
        same way, with the engine's message."""
        self.session.call_soon(lambda: self.add_now(request_id, prompt_ids, params, on_done))

    def add_now(self, request_id: str, prompt_ids: list[int], params: SamplingParams, on_done: GuestDone) -> None:
        """`add`, on the session thread (raises what the engine raises instead of calling `on_done`)."""

        def finished(result: GenerationResult | None, error: str | None) -> None:
            self._callbacks.pop(request_id, None)
            on_done(result, error)

        self.worker.add_guest(self.model, prompt_ids, params, request_id, finished)
        self._callbacks[request_id] = finished

    def abort(self, request_id: str) -> None:
        """Drop a request (its callback is never called); from any thread."""
        self.session.call_soon(lambda: self.abort_now(request_id))

    def abort_now(self, request_id: str) -> None:
        if self._callbacks.pop(request_id, None) is not None:
            self.worker.abort_guest(request_id)

    def output_so_far(self, request_id: str) -> list[int]:
        """Tokens generated so far (session thread, between steps)."""
        return self.engine.output_so_far(request_id)

    def end_all(self, end: Callable[[str], None]) -> int:
        """Abort every request in flight and call `end(request_id)` for each (session thread); how many."""
        ids = list(self._callbacks)
        for request_id in ids:
            self.abort_now(request_id)
            end(request_id)
        return len(ids)

    def _fail_all(self, exc: BaseException) -> None:
        message = f"the engine failed: {type(exc).__name__}: {exc}"
        for request_id, callback in list(self._callbacks.items()):
            self.worker.abort_guest(request_id)
            callback(None, message)
        self._callbacks.clear()
