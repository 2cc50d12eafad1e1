"""The plain per-call baseline (`plan="serial"`): every node of every row, one call at a time.

No consolidation, no prefix cache (it is cleared before every request), no coalescing, no tool cache,
no overlap. This is what a user's hand-written loop over the batch does; the fidelity tests compare
the Processor against it and the benchmarks use it as the baseline. It counts per graph node in the
Processor's `NodeStats` (executed calls, tokens, skipped and failed instances); the totals are sums.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from halo.engine import LLMEngine
from halo.errors import HaloError
from halo.runtime.llm_worker import LlmReply
from halo.runtime.node_io import (
    SKIPPED,
    InstanceWork,
    fallback_result,
    instance_work,
    llm_prompt,
    map_result,
    replies_result,
    request_params,
    row_outputs,
)
from halo.runtime.results import NodeStats, RowError, Span, sum_of
from halo.spec.graph import GraphNode, WorkflowGraph


@dataclass
class SerialOutcome:
    outputs: dict[int, dict[str, Any]] = field(default_factory=dict)
    errors: dict[int, RowError] = field(default_factory=dict)
    timeline: list[Span] = field(default_factory=list)
    nodes: dict[str, NodeStats] = field(default_factory=dict)  # graph node id -> its counters

    @property
    def llm_executed(self) -> int:
        return sum_of(self.nodes.values(), "executed", "llm")

    @property
    def tool_executed(self) -> int:
        return sum_of(self.nodes.values(), "executed", "tool")

    @property
    def generated_tokens(self) -> int:
        return sum_of(self.nodes.values(), "decode_tokens")

    @property
    def skipped(self) -> int:
        return sum_of(self.nodes.values(), "skipped")


def run_serial(
    wf: WorkflowGraph,
    rows: Sequence[Mapping[str, Any]],
    engine_for: Callable[[str], LLMEngine],
    call_tool: Callable[[GraphNode, dict[str, Any]], dict[str, Any]],
    on_row: Callable[[int], None] | None = None,
) -> SerialOutcome:
    out = SerialOutcome(nodes={n.id: NodeStats(n.name, n.kind) for n in wf.nodes})
    for r, row in enumerate(rows):
        results: dict[str, Any] = {}
        for node in wf.nodes:
            context = {u: results[u] for u in node.upstream if u in results}
            start = time.perf_counter()
            try:
                work = instance_work(wf, node, row, context)
            except HaloError as exc:
                work = None
                result, error = (fallback_result(node), None) if node.spec.on_error == "default" else (None, str(exc))
            if work is not None and work.skip is not None:
                out.nodes[node.id].skipped += 1
                if work.skip is not SKIPPED:
                    results[node.id] = work.skip
                continue
            if work is not None:
                out.nodes[node.id].calls += len(work.calls)
                result, error = _run_instance(wf, node, work, engine_for, call_tool, out)
            out.timeline.append(
                Span(-1, node.id, node.kind, 0 if node.kind == "llm" else -1, start, time.perf_counter(), error is None)
            )
            if error is not None:
                out.errors[r] = RowError(r, node.id, error)
                out.nodes[node.id].failed += 1
                break
            results[node.id] = result
        out.outputs[r] = row_outputs(wf, row, results)
        if on_row is not None:
            on_row(r)
    return out


def _run_instance(
    wf: WorkflowGraph,
    node: GraphNode,
    work: InstanceWork,
    engine_for: Callable[[str], LLMEngine],
    call_tool: Callable[[GraphNode, dict[str, Any]], dict[str, Any]],
    out: SerialOutcome,
) -> tuple[Any, str | None]:
    """Run an instance's calls one after the other; a foreach node's elements each under its on_error."""
    if not work.mapped:
        return _run_node(wf, node, work.calls[0], engine_for, call_tool, out)
    values = []
    for index, call in enumerate(work.calls):
        result, error = _run_node(wf, node, call, engine_for, call_tool, out)
        if error is not None:
            return None, f"element {index + 1} of {len(work.calls)}: {error}"
        values.append(result)
    return map_result(node, values), None


def _run_node(
    wf: WorkflowGraph,
    node: GraphNode,
    values: tuple[Any, ...],
    engine_for: Callable[[str], LLMEngine],
    call_tool: Callable[[GraphNode, dict[str, Any]], dict[str, Any]],
    out: SerialOutcome,
) -> tuple[Any, str | None]:
    attempts = node.spec.retries + 1 if node.spec.on_error == "retry" else 1
    error = ""
    stats = out.nodes[node.id]
    for _ in range(attempts):
        try:
            if node.kind == "llm":
                engine = engine_for(wf.model_source(node) or "")
                engine.reset_prefix_cache()
                stats.executed += 1
                # one call of n samples (seeds seed + i), added together as the workers add them
                params = request_params(node)
                generated = engine.generate([llm_prompt(node, values)] * len(params), params)
                stats.add_request(
                    sum(g.prompt_tokens for g in generated),
                    sum(g.cached_tokens for g in generated),
                    sum(LlmReply.generated_tokens(g) for g in generated),
                    len(generated),
                )
                return replies_result(node, [LlmReply.of(g) for g in generated]), None
            stats.executed += 1
            return call_tool(node, wf.template(node).request(values)), None
        except (HaloError, ValueError) as exc:
            error = str(exc)
    if node.spec.on_error == "default":
        return fallback_result(node), None
    return None, error
