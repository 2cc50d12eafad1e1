"""What an epoch-DP search backend takes and returns: `SearchOptions` in, `SearchResult` out.

Both backends share them: the Python reference search (`dp.search_python`) and the native one
(`native.search_native`, over `halo._core`); `dp.plan_dp` picks the backend and replays the result.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class SearchOptions:
    """Budgets and the heuristic phase's limits (see the module docstring)."""

    state_budget: int = 200_000  # states expanded per phase
    time_limit_s: float | None = None  # the whole search; phase 1 gets half
    max_actions: int = 200_000  # per state in phase 1; hitting it voids the proof
    heuristic_width: int = 6
    heuristic_actions: int = 64


@dataclass(frozen=True)
class SearchResult:
    """What a search backend returns: a schedule of (task, worker) indices, or None for the incumbent."""

    schedule: list[list[tuple[int, int]]] | None
    states: int
    optimal: bool
