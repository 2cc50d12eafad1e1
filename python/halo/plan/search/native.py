"""The bridge to the native plan search: a `CostTable` becomes `halo._core.PlanCost`, searched by
`halo._core.plan_dp_search` (csrc/epoch_dp.cpp) with the GIL released, for problems of any size.

There is no Python fallback: `halo._core` is built by every install (the runtime needs it too). It is
imported on first search, so `halo.plan` (specs, consolidation, greedy plans) imports without it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from halo.plan.search.cost_table import CostTable
from halo.plan.search.search_backend import SearchOptions, SearchResult

if TYPE_CHECKING:
    from halo._core import PlanCost


def native_cost(tb: CostTable) -> PlanCost:
    from halo import _core

    return _core.PlanCost(
        model_of=tb.model_of,
        parent=tb.parent,
        base_s=tb.base_s,
        penalty_s=tb.penalty_s,
        deps=tb.deps,
        tool_deps=[[a for a in range(tb.n_tools) if mask >> a & 1] for mask in tb.tool_dep_mask],
        tool_s=tb.tool_s,
        tool_llm_deps=tb.tool_llm_deps,
        tool_tool_deps=tb.tool_tool_deps,
        node_order=tb.node_order,
        load_s=tb.load_s,
        kind_of=tb.kind_of,
        kind_speed=tb.kind_speed,
        initial_model=tb.initial_model,
        overhead_s=tb.overhead_s,
        w_makespan=tb.w_makespan,
        w_load=tb.w_load,
        split_ways=tb.split_ways,
        split_base_s=tb.split_base_s,
        split_penalty_s=tb.split_penalty_s,
        span_lb_s=tb.span_lb_s,
        work_lb_s=tb.work_lb_s,
    )


def search_native(tb: CostTable, incumbent_cost: float, options: SearchOptions) -> SearchResult:
    """The two-phase epoch DP (dp.py's module docstring) in halo._core."""
    from halo import _core

    schedule, states, optimal, _ = _core.plan_dp_search(
        native_cost(tb),
        incumbent_cost,
        options.state_budget,
        options.time_limit_s,
        options.max_actions,
        options.heuristic_width,
        options.heuristic_actions,
    )
    epochs = None if schedule is None else [[(t, w) for t, w in epoch] for epoch in schedule]
    return SearchResult(epochs, states, optimal, "native")
