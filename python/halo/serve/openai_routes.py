"""`POST /v1/chat/completions` (plain and `stream: true`) and `GET /v1/models`, on the engine loop."""

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
from halo.serve.api_errors import ApiError
from halo.serve.engine_loop import ChatJob, EngineLoopClosed
from halo.serve.openai_schemas import ChatCompletionRequest, chunk_json, completion_json, model_json, usage

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
    body = await read_json(request)
    try:
        chat = ChatCompletionRequest.model_validate(body)
    except ValidationError as exc:
        raise ApiError(400, "invalid chat completion request: " + validation_message(exc)) from None
    _check_model(state, chat.model)
    try:
        params = chat.sampling_params()
        messages = chat.engine_messages()
    except InvalidRequestError as exc:
        raise ApiError(400, str(exc)) from None
    if state.loop is None:
        raise ApiError(404, "this server serves no chat model", code="model_not_found", param="model")
    if not state.admission.try_acquire(1):
        state.metrics.reject("queue_full")
        raise queue_full(state)
    job = ChatJob(messages, params, chat.requested_max_tokens(), chat.stream, asyncio.get_running_loop())
    try:
        state.loop.submit(job)
        kind, value = await job.events.get()
    except EngineLoopClosed as exc:
        state.admission.release(1)
        raise ApiError(503, str(exc)) from None
    except BaseException:
        state.loop.abort(job)
        state.admission.release(1)
        raise
    if kind == "error":
        state.admission.release(1)
        raise _engine_error(value)
    completion_id = f"chatcmpl-{uuid.uuid4().hex}"
    if not chat.stream:
        try:
            while True:
                kind, value = await job.events.get()
                if kind == "error":
                    raise _engine_error(value)
                if kind == "done":
                    return JSONResponse(completion_json(completion_id, chat.model, value))
        except asyncio.CancelledError:
            state.loop.abort(job)
            raise
        finally:
            state.admission.release(1)
    include_usage = bool(chat.stream_options and chat.stream_options.include_usage)
    return StreamingResponse(_stream(state, job, completion_id, chat.model, include_usage),
                             media_type="text/event-stream", headers={"Cache-Control": "no-cache"})


async def _stream(state: Any, job: ChatJob, completion_id: str, model: str, include_usage: bool) -> AsyncIterator[str]:
    created = int(time.time())
    finished = False
    try:
        yield _sse(chunk_json(completion_id, model, created, {"role": "assistant", "content": ""}))
        while True:
            kind, value = await job.events.get()
            if kind == "delta":
                yield _sse(chunk_json(completion_id, model, created, {"content": value}))
            elif kind == "error":
                finished = True
                yield _sse(_engine_error(value).response_body())
                break
            elif kind == "done":
                finished = True
                yield _sse(chunk_json(completion_id, model, created, {}, value.finish_reason))
                if include_usage:
                    yield _sse(chunk_json(completion_id, model, created, None, usage_=usage(value)))
                break
        yield "data: [DONE]\n\n"
    finally:
        if not finished:  # the client went away: stop generating for it
            state.loop.abort(job)
        state.admission.release(1)


def _sse(payload: dict[str, Any]) -> str:
    return f"data: {json.dumps(payload)}\n\n"


def _check_model(state: Any, model: str) -> None:
    if model not in state.chat_models:
        served = ", ".join(state.chat_models) or "none"
        raise ApiError(404, f"The model '{model}' does not exist (served: {served})", code="model_not_found",
                       param="model")


def _engine_error(exc: BaseException) -> ApiError:
    if isinstance(exc, HaloError):
        return ApiError(400, str(exc), code=type(exc).__name__)
    return ApiError(500, f"generation failed: {type(exc).__name__}: {exc}")


async def read_json(request: Request) -> Any:
    raw = await request.body()
    try:
        return json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ApiError(400, f"request body is not valid JSON: {exc}") from None


def validation_message(exc: ValidationError) -> str:
    return "; ".join(f"{'.'.join(str(p) for p in e['loc']) or 'body'}: {e['msg']}" for e in exc.errors())


def queue_full(state: Any) -> ApiError:
    retry = max(1, math.ceil(state.metrics.mean_epoch_s()))
    return ApiError(429, f"the admission queue is full ({state.admission.limit} requests and rows in flight); "
                    f"retry after {retry} s", code="queue_full", headers={"Retry-After": str(retry)})
