"""`create_app`: the FastAPI app over compiled workflows and a chat engine, with its background threads.

The app does not own the workflows or the engine (whoever compiled them closes them); it owns the
threads that run them, started with the app: one `OnlineSession` that every compiled workflow is
attached to while the app runs (its loop thread steps all their engines, epochs overlapping, and the
chat engine), and the epoch batcher. Chat completions are guest requests on that same loop
(`ChatFront`): when the chat engine *is* a workflow's engine (the same object), they enter that
workflow's worker (one engine in memory); otherwise the chat engine gets a worker of its own there.

Shutdown (`ServeState.begin_shutdown`, called on SIGTERM or when the lifespan ends): no new work (new
runs and chats get 503 with `Retry-After`, recorded nowhere), while reads (`GET /v1/runs/{id}`, its
events, `/health`, `/metrics`) keep answering; epochs and chat requests in flight get
`shutdown_timeout_s` to finish; then the runs still in flight are cancelled and every row not finished
ends as `cancelled` (with a journal folder, those rows stay unfinished in the journal and a server
restarted on it runs them again under the same ids), and chats still generating end with a 503 error
body. `ServeState.drained` is set once that is over: `halo serve` stops listening only then.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from halo.runtime.guest_requests import GuestRequests
from halo.runtime.llm_worker import LocalWorker
from halo.runtime.online_session import OnlineSession
from halo.serve.api_errors import ApiError, error_response
from halo.serve.chat_front import ChatFront
from halo.serve.config import ServeConfig
from halo.serve.epoch_batcher import EpochBatcher
from halo.serve.metrics import LatencyMiddleware, Metrics
from halo.serve.openai_routes import router as openai_router
from halo.serve.openapi_doc import openapi_document
from halo.serve.protection import AdmissionQueue, ProtectionMiddleware, authorized
from halo.serve.run_journal import RunJournal
from halo.serve.run_record import RunRecord
from halo.serve.run_store import RunStore
from halo.serve.workflow_routes import router as workflow_router


@dataclass
class ServeState:
    """What the routes reach through `request.app.state.halo`."""

    config: ServeConfig
    apps: dict[str, Any]  # workflow name -> CompiledWorkflow
    chat_models: list[str]  # model ids the chat front answers to
    chat: ChatFront | None
    batcher: EpochBatcher
    store: RunStore
    admission: AdmissionQueue
    metrics: Metrics
    created: int
    shutdown_timeout_s: float | None = None
    session: OnlineSession | None = None
    begin_shutdown: Any = None  # () -> None: start draining now (idempotent); see the module doc
    skipped: dict[str, str] = field(default_factory=dict)  # workflow (or file) -> why it was not loaded
    shutting_down: threading.Event = field(default_factory=threading.Event)  # set by begin_shutdown
    drained: threading.Event = field(default_factory=threading.Event)  # set once the drain is over


def create_app(
    workflows: Mapping[str, Any],
    engine: Any | None = None,
    config: ServeConfig | None = None,
    *,
    model_name: str = "smollm2-135m",
    shutdown_timeout_s: float | None = None,
    skipped: Mapping[str, str] | None = None,
) -> FastAPI:
    """An app serving `workflows` (name -> CompiledWorkflow) and, if `engine` is given, chat completions
    on it as model `model_name`; `skipped` (name -> reason) lists workflows that could not be loaded."""
    config = config or ServeConfig()
    metrics = Metrics()
    journal = RunJournal(config.journal_dir) if config.journal_dir else None
    store = RunStore(config.max_finished_runs, journal)
    resumed = _restore(store, journal, config)
    admission = AdmissionQueue(config.queue_limit)
    cancel_message = "cancelled: the server is shutting down" + (
        "; a server restarted with the same journal runs it again" if journal is not None else ""
    )
    batcher = EpochBatcher(
        workflows,
        store,
        metrics,
        epoch_s=config.epoch_ms / 1000.0,
        epoch_rows=config.epoch_rows,
        max_active=config.max_active_epochs,
        merge_rows=config.merge_rows,
        on_finished=admission.release,
        cancel_message=cancel_message,
        resumable=journal is not None,
    )
    attachable = [a for a in workflows.values() if hasattr(a, "attach")]
    session = OnlineSession() if attachable or engine is not None else None
    chat: ChatFront | None = None
    if engine is not None and session is not None:

        def on_chat_done(job: Any, r: Any) -> None:
            metrics.observe_chat(len(r.token_ids), r.prompt_tokens, r.cached_tokens)

        shared = _holder_of(engine, attachable)
        if shared is not None:
            requests = GuestRequests(session, *shared)
        else:
            requests = GuestRequests.on_engine(session, engine, model_name)
        chat = ChatFront(requests, default_max_tokens=config.default_max_tokens, on_done=on_chat_done)
    state = ServeState(
        config,
        dict(workflows),
        [model_name] if engine is not None else [],
        chat,
        batcher,
        store,
        admission,
        metrics,
        int(time.time()),
        shutdown_timeout_s,
        session,
        skipped=dict(skipped or {}),
    )
    metrics.gauges = {
        "queue_depth": lambda: admission.depth,
        "queue_limit": lambda: admission.limit,
        "epoch_buffered_rows": lambda: batcher.buffered_rows,
        "epoch_running_rows": lambda: batcher.running_rows,
        "chat_in_flight": lambda: chat.in_flight if chat is not None else 0,
    }

    def drain() -> None:
        try:
            _drain(state, attachable, journal)
        finally:
            state.drained.set()

    drainer = threading.Thread(target=drain, name="halo-shutdown", daemon=True)
    draining = threading.Lock()

    def begin_shutdown() -> None:
        with draining:
            state.shutting_down.set()
            if not drainer.is_alive() and drainer.ident is None:
                drainer.start()

    state.begin_shutdown = begin_shutdown

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        if session is not None:
            session.start()
            for compiled in attachable:
                compiled.attach(session)
        batcher.start()
        if chat is not None:
            chat.start()
        for record in resumed:  # admitted by an earlier server, never finished: run them now
            admission.try_acquire(1)
            batcher.submit(record.workflow, [record])
        try:
            yield
        finally:  # graceful: what was admitted finishes (or ends cancelled) before the threads stop
            begin_shutdown()
            await asyncio.get_running_loop().run_in_executor(None, drainer.join)

    app = FastAPI(title="Halo", version="0.1.0", lifespan=lifespan)
    app.state.halo = state

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            app.openapi_schema = openapi_document(
                FastAPI.openapi(app),
                state.apps,
                state.chat_models,
                queue_limit=config.queue_limit,
                api_key_set=config.api_key is not None,
            )
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
    app.include_router(openai_router)
    app.include_router(workflow_router)

    @app.get("/health")
    async def health(request: Request) -> dict[str, Any]:
        """Liveness for anyone; with an API key set, only authenticated callers see what is served."""
        status = "draining" if state.shutting_down.is_set() else "ok"
        if not authorized(request.headers.get("authorization"), config.api_key):
            return {"status": status}
        return {
            "status": status,
            "workflows": sorted(state.apps),
            "skipped_workflows": sorted(state.skipped),
            "models": state.chat_models,
            "queue_depth": admission.depth,
            "queue_limit": admission.limit,
        }

    @app.get("/metrics", response_class=PlainTextResponse)
    async def prometheus() -> PlainTextResponse:
        return PlainTextResponse(metrics.render(), media_type="text/plain; version=0.0.4")

    @app.exception_handler(ApiError)
    async def api_error(_: Request, exc: ApiError) -> JSONResponse:
        return exc.response()

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        return error_response(exc.status_code, str(exc.detail), headers=getattr(exc, "headers", None))

    @app.exception_handler(Exception)
    async def internal(_: Request, exc: Exception) -> JSONResponse:  # a bug: still OpenAI's shape, never HTML
        log.error("unhandled %s: %s", type(exc).__name__, exc, exc_info=exc)
        return error_response(500, f"internal server error ({type(exc).__name__}); see the server log")

    @app.exception_handler(RequestValidationError)
    async def invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        message = "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors())
        return error_response(422, message)

    app.add_middleware(ProtectionMiddleware, api_key=config.api_key, max_body_bytes=config.max_body_bytes)
    app.add_middleware(LatencyMiddleware, metrics=metrics)
    return app


log = logging.getLogger("halo.serve")


def _holder_of(engine: Any, apps: Sequence[Any]) -> tuple[LocalWorker, str] | None:
    """The in-process worker (and model key) of a compiled app that holds `engine` itself, if any."""
    for compiled in apps:
        for worker in compiled.workers:
            if isinstance(worker, LocalWorker):
                for model, held in worker.engines.engines.items():
                    if held is engine:
                        return worker, model
    return None


def _restore(store: RunStore, journal: RunJournal | None, config: ServeConfig) -> list[RunRecord]:
    """Load an earlier server's runs from the journal: ended ones answer GETs, the rest run again."""
    if journal is None:
        return []
    ended, pending = journal.load(config.max_finished_runs)
    for record in ended + pending:
        store.restore(record)
    if pending:
        log.info("resuming %d runs admitted by an earlier server", len(pending))
    return pending


def _drain(state: ServeState, attached: Sequence[Any], journal: RunJournal | None) -> None:
    """Stop taking work, give what is in flight `shutdown_timeout_s`, then cancel the rest (see module doc)."""
    grace = state.shutdown_timeout_s
    deadline = None if grace is None else time.monotonic() + grace

    def left() -> float | None:
        return None if deadline is None else max(0.0, deadline - time.monotonic())

    finished = state.batcher.close(grace)
    if state.chat is not None:
        state.chat.close(left())
    if state.session is not None:
        finished = state.session.close(left()) and finished
    state.batcher.cancel_unstarted()
    for compiled in attached:
        compiled.detach()
    if journal is not None:
        journal.close()
    if not finished:
        log.warning("shutdown grace period over: unfinished runs were cancelled")
