"""Workflow routes: list workflows, submit rows as runs, read a run (`?wait=true`) or follow its events (SSE)."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

from fastapi import APIRouter, Query, Request
from fastapi.responses import JSONResponse, StreamingResponse

from halo.runtime.batch import split_valid
from halo.serve.api_errors import ApiError
from halo.serve.epoch_batcher import BatcherClosed
from halo.serve.openai_routes import queue_full, refuse_when_draining, shutting_down
from halo.serve.request_body import read_json
from halo.serve.run_record import RunRecord

router = APIRouter()
KEEPALIVE_S = 15.0


@router.get("/v1/workflows")
async def list_workflows(request: Request) -> dict[str, Any]:
    state = request.app.state.halo
    return {"object": "list", "data": [_describe(name, app) for name, app in state.apps.items()],
            "skipped": [{"name": name, "reason": reason} for name, reason in sorted(state.skipped.items())]}


@router.get("/v1/workflows/{name}")
async def get_workflow(name: str, request: Request) -> dict[str, Any]:
    state = request.app.state.halo
    return _describe(name, _app(state, name))


@router.post("/v1/workflows/{name}/runs", status_code=202)
async def create_runs(name: str, request: Request) -> JSONResponse:
    """The body is one row (a JSON object) or a list of rows; every row must hold the declared inputs."""
    state = request.app.state.halo
    app = _app(state, name)
    refuse_when_draining(state)
    body = await read_json(request)
    rows = body if isinstance(body, list) else [body]
    if not rows:
        raise ApiError(422, "the body is an empty list: send one row (an object) or a non-empty list of rows")
    _, errors = split_valid(rows, app.workflow.spec.inputs)
    if errors:
        inputs = ", ".join(app.workflow.spec.inputs) or "none"
        problems = "; ".join(e.message for e in errors[:10]) + (f"; and {len(errors) - 10} more" if len(errors) > 10
                                                                  else "")
        raise ApiError(422, f"workflow '{name}' (inputs: {inputs}): {problems}", code="missing_inputs")
    if len(rows) > state.admission.limit:
        raise ApiError(413, f"{len(rows)} rows are more than this server's queue holds ({state.admission.limit}); "
                       "split them into smaller requests", code="too_many_rows")
    if not state.admission.try_acquire(len(rows)):
        state.metrics.reject("queue_full")
        raise queue_full(state)
    try:  # recorded, journaled and queued in one step: a refused request leaves no trace to resume
        records = state.batcher.admit(name, [dict(r) for r in rows])
    except BatcherClosed as exc:
        state.admission.release(len(rows))
        raise shutting_down(state, str(exc)) from None
    return JSONResponse({"object": "list", "workflow": name, "ids": [r.id for r in records],
                         "data": [r.as_json() for r in records]}, status_code=202)


@router.get("/v1/runs/{run_id}")
async def get_run(
    run_id: str,
    request: Request,
    wait: bool = False,
    timeout: float | None = Query(default=None, gt=0),
) -> dict[str, Any]:
    """The run's status, output and error; with `wait=true`, once it is done (or `timeout` s passed)."""
    state = request.app.state.halo
    record = _run(state, run_id)
    if wait:
        await state.store.wait_done(record, min(timeout or state.config.wait_timeout_s, state.config.wait_timeout_s))
    return record.as_json()


@router.get("/v1/runs/{run_id}/events")
async def run_events(run_id: str, request: Request) -> StreamingResponse:
    """Server-sent events: `status` on every change of the run, then `done` with the finished run."""
    state = request.app.state.halo
    record = _run(state, run_id)
    return StreamingResponse(_events(state, record), media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache"})


async def _events(state: Any, record: RunRecord) -> AsyncIterator[str]:
    seen = -1
    while True:
        version = record.version
        if version != seen:
            seen = version
            event = "done" if record.done else "status"
            yield f"event: {event}\ndata: {json.dumps(record.as_json())}\n\n"
            if record.done:
                return
        if not await state.store.wait_change(record, seen, KEEPALIVE_S):
            yield ": keep-alive\n\n"


def _describe(name: str, app: Any) -> dict[str, Any]:
    return {
        "name": name,
        "object": "workflow",
        "inputs": list(app.workflow.spec.inputs),
        "outputs": [b.name for b in app.graph.outputs],
        "models": list(app.model_sources),
        "nodes": [{"id": n.id, "kind": n.kind} for n in app.graph.nodes],
    }


def _app(state: Any, name: str) -> Any:
    app = state.apps.get(name)
    if app is None and name in state.skipped:
        raise ApiError(404, f"workflow '{name}' was not loaded: {state.skipped[name]}", code="workflow_unavailable")
    if app is None:
        known = ", ".join(sorted(state.apps)) or "none"
        raise ApiError(404, f"unknown workflow '{name}' (loaded: {known})", code="workflow_not_found")
    return app


def _run(state: Any, run_id: str) -> RunRecord:
    record = state.store.get(run_id)
    if record is None:
        raise ApiError(404, f"unknown run '{run_id}' (ids come from POST /v1/workflows/{{name}}/runs; finished runs "
                       "are kept for a while)", code="run_not_found")
    return record


