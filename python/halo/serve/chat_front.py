"""`ChatFront`: completions (chat and text) as guest requests of the server's `OnlineSession`, with their
event stream.

There is no engine loop here: the session's one loop thread steps every engine (workflow epochs and
chat alike). When the chat model is the engine a served workflow already holds, chat requests enter
that workflow's worker, sharing its engine steps with the epochs (one engine in memory); otherwise
the chat engine gets a worker of its own on the same session (`GuestRequests.on_engine`).

Protocol: a handler `submit`s the `ChatJob`s of one request (one per choice, all added to the engine in
the same session callback, so they join the same step and the prompt's KV is shared) and reads their
events from one asyncio queue that the session thread feeds through the handler's event loop, each as
`(job.index, event)`: first `Accepted` (with the prompt's token count) or `Failed` for every job — all
of them before any later event, as the jobs are added together — then `Delta` texts for streaming
jobs, then `Done` with the `GenerationResult` (or `Failed`).

`close(timeout)` takes no new requests and lets those in flight finish for up to `timeout`; whatever is
still generating then ends with `Failed(ChatCancelled)`, which the route answers as a 503 in OpenAI's
error shape (a stream gets it as its last event), never as a dropped connection.
"""

from __future__ import annotations

import asyncio
import itertools
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace

from halo.runtime.chat_engine import GenerationResult, SamplingParams
from halo.runtime.guest_requests import GuestRequests
from halo.serve.openai_schemas import Prompt

CANCEL_JOIN_S = 30.0  # how long close waits for the session thread to end what it cancelled (one step)


class ChatClosed(Exception):
    """The server is shutting down and takes no new chat completions."""


class ChatCancelled(Exception):
    """The server shut down before this completion finished."""


CANCEL_MESSAGE = "cancelled: the server shut down before this completion finished; send it again"


@dataclass(frozen=True)
class Accepted:
    prompt_tokens: int


@dataclass(frozen=True)
class Delta:
    text: str


@dataclass(frozen=True)
class Done:
    result: GenerationResult


@dataclass(frozen=True)
class Failed:
    error: BaseException


ChatEvent = Accepted | Delta | Done | Failed


@dataclass
class ChatJob:
    """One engine request (one choice of a completion) as the front sees it; `max_tokens=None` means the
    server default, clipped to the context; `index` tags its events on the (shared) `events` queue."""

    prompt: Prompt
    params: SamplingParams
    max_tokens: int | None
    stream: bool
    loop: asyncio.AbstractEventLoop
    events: asyncio.Queue[tuple[int, ChatEvent]] = field(default_factory=asyncio.Queue)
    index: int = 0
    request_id: str = ""
    sent_text: str = ""  # streamed so far

    def post(self, event: ChatEvent) -> None:
        self.loop.call_soon_threadsafe(self.events.put_nowait, (self.index, event))


class ChatFront:
    """Chat jobs over `requests` (see the module doc); `on_done(job, result)` runs on the session thread."""

    def __init__(
        self,
        requests: GuestRequests,
        *,
        default_max_tokens: int = 512,
        on_done: Callable[[ChatJob, GenerationResult], None] | None = None,
    ) -> None:
        self.requests = requests
        self.default_max_tokens = default_max_tokens
        self.on_done = on_done
        self._jobs: dict[str, ChatJob] = {}  # session thread only
        self._ids = itertools.count()
        self._closing = False
        self._cancelled = False  # set on the session thread: requests that still arrive end at once

    @property
    def engine(self):  # -> LLMEngine
        return self.requests.engine

    @property
    def in_flight(self) -> int:
        return len(self._jobs)

    def start(self) -> None:
        self.requests.start()
        self.requests.session.after_step(self._stream_all)

    def submit(self, *jobs: ChatJob) -> None:
        """Queue `jobs` to be added to the engine together (see the module doc)."""
        if self._closing:
            raise ChatClosed("the server is shutting down and accepts no new completions")
        for job in jobs:
            job.request_id = f"chat-{next(self._ids)}"

        def add() -> None:
            for job in jobs:
                self._add(job)

        self.requests.session.call_soon(add)

    def abort(self, *jobs: ChatJob) -> None:
        """Stop generating for `jobs` (those already done are left as they are)."""

        def drop() -> None:
            for job in jobs:
                if self._jobs.pop(job.request_id, None) is not None:
                    self.requests.abort_now(job.request_id)

        self.requests.session.call_soon(drop)

    def token_bytes(self, token: int) -> bytes:
        """The bytes token id `token` stands for (for logprobs), from the grammar engine's byte-exact view of
        the vocabulary: a byte-level token may be half of a UTF-8 character, which decoding it alone as
        text would turn into U+FFFD."""
        return bytes(self.requests.engine.grammar.lltokenizer.decode_bytes([token]))

    def close(self, timeout: float | None = None) -> bool:
        """Take no new requests, let those in flight finish for up to `timeout`, then cancel the rest on the
        session thread (it must still run: the app closes the front before the session); True if none was.
        The cancel pass runs even when nothing is left: a request queued to the session just before
        closing is added after this wait, and must end too."""
        self._closing = True
        deadline = None if timeout is None else time.monotonic() + timeout
        while self._jobs and (deadline is None or time.monotonic() < deadline):
            time.sleep(0.01)
        cancelled: list[int] = []
        done = threading.Event()

        def cancel() -> None:
            self._cancelled = True
            cancelled.append(self.requests.end_all(self._cancel))
            done.set()

        self.requests.session.call_soon(cancel)
        done.wait(CANCEL_JOIN_S)
        return cancelled == [0]

    # -- on the session thread ----------------------------------------------------------------------------

    def _add(self, job: ChatJob) -> None:
        if self._cancelled:
            job.post(Failed(ChatCancelled(CANCEL_MESSAGE)))
            return
        engine = self.requests.engine
        try:
            ids = engine.encode_prompt(job.prompt)
            max_tokens = job.max_tokens
            if max_tokens is None:
                max_tokens = max(1, min(self.default_max_tokens, engine.config.context_length - len(ids)))
            params = replace(job.params, max_tokens=max_tokens)
            self.requests.add_now(job.request_id, ids, params, lambda r, e: self._finished(job, r, e))
        except Exception as exc:  # invalid prompt, too long for the context, too big for the pool
            job.post(Failed(exc))
            return
        self._jobs[job.request_id] = job
        job.post(Accepted(len(ids)))

    def _cancel(self, request_id: str) -> None:
        job = self._jobs.pop(request_id, None)
        if job is not None:
            job.post(Failed(ChatCancelled(CANCEL_MESSAGE)))

    def _finished(self, job: ChatJob, result: GenerationResult | None, error: str | None) -> None:
        self._jobs.pop(job.request_id, None)
        if result is None:
            job.post(Failed(RuntimeError(error or "the engine failed")))
            return
        if result.finish_reason == "error":  # the output format's matcher failed: no answer to give
            job.post(Failed(RuntimeError(result.format_error or "the output format failed")))
            return
        if job.stream and result.text.startswith(job.sent_text) and len(result.text) > len(job.sent_text):
            job.post(Delta(result.text[len(job.sent_text) :]))
            job.sent_text = result.text
        if self.on_done is not None:
            self.on_done(job, result)
        job.post(Done(result))

    def _stream_all(self) -> None:
        for rid, job in list(self._jobs.items()):
            if job.stream:
                self._stream_delta(rid, job)

    def _stream_delta(self, rid: str, job: ChatJob) -> None:
        ids = self.requests.output_so_far(rid)  # between steps, on the thread that steps the engine
        if not ids:
            return
        text = self.requests.engine.tokenizer.decode(ids)
        hold = max((len(s) for s in job.params.stop), default=1) - 1  # a stop string may still complete
        safe = text[: len(text) - hold].rstrip("\ufffd")  # and a multi-byte character may be half decoded
        if len(safe) > len(job.sent_text) and safe.startswith(job.sent_text):
            job.post(Delta(safe[len(job.sent_text) :]))
            job.sent_text = safe
