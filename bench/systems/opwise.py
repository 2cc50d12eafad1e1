"""The `opwise` baseline: one operator at a time over the whole batch (batch per node).

Nodes run in topological order; each runs for every live row at once — an llm node as one engine
batch over all rows, submitted at once through `EngineCalls` (continuous batching and prefix caching
inside the batch), a tool node as concurrent calls on the tool pool — and the next node starts only
when this one is done for every row: no overlap across nodes, no consolidation, no coalescing, no
tool cache.
"""

from __future__ import annotations

import time
from collections.abc import Collection, Mapping, Sequence
from concurrent.futures import Future
from typing import Any

from halo.errors import HaloError
from halo.runtime.compiled import CompiledWorkflow
from halo.runtime.llm_worker import LlmReply
from halo.runtime.node_io import llm_prompt, render_values, replies_result, request_params, row_outputs
from halo.runtime.tools.tool_runner import ToolRunner
from halo.spec.graph import GraphNode, WorkflowGraph

from bench.systems.engine_calls import EngineCalls
from bench.systems.system_run import EngineCounters, SystemRun, attempts, settle


def run_opwise(
    app: CompiledWorkflow, rows: Sequence[Mapping[str, Any]], allowed_hosts: Collection[str] = ()
) -> SystemRun:
    wf = app.graph
    engine = app.engine()
    engine.reset_prefix_cache()
    counters = EngineCounters(engine)
    clock = time.perf_counter()
    results: list[dict[str, Any]] = [{} for _ in rows]
    errors: dict[int, str] = {}
    with (
        EngineCalls(engine) as calls,
        ToolRunner(app.workflow, cache=False, coalesce=False, allowed_hosts=allowed_hosts) as tools,
    ):
        for node in wf.nodes:
            live = [r for r in range(len(rows)) if r not in errors]
            live = [r for r in live if not (node.guards and wf.skipped(node, rows[r], _context(node, results[r])))]
            pending, last_error = live, {}
            for _ in range(attempts(node)):
                if not pending:
                    break
                if node.kind == "llm":
                    outcome = _llm_operator(wf, node, calls, rows, results, pending)
                else:
                    outcome = _tool_operator(wf, node, tools, rows, results, pending)
                for r, value in outcome.items():
                    if isinstance(value, Exception):
                        last_error[r] = str(value)
                    else:
                        results[r][node.id] = value
                        last_error.pop(r, None)
                pending = [r for r in pending if r in last_error]
            for r in pending:
                value, error = settle(node, last_error[r])
                if error is None:
                    results[r][node.id] = value
                else:
                    errors[r] = node.id
        executed_tools = tools.stats.executed
    llm_nodes = sum(1 for n in wf.nodes if n.kind == "llm")
    run = SystemRun(
        "opwise",
        [row_outputs(wf, row, results[r]) for r, row in enumerate(rows)],
        errors,
        wall_s=time.perf_counter() - clock,
        llm_calls_logical=len(rows) * llm_nodes,
        llm_calls_executed=calls.executed,
        tool_calls_logical=len(rows) * (len(wf.nodes) - llm_nodes),
        tool_calls_executed=executed_tools,
    )
    counters.into(run)
    return run


def _context(node: GraphNode, results: Mapping[str, Any]) -> dict[str, Any]:
    return {u: results[u] for u in node.upstream if u in results}


def _llm_operator(
    wf: WorkflowGraph,
    node: GraphNode,
    calls: EngineCalls,
    rows: Sequence[Mapping[str, Any]],
    results: list[dict[str, Any]],
    batch: list[int],
) -> dict[int, Any]:
    """One engine batch: every row's request of `node` (its n samples), all in flight at once; a dict
    row -> result or exception. Results are read as the serial path reads them (`replies_result`)."""
    out: dict[int, Any] = {}
    futures: dict[int, list[Future]] = {}
    params = request_params(node)
    for r in batch:
        try:
            values = render_values(wf, node, rows[r], _context(node, results[r]))
        except (HaloError, ValueError) as exc:
            out[r] = exc
            continue
        prompt = llm_prompt(node, values)
        futures[r] = [calls.submit(prompt, p) for p in params]
    for r, samples in futures.items():
        try:
            out[r] = replies_result(node, [LlmReply.of(f.result()) for f in samples])
        except (HaloError, ValueError) as exc:
            out[r] = exc
    return out


def _tool_operator(
    wf: WorkflowGraph,
    node: GraphNode,
    tools: ToolRunner,
    rows: Sequence[Mapping[str, Any]],
    results: list[dict[str, Any]],
    batch: list[int],
) -> dict[int, Any]:
    """Every row's call of `node`, all in flight at once on the tool pool; waits for all of them."""
    out: dict[int, Any] = {}
    futures: dict[int, Future[dict[str, Any]]] = {}
    for r in batch:
        try:
            values = render_values(wf, node, rows[r], _context(node, results[r]))
            futures[r] = tools.submit(node, wf.template(node).request(values))
        except (HaloError, ValueError) as exc:
            out[r] = exc
    for r, future in futures.items():
        try:
            out[r] = future.result()
        except (HaloError, ValueError) as exc:
            out[r] = exc
    return out
