"""What a run returns: per-row outputs in input order, per-row errors, and the run's counters."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass(frozen=True)
class RowError:
    """Why row `row` has no complete output: the node that failed (or "<input>") and the message."""

    row: int
    node: str
    message: str


@dataclass(frozen=True)
class EpochTiming:
    """One planned epoch: what the cost model predicted and what the run took for its llm nodes."""

    epoch: int
    nodes: tuple[str, ...]  # its llm tasks
    predicted_s: float
    actual_s: float
    tools: tuple[str, ...] = ()  # the tool nodes the plan prepares on the CPU pool during it


@dataclass
class RunStats:
    """Counters of one run. Logical = what a per-row, per-call execution would do; executed = what ran."""

    rows: int = 0
    rows_failed: int = 0
    rows_resumed: int = 0  # finished by an earlier, interrupted run (read from the journal)
    llm_calls_logical: int = 0
    llm_calls_executed: int = 0
    llm_calls_coalesced: int = 0  # equal requests found at run time (deferred prompts, map elements), run once
    prompt_tokens: int = 0  # of the executed requests
    prefill_tokens: int = 0  # actually computed (prompt tokens minus prefix-cache hits)
    cached_tokens: int = 0
    decode_tokens: int = 0
    tool_calls_logical: int = 0
    tool_calls_executed: int = 0
    tool_calls_coalesced: int = 0
    tool_cache_hits: int = 0
    # The persistent result cache (across runs): requests it answered (they never ran) and results it stored.
    persistent_cache_hits: int = 0
    persistent_cache_stores: int = 0
    persistent_hits_by_node: dict[str, int] = field(default_factory=dict)  # graph node -> hits
    nodes_skipped: int = 0  # instances that did not run: loop iterations after `until`, a false `when`
    wall_s: float = 0.0
    plan_s: float = 0.0  # consolidation + planning
    seconds_by_kind: dict[str, float] = field(default_factory=dict)  # busy seconds per node kind
    calls_by_worker: dict[int, int] = field(default_factory=dict)  # llm requests executed per worker
    workers_by_node: dict[str, list[int]] = field(default_factory=dict)  # llm node -> workers it ran on
    kv_moves: int = 0  # prompt prefixes whose KV was pulled from the worker that computed it
    epochs: list[EpochTiming] = field(default_factory=list)
    planner: str = ""
    predicted_s: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Span:
    """One execution on the timeline: physical node, graph node, kind, where, and when (perf_counter)."""

    phys: int
    node: str
    kind: str
    worker: int  # llm worker index; -1 for the tool pool
    start: float
    end: float
    ok: bool


@dataclass
class RunResult:
    outputs: list[dict[str, Any]]  # one per input row, in input order: the workflow's `outputs`
    errors: list[RowError]
    stats: RunStats
    timeline: list[Span] = field(default_factory=list, repr=False)

    @property
    def ok(self) -> bool:
        return not self.errors

    def error_of(self, row: int) -> RowError | None:
        return next((e for e in self.errors if e.row == row), None)

    def to_pandas(self) -> Any:
        """Outputs as a DataFrame, one row per input row, plus `_error_node` and `_error` columns."""
        import pandas as pd

        frame = pd.DataFrame(self.outputs)
        by_row = {e.row: e for e in self.errors}
        frame["_error_node"] = [by_row[i].node if i in by_row else None for i in range(len(self.outputs))]
        frame["_error"] = [by_row[i].message if i in by_row else None for i in range(len(self.outputs))]
        return frame
