"""The `opwise` baseline: one operator at a time over the whole batch (batch per node).

Nodes run in topological order; each runs for every live row at once — an llm node as one engine
batch over all rows, submitted at once through `EngineCalls` (continuous batching and prefix caching
inside the batch), a tool node as concurrent calls on the tool pool — and the next node starts only
when this one is done for every row: no overlap across nodes, no consolidation, no coalescing, no
tool cache.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Collection, Mapping, Sequence
from concurrent.futures import Future
from typing import Any

from halo.errors import HaloError
from halo.runtime.compiled import CompiledWorkflow
from halo.runtime.llm_worker import LlmReply
from halo.runtime.node_io import (
    SKIPPED,
    InstanceWork,
    instance_work,
    llm_prompt,
    replies_result,
    request_params,
    row_outputs,
)
from halo.runtime.tools.tool_runner import ToolRunner
from halo.spec.graph import GraphNode, WorkflowGraph

from bench.systems.engine_calls import EngineCalls
from bench.systems.system_run import EngineCounters, SystemRun, attempts, element_results, settle


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
            pending, last_error = [r for r in range(len(rows)) if r not in errors], {}
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
                        if value is not SKIPPED:  # a loop guard held: the instance has no result
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
    """One engine batch: every row's requests of `node` (its n samples, a foreach node's elements), all
    in flight at once. Results are read as the serial path reads them (`replies_result`)."""
    params = request_params(node)

    def submit(values: tuple) -> list[Future]:
        prompt = llm_prompt(node, values)
        return [calls.submit(prompt, p) for p in params]

    return _operator(
        wf, node, rows, results, batch, submit, lambda f: replies_result(node, [LlmReply.of(x.result()) for x in f])
    )


def _tool_operator(
    wf: WorkflowGraph,
    node: GraphNode,
    tools: ToolRunner,
    rows: Sequence[Mapping[str, Any]],
    results: list[dict[str, Any]],
    batch: list[int],
) -> dict[int, Any]:
    """Every row's calls of `node`, all in flight at once on the tool pool; waits for all of them."""
    return _operator(
        wf,
        node,
        rows,
        results,
        batch,
        lambda values: tools.submit(node, wf.template(node).request(values)),
        Future.result,
    )


def _operator(
    wf: WorkflowGraph,
    node: GraphNode,
    rows: Sequence[Mapping[str, Any]],
    results: list[dict[str, Any]],
    batch: list[int],
    submit: Callable[[tuple], Any],
    collect: Callable[[Any], Any],
) -> dict[int, Any]:
    """Row -> result (SKIPPED or a `when` stand-in for one that does not run) or the exception that
    failed it; a foreach node's element that fails takes its fallback under `on_error: default`."""
    out: dict[int, Any] = {}
    sent: dict[int, tuple[InstanceWork, list[Any]]] = {}
    for r in batch:
        try:
            work = instance_work(wf, node, rows[r], _context(node, results[r]))
            if work.skip is not None:
                out[r] = work.skip
                continue
            sent[r] = (work, [submit(values) for values in work.calls])
        except (HaloError, ValueError) as exc:
            out[r] = exc
    for r, (work, handles) in sent.items():
        outcomes: list[tuple[Any, str | None]] = []
        for handle in handles:
            try:
                outcomes.append((collect(handle), None))
            except (HaloError, ValueError) as exc:
                outcomes.append(settle(node, str(exc)) if work.mapped else (None, str(exc)))
        value, error = element_results(node, work, outcomes)
        out[r] = ValueError(error) if error is not None else value
    return out
