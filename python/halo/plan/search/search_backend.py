"""What an epoch-DP search takes and returns: a `CostTable` and `SearchOptions` in, `SearchResult` out.

`dp.plan_dp` runs one (`native.search_native`, over `halo._core`, in production; the tests' Python
reference, tests/plan/reference_dp.py, has the same signature) and prices the schedule it returns.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from halo.plan.search.cost_table import CostTable


@dataclass(frozen=True)
class SearchOptions:
    """Budgets and the heuristic phase's limits (see dp.py's module docstring)."""

    state_budget: int = 200_000  # states expanded per phase
    time_limit_s: float | None = None  # the whole search; phase 1 gets half
    max_actions: int = 200_000  # per state in phase 1; hitting it voids the proof
    heuristic_width: int = 6
    heuristic_actions: int = 64


@dataclass(frozen=True)
class SearchResult:
    """A schedule of (task, worker) indices, or None to keep the incumbent; `backend` names the search."""

    schedule: list[list[tuple[int, int]]] | None
    states: int
    optimal: bool
    backend: str


# (cost table, the incumbent plan's cost, options) -> result
SearchBackend = Callable[[CostTable, float, SearchOptions], SearchResult]
