"""A run's counters (`RunStats`), assembled in one place for the planned and the serial path.

The execution reports what it did (a `ProcessorOutcome`, or the serial baseline's `SerialOutcome`),
the tool runner its calls, the engines their token counters; `run_stats` turns those into the
logical-versus-executed figures a `RunResult` carries, and `run_result` puts the per-row outputs
and errors back in input order.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from halo.engine import EngineStats
from halo.plan.search import ExecutionPlan
from halo.runtime.processor import ProcessorOutcome
from halo.runtime.results import EpochTiming, RowError, RunResult, RunStats, Span
from halo.runtime.serial import SerialOutcome
from halo.runtime.tools.tool_stats import ToolStats
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
    tools: ToolStats | None = None,
    plan: ExecutionPlan | None = None,
) -> RunStats:
    """The counters of a run of `ran` of its `rows` rows; `tools` and `plan` for a planned run."""
    llm_nodes = sum(1 for n in graph.nodes if n.kind == "llm")
    stats = RunStats(rows=rows, plan_s=plan_s, planner=planner)
    stats.prompt_tokens, stats.prefill_tokens = tokens.prompt, tokens.prefill
    stats.cached_tokens, stats.decode_tokens = tokens.cached, tokens.decode
    stats.llm_calls_logical = ran * llm_nodes
    stats.llm_calls_executed = outcome.llm_executed
    stats.tool_calls_logical = ran * (len(graph.nodes) - llm_nodes)
    stats.nodes_skipped = outcome.skipped
    if isinstance(outcome, SerialOutcome):
        stats.tool_calls_executed = outcome.tool_executed
        return stats
    assert tools is not None and plan is not None
    stats.llm_calls_coalesced = outcome.llm_coalesced + outcome.llm_joined + outcome.llm_reused
    stats.tool_calls_executed = tools.executed
    stats.tool_calls_coalesced = tools.coalesced
    stats.tool_cache_hits = tools.cache_hits
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
) -> RunResult:
    """Outputs and errors in input order (rows `valid[i]` ran as row i), and `on_row` for the rows
    not `reported` while running. Fills in `stats.rows_failed` and the seconds per node kind."""
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
    return RunResult(outputs, errors, stats, outcome.timeline)


def _epoch_timings(plan: ExecutionPlan, timeline: list[Span]) -> list[EpochTiming]:
    spans: dict[str, list[Span]] = {}
    for span in timeline:
        spans.setdefault(span.node, []).append(span)
    out = []
    for index, epoch in enumerate(plan.epochs):
        nodes = tuple(p.task for p in epoch.placements)
        mine = [s for n in nodes for s in spans.get(n, [])]
        actual = max(s.end for s in mine) - min(s.start for s in mine) if mine else 0.0
        out.append(EpochTiming(index, nodes, epoch.time_s, actual, epoch.tools))
    return out
