"""`SessionChatLoop`: chat completions on a compiled workflow's own engine, stepped by the `OnlineSession`.

When the chat model is the model a served workflow already loaded, the server keeps one engine, not
two: the session's loop thread owns it (it steps the workflow epochs there), so chat requests cross
to that thread through `call_soon` and enter the engine as *guest* requests of the worker holding it
(`LocalWorker.add_guest`). They share engine steps with the epochs' requests (continuous batching
across chat and workflows); the worker hands each finished one back through a callback on the same
thread. The job protocol is `EngineLoop`'s (accepted | error, delta..., done).
"""

from __future__ import annotations

import threading
import time
from typing import Any

from halo.runtime.chat_engine import GenerationResult, LLMEngine, SamplingParams
from halo.runtime.online_session import OnlineSession
from halo.serve.engine_loop import CANCEL_JOIN_S, ChatJob, EngineLoop, EngineLoopClosed


class SessionChatLoop(EngineLoop):
    """An `EngineLoop` without a thread of its own: `session` steps `engine`, held by `worker` as `model`."""

    def __init__(
        self,
        engine: LLMEngine,
        session: OnlineSession,
        worker: Any,
        model: str,
        *,
        default_max_tokens: int = 512,
        on_done: Any = None,
    ) -> None:
        super().__init__(engine, default_max_tokens=default_max_tokens, on_done=on_done)
        self.session = session
        self.worker = worker
        self.model = model

    def start(self) -> None:
        self.session.add_guest_worker(self.worker)
        self.session.after_step(self._stream_all)

    def submit(self, job: ChatJob) -> ChatJob:
        if self._closing:
            raise EngineLoopClosed("the server is shutting down and accepts no new completions")
        job.request_id = f"chat-{next(self._ids)}"
        self.session.call_soon(lambda: self._add(job))
        return job

    def abort(self, job: ChatJob) -> None:
        def drop() -> None:
            if self._jobs.pop(job.request_id, None) is not None:
                self.worker.abort_guest(job.request_id)

        self.session.call_soon(drop)

    def close(self, timeout: float | None = None) -> bool:
        """Take no new requests, let those in flight finish for up to `timeout`, then cancel the rest on the
        session thread (it must still run: the app closes this loop before the session); True if none was.
        The cancel pass runs even when nothing is left: a request queued to the session just before
        closing is added after this wait, and must end too."""
        self._closing = True
        deadline = None if timeout is None else time.monotonic() + timeout
        while self._jobs and (deadline is None or time.monotonic() < deadline):
            time.sleep(0.01)
        cancelled: list[int] = []
        done = threading.Event()

        def cancel() -> None:
            cancelled.append(self._cancel_all(self.worker.abort_guest))
            done.set()

        self.session.call_soon(cancel)
        done.wait(CANCEL_JOIN_S)
        return cancelled == [0]

    # -- on the session thread ----------------------------------------------------------------------------

    def _submit(self, job: ChatJob, ids: list[int], params: SamplingParams) -> None:
        self.worker.add_guest(
            self.model, ids, params, job.request_id, lambda result, error: self._guest_done(job, result, error)
        )

    def _guest_done(self, job: ChatJob, result: GenerationResult | None, error: str | None) -> None:
        self._jobs.pop(job.request_id, None)
        if result is None:
            job.post("error", RuntimeError(error or "the engine failed"))
        else:
            self._finish(job, result)

    def _stream_all(self) -> None:
        for rid, job in list(self._jobs.items()):
            if job.stream:
                self._stream_delta(rid, job)
