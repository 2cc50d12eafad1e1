"""`POST /v1/chat/completions` (plain and `stream: true`) and `GET /v1/models`, through the `ChatFront`.

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
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import ValidationError

from halo.errors import HaloError, InvalidRequestError
from halo.serve.api_errors import ApiError, error_body
from halo.serve.chat_front import Accepted, ChatCancelled, ChatClosed, ChatJob, Delta, Done, Failed
from halo.serve.openai_schemas import (
    ChatCompletionRequest,
    UnsupportedField,
    chunk_json,
    completion_json,
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
    state = request.app.state.halo
    refuse_when_draining(state)
    body = await read_json(request)
    try:
        chat = ChatCompletionRequest.model_validate(body)
    except ValidationError as exc:
        raise ApiError(400, "invalid chat completion request: " + validation_message(exc),
                       param=first_location(exc)) from None
    try:  # what the request asks for first, then whether this server has the model
        chat.check_supported()
        params = chat.sampling_params()
        messages = chat.engine_messages()
    except UnsupportedField as exc:
        raise ApiError(400, str(exc), code="unsupported_parameter", param=exc.param) from None
    except InvalidRequestError as exc:
        raise ApiError(400, str(exc)) from None
    _check_model(state, chat.model)
    if state.chat is None:
        raise ApiError(404, "this server serves no chat model", code="model_not_found", param="model")
    if not state.admission.try_acquire(1):
        state.metrics.reject("queue_full")
        raise queue_full(state)
    job = ChatJob(messages, params, chat.requested_max_tokens(), chat.stream, asyncio.get_running_loop())
    try:
        state.chat.submit(job)
        first = await job.events.get()
    except ChatClosed as exc:
        state.admission.release(1)
        raise shutting_down(state, str(exc)) from None
    except BaseException:
        state.chat.abort(job)
        state.admission.release(1)
        raise
    if isinstance(first, Failed):
        state.admission.release(1)
        raise _engine_error(first.error)
    assert isinstance(first, Accepted)
    completion_id = f"chatcmpl-{uuid.uuid4().hex}"
    if not chat.stream:
        try:
            return await _complete(state, request, job, completion_id, chat.model)
        finally:
            state.admission.release(1)
    include_usage = bool(chat.stream_options and chat.stream_options.include_usage)
    return StreamingResponse(_stream(state, job, completion_id, chat.model, include_usage),
                             media_type="text/event-stream", headers={"Cache-Control": "no-cache"})


async def _complete(state: Any, request: Request, job: ChatJob, completion_id: str, model: str) -> JSONResponse:
    """Wait for a plain completion's result while watching its connection; a client gone aborts it."""
    gone = asyncio.ensure_future(until_disconnected(request))
    try:
        while True:
            event = asyncio.ensure_future(job.events.get())
            await asyncio.wait({event, gone}, return_when=asyncio.FIRST_COMPLETED)
            if not event.done():
                event.cancel()
                state.chat.abort(job)
                # Nobody reads this answer; it only ends the handler in the server's error shape.
                return JSONResponse(error_body(499, "the client closed the connection"), status_code=499)
            match event.result():
                case Failed(error):
                    raise _engine_error(error)
                case Done(result):
                    return JSONResponse(completion_json(completion_id, model, result))
    except asyncio.CancelledError:
        state.chat.abort(job)
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


async def _stream(state: Any, job: ChatJob, completion_id: str, model: str, include_usage: bool) -> AsyncIterator[str]:
    created = int(time.time())
    finished = False
    try:
        yield _sse(chunk_json(completion_id, model, created, {"role": "assistant", "content": ""}))
        while True:
            event = await job.events.get()
            if isinstance(event, Delta):
                yield _sse(chunk_json(completion_id, model, created, {"content": event.text}))
            elif isinstance(event, Failed):
                finished = True
                yield _sse(_engine_error(event.error).response_body())
                break
            elif isinstance(event, Done):
                finished = True
                yield _sse(chunk_json(completion_id, model, created, {}, event.result.finish_reason))
                if include_usage:
                    yield _sse(chunk_json(completion_id, model, created, None, usage_=usage(event.result)))
                break
        yield "data: [DONE]\n\n"
    finally:
        if not finished:  # the client went away: stop generating for it
            state.chat.abort(job)
        state.admission.release(1)


def _sse(payload: dict[str, Any]) -> str:
    return f"data: {json.dumps(payload)}\n\n"


def _check_model(state: Any, model: str) -> None:
    if model not in state.chat_models:
        served = ", ".join(state.chat_models) or "none"
        raise ApiError(404, f"The model '{model}' does not exist (served: {served})", code="model_not_found",
                       param="model")


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
    return ApiError(503, f"{message}; retry after {retry} s", code="server_shutting_down",
                    headers={"Retry-After": str(retry)})


def queue_full(state: Any) -> ApiError:
    retry = max(1, math.ceil(state.metrics.mean_epoch_s()))
    return ApiError(429, f"the admission queue is full ({state.admission.limit} requests and rows in flight); "
                    f"retry after {retry} s", code="queue_full", headers={"Retry-After": str(retry)})
