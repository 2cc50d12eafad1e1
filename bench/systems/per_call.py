"""The `per-call` baseline: how an agent framework over a serving engine runs a batch.

Every row is an asyncio task that walks the DAG; each node starts as soon as its upstream nodes are
done. LLM calls go, one request each, to ONE shared engine that batches whatever is in flight
(continuous batching) and reuses cached prompt prefixes; tool calls run as they come on a thread
pool. No consolidation, no coalescing of equal calls, no tool cache: that is what Halo adds.

The engine is stepped by Halo's own loop (`EngineCalls`), as a serving engine steps its own.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Collection, Mapping, Sequence
from functools import partial
from typing import Any

from halo.engine import SamplingParams
from halo.errors import HaloError
from halo.runtime.compiled import CompiledWorkflow
from halo.runtime.llm_worker import LlmReply
from halo.runtime.node_io import SKIPPED, instance_work, llm_prompt, replies_result, request_params, row_outputs
from halo.runtime.tools.tool_runner import ToolRunner
from halo.spec.graph import GraphNode

from bench.systems.engine_calls import EngineCalls
from bench.systems.system_run import EngineCounters, SystemRun, element_results, settle, with_policy

_FAILED = object()  # an upstream instance failed: this one does not run
# One engine request: messages -> its reply (a str: a reply known by its text only, e.g. over HTTP)
Generate = Callable[[list[dict[str, str]], SamplingParams], Awaitable[LlmReply | str]]


def run_per_call(
    app: CompiledWorkflow, rows: Sequence[Mapping[str, Any]], allowed_hosts: Collection[str] = ()
) -> SystemRun:
    engine = app.engine()
    engine.reset_prefix_cache()
    counters = EngineCounters(engine)
    clock = time.perf_counter()
    with (
        EngineCalls(engine, threaded=False) as calls,
        ToolRunner(app.workflow, cache=False, coalesce=False, allowed_hosts=allowed_hosts) as tools,
    ):
        outputs, errors = asyncio.run(_run_batch(app, rows, calls, tools))
        executed_tools = tools.stats.executed
    wf = app.graph
    llm_nodes = sum(1 for n in wf.nodes if n.kind == "llm")
    run = SystemRun(
        "per-call",
        outputs,
        errors,
        wall_s=time.perf_counter() - clock,
        llm_calls_logical=len(rows) * llm_nodes,
        llm_calls_executed=calls.executed,
        tool_calls_logical=len(rows) * (len(wf.nodes) - llm_nodes),
        tool_calls_executed=executed_tools,
    )
    counters.into(run)
    return run


async def _run_batch(
    app: CompiledWorkflow, rows: Sequence[Mapping[str, Any]], calls: EngineCalls, tools: ToolRunner
) -> tuple[list[dict[str, Any]], dict[int, str]]:
    async def generate(prompt: list[dict[str, str]], params: SamplingParams) -> LlmReply:
        return LlmReply.of(await asyncio.wrap_future(calls.submit(prompt, params)))

    driver = asyncio.create_task(calls.drive())
    try:
        done = await asyncio.gather(*(walk_row(app, row, generate, tools) for row in rows))
    finally:
        calls.stop()
        await driver
    outputs = [out for out, _ in done]
    errors = {r: node for r, (_, node) in enumerate(done) if node is not None}
    return outputs, errors


async def walk_row(
    app: CompiledWorkflow, row: Mapping[str, Any], generate: Generate, tools: ToolRunner
) -> tuple[dict[str, Any], str | None]:
    """One row through the DAG, each node as soon as its upstream nodes are done: (outputs, first failing node).
    Every llm request goes through `generate` on its own (a node of n samples: n requests at once, read
    together by `replies_result`, as the serial path reads them); tools go to `tools` (shared by the rows)."""
    wf = app.graph
    results: dict[str, Any] = {}
    failed: list[str] = []
    tasks: dict[str, asyncio.Task[Any]] = {}

    async def run_node(node: GraphNode) -> Any:
        upstream = await asyncio.gather(*(tasks[u] for u in node.upstream))
        if failed or any(u is _FAILED for u in upstream):
            return _FAILED
        context = {u: results[u] for u in node.upstream if u in results}

        async def call(values: tuple) -> Any:
            if node.kind == "llm":
                prompt = llm_prompt(node, values)
                replies = await asyncio.gather(*(generate(prompt, p) for p in request_params(node)))
                return replies_result(node, replies)
            return await asyncio.wrap_future(tools.submit(node, wf.template(node).request(values)))

        try:
            work = instance_work(wf, node, row, context)
        except (HaloError, ValueError) as exc:
            result, error = settle(node, str(exc))
        else:
            if work.skip is not None:
                if work.skip is SKIPPED:
                    return None
                results[node.id] = work.skip
                return work.skip
            # every call of the instance at once (a foreach node's elements too), each under the policy
            outcomes = await asyncio.gather(*(with_policy(node, partial(call, values)) for values in work.calls))
            result, error = element_results(node, work, outcomes)
        if error is not None:
            failed.append(node.id)
            return _FAILED
        results[node.id] = result
        return result

    for node in wf.nodes:  # topological order: a node's upstream tasks exist before it
        tasks[node.id] = asyncio.create_task(run_node(node))
    await asyncio.gather(*tasks.values())
    order = {node.id: i for i, node in enumerate(wf.nodes)}
    first_failure = min(failed, key=order.__getitem__) if failed else None
    return row_outputs(wf, row, results), first_failure
