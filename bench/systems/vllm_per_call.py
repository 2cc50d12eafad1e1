"""The optional `vllm-per-call` baseline: the `per-call` pattern against vLLM's CPU build.

The same client as bench/online's per-call target (bench/online/per_call_target.py, itself on
per_call.py's `walk_row`): every row an asyncio task walking the DAG, every llm call one
POST /v1/chat/completions with the node's sampling parameters (greedy in every workload), tools run
here on one runner without cache or coalescing. Only the server differs: vLLM (its own kernels,
scheduler and prefix cache) serving the model halo runs, exported to safetensors by
`halo.engine.hf_export`. vLLM lives in a venv of its own (`--vllm-python` / $HALO_VLLM_PYTHON) and is
never imported here. Token counters come from the responses' `usage`; see docs/vllm_baseline.md.
"""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

import httpx
from halo.engine.hf_export import export_hf
from halo.runtime.compiled import CompiledWorkflow
from halo.runtime.tools.tool_runner import ToolRunner

from bench.online.load_generator import QueryOutcome
from bench.systems.system_run import SystemRun
from bench.systems.vllm_server import SERVED_MODEL, VllmServer, VllmServerError, vllm_python

NAME = "vllm-per-call"
REQUEST_TIMEOUT_S = 1800.0  # one chat completion; a 2-core box under a large batch queues for long


class VllmBackend:
    """vLLM servers for the suite, started on first use per (model, dtype) and reused by every batch
    and workload after it (a start costs ~30 s); one runs at a time. Leaving the context stops them."""

    def __init__(self, python: Path, log_dir: Path | None = None, start_timeout_s: float = 600.0) -> None:
        self.python = python
        self.log_dir = log_dir
        self.start_timeout_s = start_timeout_s
        self._key: tuple[str, str] | None = None
        self._server: VllmServer | None = None

    def server_for(self, app: CompiledWorkflow) -> VllmServer:
        """A running server for the model and dtype of `app`'s engine (exported and started if needed)."""
        engine = app.engine()
        key = (str(engine.model_path), engine.dtype_choice.name)
        if self._server is not None and self._key == key:
            return self._server
        self.close()
        _log(f"exporting {key[0]} for vLLM ...")
        model_dir = export_hf(model=engine.model_path)
        log_path = self.log_dir / f"vllm-server-{key[1]}.log" if self.log_dir is not None else None
        server = VllmServer(self.python, model_dir, dtype=key[1], log_path=log_path)
        _log(f"starting vLLM ({self.python}) on {server.url}, dtype {key[1]}, log {server.log_path} ...")
        clock = time.perf_counter()
        server.start(self.start_timeout_s)
        try:
            _warm(server)  # the first request pays one-time costs (allocations, tokenizer); not measured
        except Exception:
            server.stop()
            raise
        _log(f"vLLM ready in {time.perf_counter() - clock:.1f} s")
        self._key, self._server = key, server
        return server

    def close(self) -> None:
        server, self._server, self._key = self._server, None, None
        if server is not None:
            server.stop()

    def __enter__(self) -> VllmBackend:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


def backend_from(python: str | Path | None = None, log_dir: Path | None = None) -> VllmBackend | None:
    """A backend for `python` (else $HALO_VLLM_PYTHON), or None when neither names an interpreter."""
    path = vllm_python(python)
    return VllmBackend(path, log_dir) if path is not None else None


def run_vllm_per_call(
    app: CompiledWorkflow,
    rows: Sequence[Mapping[str, Any]],
    backend: VllmBackend | None = None,
    allowed_hosts: Collection[str] = (),
) -> SystemRun:
    """Run `rows` per call against vLLM; without `backend`, one from $HALO_VLLM_PYTHON for this call only."""
    if backend is None:
        backend = backend_from()
        if backend is None:
            raise VllmServerError(
                "system vllm-per-call needs vLLM's CPU build in a venv of its own: pass --vllm-python PATH "
                "or set HALO_VLLM_PYTHON (docs/vllm_baseline.md)"
            )
        with backend:
            return run_vllm_per_call(app, rows, backend, allowed_hosts)
    server = backend.server_for(app)
    server.reset_prefix_cache()
    usage = _Usage()
    clock = time.perf_counter()
    with ToolRunner(app.workflow, cache=False, coalesce=False, allowed_hosts=allowed_hosts) as tools:
        outcomes = asyncio.run(_run_batch(app, rows, server.url, tools, usage))
        executed_tools = tools.stats.executed
    wall = time.perf_counter() - clock
    wf = app.graph
    llm_nodes = sum(1 for n in wf.nodes if n.kind == "llm")
    errors = {r: o.error for r, o in enumerate(outcomes) if o.error is not None}
    http_failures = [o.error for o in outcomes if o.outputs is None and o.error]
    if http_failures:  # a row the server refused (not a node failure): say so, the table only counts it
        _log(f"vllm-per-call: {len(http_failures)} rows failed over HTTP, first: {http_failures[0]}")
    return SystemRun(
        NAME,
        [o.outputs if o.outputs is not None else {} for o in outcomes],
        errors,
        wall_s=wall,
        llm_calls_logical=len(rows) * llm_nodes,
        llm_calls_executed=usage.requests,
        tool_calls_logical=len(rows) * (len(wf.nodes) - llm_nodes),
        tool_calls_executed=executed_tools,
        prompt_tokens=usage.prompt_tokens,
        # vLLM reports prompt tokens and the cached part; what it computed is the rest (recompute
        # after a preemption is not reported, unlike halo's own counter).
        prefill_tokens=usage.prompt_tokens - usage.cached_tokens,
        cached_tokens=usage.cached_tokens,
        decode_tokens=usage.completion_tokens,
    )


@dataclass
class _Usage:
    """Sums of the `usage` of every successful chat completion, read by an httpx response hook."""

    requests: int = 0
    prompt_tokens: int = 0
    cached_tokens: int = 0
    completion_tokens: int = 0

    async def on_response(self, response: httpx.Response) -> None:
        if response.status_code != 200 or not response.request.url.path.endswith("/chat/completions"):
            return
        await response.aread()  # the body is kept: PerCallTarget's .json() reads it again
        usage = response.json().get("usage") or {}
        self.requests += 1
        self.prompt_tokens += int(usage.get("prompt_tokens") or 0)
        self.completion_tokens += int(usage.get("completion_tokens") or 0)
        self.cached_tokens += int((usage.get("prompt_tokens_details") or {}).get("cached_tokens") or 0)


async def _run_batch(
    app: CompiledWorkflow, rows: Sequence[Mapping[str, Any]], url: str, tools: ToolRunner, usage: _Usage
) -> list[QueryOutcome]:
    # As many connections as rows: every row's call is in flight at once, as in per-call.
    limits = httpx.Limits(max_connections=max(16, len(rows)), max_keepalive_connections=max(16, len(rows)))
    async with httpx.AsyncClient(
        base_url=url,
        limits=limits,
        timeout=httpx.Timeout(REQUEST_TIMEOUT_S),
        event_hooks={"response": [usage.on_response]},
    ) as client:
        # imported here: bench.online.per_call_target imports bench.systems (its walker), so a module-level
        # import would make `halo bench --online` (which loads bench.online first) a circular import
        from bench.online.per_call_target import PerCallTarget

        target = PerCallTarget(client, app, tools)
        return list(await asyncio.gather(*(target.send(row) for row in rows)))


def _warm(server: VllmServer) -> None:
    body = {"model": SERVED_MODEL, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2, "temperature": 0}
    reply = httpx.post(server.url + "/v1/chat/completions", json=body, timeout=300.0)
    if reply.status_code != 200:
        raise VllmServerError(f"vLLM warm-up request failed: HTTP {reply.status_code}: {reply.text[:300]}")


def _log(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)
