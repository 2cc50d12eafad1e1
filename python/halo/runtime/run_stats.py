"""A run's counters (`RunStats`), assembled in one place for the planned and the serial path.

The execution reports what it did (a `ProcessorOutcome`, or the serial baseline's `SerialOutcome`,
with its per-node counters), the tool runner its calls, the engines their token counters; `run_stats`
completes the per-node counters (instances and consolidation merges from the plan, the tool runner's
calls and hits, persistent-cache hits, time from the timeline), derives the call totals from them and
returns the logical-versus-executed figures a `RunResult` carries; `run_result` puts the per-row
outputs and errors back in input order. Token totals are the engines' own counters (`TokenCounts`):
the per-node tokens are the requests' (they add up to them, but for decode positions, see `RunStats`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any

from halo.engine import EngineStats
from halo.plan import PlannedBatch
from halo.plan.search import ExecutionPlan
from halo.runtime.processor import ProcessorOutcome
from halo.runtime.results import EpochTiming, NodeStats, RowError, RunResult, RunStats, Span, sum_of
from halo.runtime.serial import SerialOutcome
from halo.runtime.tools.tool_stats import ToolSpan
from halo.spec.graph import WorkflowGraph

RowCallback = Callable[[int, dict[str, Any], RowError | None], None]


@dataclass(frozen=True)
class TokenCounts:
    """Tokens a run's requests cost the engines."""

    prompt: int = 0
    prefill: int = 0  # computed (prompt tokens minus prefix-cache hits)
    cached: int = 0
    decode: int = 0

    @classmethod
    def between(cls, before: Sequence[EngineStats], after: Sequence[EngineStats]) -> TokenCounts:
        """What the workers' engines computed between two snapshots (one per worker): the engines ran
        this run alone."""
        pairs = list(zip(before, after, strict=True))
        return cls(
            sum(a.prompt_tokens - b.prompt_tokens for b, a in pairs),
            sum(a.prefill_tokens - b.prefill_tokens for b, a in pairs),
            sum(a.cached_tokens - b.cached_tokens for b, a in pairs),
            sum(a.decode_tokens - b.decode_tokens for b, a in pairs),
        )

    @classmethod
    def of_requests(cls, outcome: ProcessorOutcome) -> TokenCounts:
        """The run's own requests (joined ones cost nothing): other runs share the engines."""
        return cls(
            outcome.prompt_tokens,
            outcome.prompt_tokens - outcome.cached_tokens,
            outcome.cached_tokens,
            outcome.generated_tokens,
        )


def run_stats(
    graph: WorkflowGraph,
    *,
    rows: int,
    ran: int,
    plan_s: float,
    planner: str,
    outcome: ProcessorOutcome | SerialOutcome,
    tokens: TokenCounts,
    tool_spans: Sequence[ToolSpan] = (),
    planned: PlannedBatch | None = None,
) -> RunStats:
    """The counters of a run of `ran` of its `rows` rows; the tool runner's `tool_spans` and the
    `planned` batch it executed for a planned run."""
    stats = RunStats(rows=rows, plan_s=plan_s, planner=planner)
    stats.nodes = _node_stats(graph, ran, outcome, tool_spans, planned)
    nodes = stats.nodes.values()
    stats.prompt_tokens, stats.prefill_tokens = tokens.prompt, tokens.prefill
    stats.cached_tokens, stats.decode_tokens = tokens.cached, tokens.decode
    stats.generated_tokens = sum_of(nodes, "decode_tokens")
    stats.llm_calls_logical = sum_of(nodes, "calls", "llm")
    stats.llm_calls_executed = sum_of(nodes, "executed", "llm")
    stats.llm_calls_coalesced = sum_of(nodes, "coalesced", "llm") + sum_of(nodes, "joined", "llm")
    stats.tool_calls_logical = sum_of(nodes, "calls", "tool")
    stats.tool_calls_executed = sum_of(nodes, "executed", "tool")
    stats.tool_calls_coalesced = sum_of(nodes, "coalesced", "tool")
    stats.tool_cache_hits = sum_of(nodes, "tool_cache_hits")
    stats.nodes_skipped = sum_of(nodes, "skipped")
    if isinstance(outcome, SerialOutcome):
        return stats
    assert planned is not None
    plan = planned.plan
    stats.persistent_cache_hits = outcome.persistent_hits_total
    stats.persistent_cache_stores = sum(outcome.persistent_stores.values())
    stats.persistent_hits_by_node = dict(outcome.persistent_hits)
    stats.rows_resumed = len(outcome.resumed_rows)
    stats.calls_by_worker = dict(outcome.calls_by_worker)
    stats.kv_moves = outcome.kv_moves
    stats.planner = plan.planner
    stats.predicted_s = plan.makespan_s
    for span in outcome.timeline:
        if span.kind == "llm":
            workers = stats.workers_by_node.setdefault(span.node, [])
            if span.worker not in workers:
                workers.append(span.worker)
    stats.epochs = _epoch_timings(plan, outcome.timeline)
    return stats


def run_result(
    graph: WorkflowGraph,
    stats: RunStats,
    outcome: ProcessorOutcome | SerialOutcome,
    valid: Sequence[int],
    input_errors: Sequence[RowError],
    *,
    reported: set[int],
    on_row: RowCallback | None,
    planned: PlannedBatch | None = None,
) -> RunResult:
    """Outputs and errors in input order (rows `valid[i]` ran as row i), and `on_row` for the rows
    not `reported` while running; `planned` is the plan the run executed. Fills in
    `stats.rows_failed` and the seconds per node kind."""
    outputs: list[dict[str, Any]] = [dict.fromkeys(b.name for b in graph.outputs) for _ in range(stats.rows)]
    errors = list(input_errors)
    for local, original in enumerate(valid):
        if local in outcome.outputs:
            outputs[original] = outcome.outputs[local]
        if local in outcome.errors:
            e = outcome.errors[local]
            errors.append(RowError(original, e.node, e.message))
    errors.sort(key=lambda e: e.row)
    if on_row is not None:
        by_row = {e.row: e for e in errors}
        for index in range(stats.rows):
            if index not in reported:
                on_row(index, outputs[index], by_row.get(index))
    stats.rows_failed = len(errors)
    for span in outcome.timeline:
        stats.seconds_by_kind[span.kind] = stats.seconds_by_kind.get(span.kind, 0.0) + span.end - span.start
    return RunResult(outputs, errors, stats, outcome.timeline, planned)


def _node_stats(
    graph: WorkflowGraph,
    ran: int,
    outcome: ProcessorOutcome | SerialOutcome,
    tool_spans: Sequence[ToolSpan],
    planned: PlannedBatch | None,
) -> dict[str, NodeStats]:
    """The execution's per-node counters, completed with what only the whole run knows."""
    nodes = {node_id: replace(s) for node_id, s in outcome.nodes.items()}
    for node in graph.nodes:
        stats = nodes.setdefault(node.id, NodeStats(node.name, node.kind))
        counters = planned.graph.counters.get(node.id) if planned is not None else None
        stats.logical = ran if counters is None else counters.logical
        stats.merged = 0 if counters is None else counters.logical - counters.owned
    for span in tool_spans:  # a planned run's tool calls, as the tool runner answered each
        stats = nodes[span.node]
        if span.cached:
            stats.tool_cache_hits += 1
        elif span.coalesced:
            stats.coalesced += 1
        else:
            stats.executed += 1
    if isinstance(outcome, ProcessorOutcome):
        for node_id, hits in outcome.persistent_hits.items():
            nodes[node_id].persistent_hits += hits
    zero = min((s.start for s in outcome.timeline), default=0.0)
    for span in outcome.timeline:
        nodes[span.node].add_span(span.start - zero, span.end - zero)
    return nodes


def _epoch_timings(plan: ExecutionPlan, timeline: list[Span]) -> list[EpochTiming]:
    spans: dict[str, list[Span]] = {}
    for span in timeline:
        spans.setdefault(span.node, []).append(span)
    out = []
    for index, epoch in enumerate(plan.epochs):
        nodes = tuple(p.task for p in epoch.placements)
        # a tool-only epoch is measured by its tools (the others by their llm tasks, as they were planned)
        mine = [s for n in (nodes or epoch.tools) for s in spans.get(n, [])]
        actual = max(s.end for s in mine) - min(s.start for s in mine) if mine else 0.0
        out.append(EpochTiming(index, nodes, epoch.time_s, actual, epoch.tools))
    return out
