"""`create_app`: the FastAPI app over compiled workflows and a chat engine, with its background threads.

The app does not own the workflows or the engine (whoever compiled them closes them); it owns the
epoch runner and the engine loop, started with the app and drained when it shuts down: buffered
epochs and chat requests in flight finish before the threads stop.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from halo.serve.api_errors import ApiError, error_response
from halo.serve.config import ServeConfig
from halo.serve.engine_loop import EngineLoop
from halo.serve.epoch_batcher import EpochBatcher
from halo.serve.metrics import LatencyMiddleware, Metrics
from halo.serve.openai_routes import router as openai_router
from halo.serve.protection import AdmissionQueue, ProtectionMiddleware
from halo.serve.run_store import RunStore
from halo.serve.workflow_routes import router as workflow_router


@dataclass
class ServeState:
    """What the routes reach through `request.app.state.halo`."""

    config: ServeConfig
    apps: dict[str, Any]  # workflow name -> CompiledWorkflow
    chat_models: list[str]  # model ids the engine loop answers to
    loop: EngineLoop | None
    batcher: EpochBatcher
    store: RunStore
    admission: AdmissionQueue
    metrics: Metrics
    created: int
    shutdown_timeout_s: float | None = None


def create_app(
    workflows: Mapping[str, Any],
    engine: Any | None = None,
    config: ServeConfig | None = None,
    *,
    model_name: str = "smollm2-135m",
    shutdown_timeout_s: float | None = None,
) -> FastAPI:
    """An app serving `workflows` (name -> CompiledWorkflow) and, if `engine` is given, chat completions
    on it as model `model_name`."""
    config = config or ServeConfig()
    metrics = Metrics()
    store = RunStore(config.max_finished_runs)
    admission = AdmissionQueue(config.queue_limit)
    batcher = EpochBatcher(workflows, store, metrics, epoch_s=config.epoch_ms / 1000.0,
                           epoch_rows=config.epoch_rows, on_finished=admission.release)
    loop = None
    if engine is not None:
        loop = EngineLoop(engine, default_max_tokens=config.default_max_tokens,
                          on_done=lambda job, r: metrics.observe_chat(len(r.token_ids), r.prompt_tokens,
                                                                      r.cached_tokens))
    state = ServeState(config, dict(workflows), [model_name] if engine is not None else [], loop, batcher, store,
                       admission, metrics, int(time.time()), shutdown_timeout_s)
    metrics.gauges = {
        "queue_depth": lambda: admission.depth,
        "queue_limit": lambda: admission.limit,
        "epoch_buffered_rows": lambda: batcher.buffered_rows,
        "epoch_running_rows": lambda: batcher.running_rows,
        "chat_in_flight": lambda: loop.in_flight if loop is not None else 0,
    }

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        batcher.start()
        if loop is not None:
            loop.start()
        try:
            yield
        finally:  # graceful: what was admitted finishes before the threads stop
            batcher.close(shutdown_timeout_s)
            if loop is not None:
                loop.close(shutdown_timeout_s)

    app = FastAPI(title="Halo", version="0.1.0", lifespan=lifespan)
    app.state.halo = state
    app.include_router(openai_router)
    app.include_router(workflow_router)

    @app.get("/health")
    async def health() -> dict[str, Any]:
        return {"status": "ok", "workflows": sorted(state.apps), "models": state.chat_models,
                "queue_depth": admission.depth, "queue_limit": admission.limit}

    @app.get("/metrics")
    async def prometheus() -> PlainTextResponse:
        return PlainTextResponse(metrics.render(), media_type="text/plain; version=0.0.4")

    @app.exception_handler(ApiError)
    async def api_error(_: Request, exc: ApiError) -> JSONResponse:
        return exc.response()

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        return error_response(exc.status_code, str(exc.detail), headers=getattr(exc, "headers", None))

    @app.exception_handler(RequestValidationError)
    async def invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        message = "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors())
        return error_response(422, message)

    app.add_middleware(ProtectionMiddleware, api_key=config.api_key, max_body_bytes=config.max_body_bytes)
    app.add_middleware(LatencyMiddleware, metrics=metrics)
    return app


