"""`POST /v1/chat/completions` and `POST /v1/completions` (plain and `stream: true`) and `GET /v1/models`,
through the `ChatFront`: one code path for both endpoints (`_serve`), which differ only in their request
model and how a `Wire` writes their JSON. A request's `n` choices (per prompt) are one engine request
each; a stream interleaves their chunks, each tagged with its choice's `index`.

A completion whose client goes away is aborted in the engine at once, streaming or not: a plain one
watches the connection while it waits (`until_disconnected`), so it does not hold its slot in the batch
and the admission queue until `max_tokens`.
"""

from __future__ import annotations

import asyncio
import json
import math
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import ValidationError

from halo.errors import HaloError, InvalidRequestError
from halo.runtime.chat_engine import GenerationResult
from halo.serve.api_errors import ApiError, error_body
from halo.serve.chat_front import ChatCancelled, ChatClosed, ChatEvent, ChatJob, Delta, Done, Failed
from halo.serve.openai_schemas import (
    CHAT,
    TEXT,
    ChatCompletionRequest,
    CompletionRequest,
    Plan,
    UnsupportedField,
    Wire,
    model_json,
    usage,
)
from halo.serve.request_body import location, read_json

router = APIRouter()


@router.get("/v1/models")
async def list_models(request: Request) -> dict[str, Any]:
    state = request.app.state.halo
    return {"object": "list", "data": [model_json(m, state.created) for m in state.chat_models]}


@router.get("/v1/models/{model_id:path}")
async def get_model(model_id: str, request: Request) -> dict[str, Any]:
    state = request.app.state.halo
    _check_model(state, model_id)
    return model_json(model_id, state.created)


@router.post("/v1/chat/completions", response_model=None)
async def chat_completions(request: Request) -> JSONResponse | StreamingResponse:
    return await _serve(request, ChatCompletionRequest, CHAT, "chat completion")


@router.post("/v1/completions", response_model=None)
async def completions(request: Request) -> JSONResponse | StreamingResponse:
    return await _serve(request, CompletionRequest, TEXT, "completion")


async def _serve(request: Request, model: type[ChatCompletionRequest | CompletionRequest], wire: Wire,
                 what: str) -> JSONResponse | StreamingResponse:  # fmt: skip
    """Both endpoints: validate, plan, admit, submit one job per choice, then answer or stream."""
    state = request.app.state.halo
    refuse_when_draining(state)
    body = await read_json(request)
    try:
        asked = model.model_validate(body)
    except ValidationError as exc:
        raise ApiError(400, f"invalid {what} request: " + validation_message(exc), param=first_location(exc)) from None
    try:  # what the request asks for first, then whether this server has the model
        plan = asked.plan()
    except UnsupportedField as exc:
        raise ApiError(400, str(exc), code="unsupported_parameter", param=exc.param) from None
    except InvalidRequestError as exc:
        raise ApiError(400, str(exc)) from None
    _check_model(state, plan.model)
    if state.chat is None:
        raise ApiError(404, "this server serves no chat model", code="model_not_found", param="model")
    count = len(plan.choices)
    if count > state.admission.limit:
        raise ApiError(
            400,
            f"this request asks for {count} completions (prompts x n) but the server admits at "
            f"most {state.admission.limit} at once",
            param="n",
        )
    if not state.admission.try_acquire(count):
        state.metrics.reject("queue_full")
        raise queue_full(state)
    loop = asyncio.get_running_loop()
    events: asyncio.Queue[tuple[int, ChatEvent]] = asyncio.Queue()
    jobs = [ChatJob(prompt, params, plan.max_tokens, plan.stream, loop, events, index)
            for index, (prompt, params) in enumerate(plan.choices)]  # fmt: skip
    try:
        state.chat.submit(*jobs)
        failure = None
        for _ in jobs:  # every job's Accepted or Failed comes before any later event (see ChatFront)
            _, first = await events.get()
            if isinstance(first, Failed) and failure is None:
                failure = first.error
    except ChatClosed as exc:
        state.admission.release(count)
        raise shutting_down(state, str(exc)) from None
    except BaseException:
        state.chat.abort(*jobs)
        state.admission.release(count)
        raise
    if failure is not None:
        state.chat.abort(*jobs)
        state.admission.release(count)
        raise _engine_error(failure)
    answer = Answer(state, plan, wire, jobs, events, f"{wire.id_prefix}{uuid.uuid4().hex}")
    if not plan.stream:
        try:
            return await _complete(request, answer)
        finally:
            state.admission.release(count)
    return StreamingResponse(_stream(answer), media_type="text/event-stream", headers={"Cache-Control": "no-cache"})


@dataclass
class Answer:
    """One admitted request's jobs (one per choice) and the queue their events arrive on."""

    state: Any
    plan: Plan
    wire: Wire
    jobs: list[ChatJob]
    events: asyncio.Queue[tuple[int, ChatEvent]]
    completion_id: str

    def logprobs(self, result: GenerationResult) -> dict[str, Any] | None:
        return self.wire.logprobs(result, self.plan.top_logprobs, self.state.chat.token_bytes)

    def abort(self) -> None:
        self.state.chat.abort(*self.jobs)


async def _complete(request: Request, answer: Answer) -> JSONResponse:
    """Wait for every choice's result while watching the connection; a client gone aborts them all."""
    results: dict[int, GenerationResult] = {}
    gone = asyncio.ensure_future(until_disconnected(request))
    try:
        while len(results) < len(answer.jobs):
            event = asyncio.ensure_future(answer.events.get())
            await asyncio.wait({event, gone}, return_when=asyncio.FIRST_COMPLETED)
            if not event.done():
                event.cancel()
                answer.abort()
                # Nobody reads this answer; it only ends the handler in the server's error shape.
                return JSONResponse(error_body(499, "the client closed the connection"), status_code=499)
            match event.result():
                case (_, Failed(error)):
                    answer.abort()
                    raise _engine_error(error)
                case (index, Done(result)):
                    results[index] = result
        ordered = [results[i] for i in range(len(answer.jobs))]
        plan = answer.plan
        return JSONResponse(
            answer.wire.completion(
                answer.completion_id, plan.model, ordered, plan.n, plan.top_logprobs, answer.state.chat.token_bytes
            )
        )
    except asyncio.CancelledError:
        answer.abort()
        raise
    finally:
        gone.cancel()


async def until_disconnected(request: Request) -> None:
    """Return once the client has closed the connection (the body was read already, so the only message
    left to receive is the disconnect)."""
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            return


async def _stream(answer: Answer) -> AsyncIterator[str]:
    """Every choice's chunks as they come, tagged with its `index`; a choice's last chunk carries its
    finish_reason and, when asked for, the logprobs of all its tokens; then the usage chunk if asked."""
    plan, wire = answer.plan, answer.wire
    created = int(time.time())
    results: dict[int, GenerationResult] = {}
    finished = False

    def chunk(index: int | None, text: str | None, **kw: Any) -> str:
        return _sse(wire.chunk(answer.completion_id, plan.model, created, index, text, **kw))

    try:
        for job in answer.jobs:
            opening = wire.opening(job.index)
            if opening is not None:
                yield chunk(job.index, None, delta=opening)
        while len(results) < len(answer.jobs):
            index, event = await answer.events.get()
            if isinstance(event, Delta):
                yield chunk(index, event.text)
            elif isinstance(event, Failed):
                finished = True
                answer.abort()
                yield _sse(_engine_error(event.error).response_body())
                break
            elif isinstance(event, Done):
                results[index] = event.result
                yield chunk(index, None, finish_reason=event.result.finish_reason,
                            logprobs=answer.logprobs(event.result))  # fmt: skip
        else:
            finished = True
            if plan.include_usage:
                yield chunk(None, None, usage_=usage([results[i] for i in range(len(answer.jobs))], plan.n))
        yield "data: [DONE]\n\n"
    finally:
        if not finished:  # the client went away: stop generating for it
            answer.abort()
        answer.state.admission.release(len(answer.jobs))


def _sse(payload: dict[str, Any]) -> str:
    return f"data: {json.dumps(payload)}\n\n"


def _check_model(state: Any, model: str) -> None:
    if model not in state.chat_models:
        served = ", ".join(state.chat_models) or "none"
        raise ApiError(
            404, f"The model '{model}' does not exist (served: {served})", code="model_not_found", param="model"
        )


def _engine_error(exc: BaseException) -> ApiError:
    if isinstance(exc, ChatCancelled):
        return ApiError(503, str(exc), code="server_shutting_down")
    if isinstance(exc, HaloError):
        return ApiError(400, str(exc), code=type(exc).__name__)
    return ApiError(500, f"generation failed: {type(exc).__name__}: {exc}")


def validation_message(exc: ValidationError) -> str:
    return "; ".join(f"{location(e['loc'])}: {e['msg']}" for e in exc.errors())


def first_location(exc: ValidationError) -> str | None:
    errors = exc.errors()
    return location(errors[0]["loc"]) if errors else None


def refuse_when_draining(state: Any) -> None:
    """New work during the shutdown grace period: 503 with Retry-After, before anything is recorded."""
    if state.shutting_down.is_set():
        raise shutting_down(state, "the server is shutting down and accepts no new work")


def shutting_down(state: Any, message: str) -> ApiError:
    state.metrics.reject("shutting_down")
    retry = state.config.shutdown_retry_after_s
    return ApiError(
        503, f"{message}; retry after {retry} s", code="server_shutting_down", headers={"Retry-After": str(retry)}
    )


def queue_full(state: Any) -> ApiError:
    retry = max(1, math.ceil(state.metrics.mean_epoch_s()))
    return ApiError(
        429,
        f"the admission queue is full ({state.admission.limit} requests and rows in flight); retry after {retry} s",
        code="queue_full",
        headers={"Retry-After": str(retry)},
    )
