"""`EngineLoop`: the one thread that owns an `LLMEngine`; chat requests cross to it through a queue.

Invariant: only the loop thread touches the engine. Handlers `submit` a `ChatJob` and read its events
from an asyncio queue the loop thread feeds through the handler's event loop: first `accepted` (with
the prompt's token count) or `error`, then `delta` texts for streaming jobs, then `done` with the
`GenerationResult`. Requests added between steps join the running batch (continuous batching).

`close(timeout)` takes no new requests and lets those in flight finish for up to `timeout`; whatever is
still generating then ends with an `error` event carrying `ChatCancelled`, which the route answers as a
503 in OpenAI's error shape (a stream gets it as its last event), never as a dropped connection.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import queue
import threading
from dataclasses import dataclass, field, replace
from typing import Any

from halo.runtime.chat_engine import GenerationResult, LLMEngine, SamplingParams

log = logging.getLogger("halo.serve")
IDLE_POLL_S = 0.1
CANCEL_JOIN_S = 30.0  # how long close waits for the loop to end what it cancelled (one engine step)


class EngineLoopClosed(Exception):
    """The loop is shutting down and takes no new requests."""


class ChatCancelled(Exception):
    """The server shut down before this completion finished."""


CANCEL_MESSAGE = "cancelled: the server shut down before this completion finished; send it again"


@dataclass
class ChatJob:
    """One chat request as the loop sees it; `max_tokens=None` means the server default, clipped."""

    messages: list[dict[str, str]]
    params: SamplingParams
    max_tokens: int | None
    stream: bool
    loop: asyncio.AbstractEventLoop
    events: asyncio.Queue[tuple[str, Any]] = field(default_factory=asyncio.Queue)
    request_id: str = ""
    sent_text: str = ""  # streamed so far

    def post(self, kind: str, value: Any) -> None:
        self.loop.call_soon_threadsafe(self.events.put_nowait, (kind, value))


class EngineLoop:
    """Owns `engine` on its own thread; see the module doc for the job protocol."""

    def __init__(self, engine: LLMEngine, *, default_max_tokens: int = 512, on_done: Any = None) -> None:
        self.engine = engine
        self.default_max_tokens = default_max_tokens
        self.on_done = on_done  # called with (job, result) on the loop thread, for counters
        self._inbox: queue.Queue[tuple[str, Any]] = queue.Queue()
        self._jobs: dict[str, ChatJob] = {}
        self._ids = itertools.count()
        self._closing = False
        self._cancelled = False  # set on the loop thread: requests that still arrive end at once
        self._thread = threading.Thread(target=self._loop, name="halo-engine-loop", daemon=True)

    # -- protocol: start / submit / abort / close ---------------------------------------------------

    def start(self) -> None:
        self._thread.start()

    def submit(self, job: ChatJob) -> ChatJob:
        if self._closing:
            raise EngineLoopClosed("the server is shutting down and accepts no new completions")
        job.request_id = f"chat-{next(self._ids)}"
        self._inbox.put(("add", job))
        return job

    def abort(self, job: ChatJob) -> None:
        self._inbox.put(("abort", job.request_id))

    def close(self, timeout: float | None = None) -> bool:
        """Let the requests in flight finish for up to `timeout`, then cancel the rest (ChatCancelled) and
        stop; True if none had to be cancelled."""
        self._closing = True
        self._inbox.put(("stop", None))
        if self._thread.is_alive():
            self._thread.join(timeout)
        if not self._thread.is_alive():
            return True
        self._inbox.put(("cancel", None))
        self._thread.join(CANCEL_JOIN_S)
        return False

    @property
    def in_flight(self) -> int:
        return len(self._jobs)

    # -- the loop thread ----------------------------------------------------------------------------

    def _loop(self) -> None:
        stopping = False
        while True:
            stopping = self._drain_inbox(block=not self._jobs and not stopping) or stopping
            if not self._jobs:
                if stopping and self._inbox.empty():
                    return
                continue
            try:
                finished = self.engine.step()
            except Exception as exc:  # e.g. KVCacheFullError: fail what is in flight, keep serving
                log.exception("engine step failed")
                for rid, job in list(self._jobs.items()):
                    self.engine.abort(rid)
                    job.post("error", exc)
                self._jobs.clear()
                continue
            for result in finished:
                job = self._jobs.pop(result.request_id, None)
                if job is not None:
                    self._finish(job, result)
            for rid, job in self._jobs.items():
                if job.stream:
                    self._stream_delta(rid, job)

    def _drain_inbox(self, block: bool) -> bool:
        """Apply queued commands; True if a stop arrived."""
        stopping = False
        try:
            command, value = self._inbox.get(timeout=IDLE_POLL_S) if block else self._inbox.get_nowait()
            while True:
                if command == "add":
                    self._add(value)
                elif command == "abort":
                    if self._jobs.pop(value, None) is not None:
                        self.engine.abort(value)
                elif command == "cancel":
                    self._cancel_all(lambda rid: self.engine.abort(rid))
                else:
                    stopping = True
                command, value = self._inbox.get_nowait()
        except queue.Empty:
            pass
        return stopping

    def _cancel_all(self, abort: Any) -> int:
        """End every job in flight with ChatCancelled (on the thread that steps the engine); how many."""
        self._cancelled = True
        jobs = list(self._jobs.items())
        for rid, job in jobs:
            abort(rid)
            job.post("error", ChatCancelled(CANCEL_MESSAGE))
        self._jobs.clear()
        return len(jobs)

    def _add(self, job: ChatJob) -> None:
        if self._cancelled:
            job.post("error", ChatCancelled(CANCEL_MESSAGE))
            return
        try:
            ids = self.engine.encode_prompt(job.messages)
            max_tokens = job.max_tokens
            if max_tokens is None:
                max_tokens = max(1, min(self.default_max_tokens, self.engine.config.context_length - len(ids)))
            self._submit(job, ids, replace(job.params, max_tokens=max_tokens))
        except Exception as exc:  # invalid prompt, too long for the context, too big for the pool
            job.post("error", exc)
            return
        self._jobs[job.request_id] = job
        job.post("accepted", len(ids))

    def _submit(self, job: ChatJob, ids: list[int], params: SamplingParams) -> None:
        """Queue the encoded request where this loop steps it (here: its own engine)."""
        self.engine.add_request(ids, params, job.request_id)

    def _stream_delta(self, rid: str, job: ChatJob) -> None:
        ids = self.engine.output_so_far(rid)  # between steps, on the thread that owns the engine
        if not ids:
            return
        text = self.engine.tokenizer.decode(ids)
        hold = max((len(s) for s in job.params.stop), default=1) - 1  # a stop string may still complete
        safe = text[: len(text) - hold].rstrip("\ufffd")  # and a multi-byte character may be half decoded
        if len(safe) > len(job.sent_text) and safe.startswith(job.sent_text):
            job.post("delta", safe[len(job.sent_text):])
            job.sent_text = safe

    def _finish(self, job: ChatJob, result: GenerationResult) -> None:
        if job.stream and result.text.startswith(job.sent_text) and len(result.text) > len(job.sent_text):
            job.post("delta", result.text[len(job.sent_text):])
            job.sent_text = result.text
        if self.on_done is not None:
            self.on_done(job, result)
        job.post("done", result)
