"""What the tool runner did: counters per tool kind and a timeline of spans, for stats and tests.

Counting rules: every `submit` is one *logical* call; it is then answered by exactly one of
*executed* (ran the tool), *coalesced* (joined an identical pure call already in flight) or
*cache_hits* (an identical SQL or GET/HEAD call already finished in this run). *failures* counts
executed calls that raised, so one failing call fanned out to followers counts once.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field


@dataclass(frozen=True)
class ToolSpan:
    """One logical call on the perf_counter clock: submitted, then running from `start` to `end`.

    For an executed call `start` is when a tool thread picked it up; for a coalesced call the span
    covers its wait for the call it joined; a cache hit has start == end == submitted.
    """

    node: str
    kind: str
    submitted: float
    start: float
    end: float
    ok: bool
    coalesced: bool = False
    cached: bool = False

    @property
    def seconds(self) -> float:
        return self.end - self.start


@dataclass
class KindStats:
    logical: int = 0
    executed: int = 0
    coalesced: int = 0
    cache_hits: int = 0
    failures: int = 0
    busy_s: float = 0.0  # summed wall time of executed calls (overlapping calls add up)


@dataclass(frozen=True)
class ToolStats:
    """A snapshot of the counters, per kind (`sql`, `http`, `python`, `rule`) and in total."""

    by_kind: dict[str, KindStats] = field(default_factory=dict)

    def _total(self, name: str) -> int:
        return sum(getattr(stats, name) for stats in self.by_kind.values())

    @property
    def logical(self) -> int:
        return self._total("logical")

    @property
    def executed(self) -> int:
        return self._total("executed")

    @property
    def coalesced(self) -> int:
        return self._total("coalesced")

    @property
    def cache_hits(self) -> int:
        return self._total("cache_hits")

    @property
    def failures(self) -> int:
        return self._total("failures")

    def as_dict(self) -> dict[str, dict[str, float]]:
        return {kind: asdict(stats) for kind, stats in sorted(self.by_kind.items())}
