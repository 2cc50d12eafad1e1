"""What a run returns: per-row outputs in input order, per-row errors, and the run's counters
(in total and per graph node)."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from halo.plan import PlannedBatch


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
class NodeStats:
    """One graph node's counters in one run (`critique#2` for a loop iteration; `name` is the declared id).

    The Processor (and the serial baseline) count what happens at run time: llm requests executed,
    coalesced and joined, their tokens as the engines counted them, and every instance that ended
    skipped, failed or cancelled; `run_stats` adds the rest once the run is over: instances and what
    consolidation merged, the tool runner's calls and run-cache hits, persistent-cache hits, and time
    from the timeline. Every total of `RunStats` that has a per-node counterpart is their sum.
    """

    name: str
    kind: str
    logical: int = 0  # instances: one per row that ran
    calls: int = 0  # logical calls: what its instances call run alone (none if skipped, one per foreach element)
    executed: int = 0  # calls sent to an engine or run by the tool pool (retries included)
    merged: int = 0  # instances served by an equal instance's execution (consolidation)
    coalesced: int = 0  # equal requests found at run time and run once (this run's, in flight)
    joined: int = 0  # llm requests that joined an equal request of another run in flight
    tool_cache_hits: int = 0  # answered by the tool runner's run cache (an equal call finished earlier)
    persistent_hits: int = 0  # answered by the persistent result cache
    prompt_tokens: int = 0  # of the executed llm requests, as the engines counted them (all samples)
    computed_tokens: int = 0  # of those, prefilled (prompt minus prefix-cache hits)
    cached_tokens: int = 0  # of those, read from the prefix cache
    decode_tokens: int = 0  # generated (the plan's output length; jump-forward tokens included)
    replies: int = 0  # samples returned by successful llm requests (the output-length history's calls)
    # speculative decoding (engine/speculation.py): draft tokens verified, accepted, and verify steps
    drafted: int = 0
    accepted_drafts: int = 0
    verifies: int = 0
    busy_s: float = 0.0  # summed duration of its spans (overlapping spans add up)
    start_s: float | None = None  # its first span's start, seconds after the run's first span
    end_s: float | None = None  # its last span's end, on the same clock
    skipped: int = 0  # instances skipped (a loop guard held)
    failed: int = 0  # instances that ended with an error
    cancelled: int = 0  # instances never run because an upstream instance failed (fail_row)

    @property
    def hits(self) -> int:
        """Instances answered without an execution of their own at run time (every cache and coalescing)."""
        return self.coalesced + self.joined + self.tool_cache_hits + self.persistent_hits

    @property
    def span_s(self) -> float:
        """First start to last end (0 when it never ran)."""
        return 0.0 if self.start_s is None or self.end_s is None else self.end_s - self.start_s

    def add_request(self, prompt: int, cached: int, generated: int, replies: int) -> None:
        """Count one finished llm request's tokens (a failed one returns no replies)."""
        self.prompt_tokens += prompt
        self.cached_tokens += cached
        self.computed_tokens += prompt - cached
        self.decode_tokens += generated
        self.replies += replies

    def add_drafts(self, proposed: int, accepted: int, verifies: int) -> None:
        self.drafted += proposed
        self.accepted_drafts += accepted
        self.verifies += verifies

    def add_span(self, start: float, end: float) -> None:
        self.busy_s += end - start
        self.start_s = start if self.start_s is None else min(self.start_s, start)
        self.end_s = end if self.end_s is None else max(self.end_s, end)

    @classmethod
    def total(cls, name: str, kind: str, parts: Iterable[NodeStats]) -> NodeStats:
        """The sum of `parts` (e.g. a loop node's iterations): counters add, the time span covers them all."""
        out = cls(name, kind)
        for part in parts:
            for key, value in asdict(part).items():
                if key in ("name", "kind", "start_s", "end_s"):
                    continue
                setattr(out, key, getattr(out, key) + value)
            if part.start_s is not None and part.end_s is not None:
                out.start_s = part.start_s if out.start_s is None else min(out.start_s, part.start_s)
                out.end_s = part.end_s if out.end_s is None else max(out.end_s, part.end_s)
        return out


def sum_of(nodes: Iterable[NodeStats], counter: str, kind: str | None = None) -> int:
    """One counter summed over `nodes` (of one kind: "llm", or "tool" for every other kind)."""
    return sum(getattr(n, counter) for n in nodes if kind is None or (n.kind == "llm") == (kind == "llm"))


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
    decode_tokens: int = 0  # computed decode positions (one fewer per sequence than it generated)
    generated_tokens: int = 0  # tokens the executed requests generated (the sum of the nodes' decode_tokens)
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
    nodes: dict[str, NodeStats] = field(default_factory=dict)  # graph node id -> its counters

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def by_name(self) -> dict[str, NodeStats]:
        """The counters per declared node: a loop node's iterations (`critique#1`, ...) added up."""
        groups: dict[str, list[NodeStats]] = {}
        for stats in self.nodes.values():
            groups.setdefault(stats.name, []).append(stats)
        return {name: NodeStats.total(name, parts[0].kind, parts) for name, parts in groups.items()}


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
    planned: PlannedBatch | None = field(default=None, repr=False)  # the plan this run executed (None: serial)

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
