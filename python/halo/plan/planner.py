"""The one planner: a consolidated batch and what the runtime knows about its workers and costs in,
the plan out. `halo run`, `halo explain`, `CompiledWorkflow.run`/`explain` and the server all plan
through `plan`, so what explain prints is the plan a run follows.

    planned = plan(graph, PlanContext(curves_for, workers=2, resident=(("m",), ())))
    print(planned.explain())

`PlanContext` carries everything a plan depends on besides the batch: the latency curves, the tool
and output-length estimates (with decode rates where a model drafts speculatively), the workers and
the models they hold now, the planner and its budget.
Equal graphs under equal contexts give equal plans whenever the DP finishes its exact phase (it
does within `DP_TIME_LIMIT_S` for the graphs of the examples); a time-limited heuristic phase may not.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Literal

from halo.plan.consolidated_graph import ConsolidatedGraph
from halo.plan.cost import LatencyCurves, OutputLengthHistory
from halo.plan.cost.remote_latency import RemoteLatencyModel
from halo.plan.explain import explain_text
from halo.plan.node_figures import RunActuals, explain_numbers, node_estimates, totals
from halo.plan.plan_problem import ToolCost, build_plan_problem
from halo.plan.search import ExecutionPlan, PlanProblem, plan_dp, plan_greedy

DP_TIME_LIMIT_S = 1.0  # the epoch DP's wall-time budget, the same for every caller
PlannerMode = Literal["dp", "greedy"]


@dataclass(frozen=True)
class PlanContext:
    """What a plan depends on besides the batch (the module docstring)."""

    curves_for: Callable[[str], LatencyCurves]
    workers: int = 1
    tool_cost_s: ToolCost | None = None  # None: the declared latencies (`plan_problem.default_tool_cost_s`)
    output_history: OutputLengthHistory | None = None  # None: every call decodes its max_tokens
    remote_latency: RemoteLatencyModel | None = None  # remote models' learned curves; None: the default curve
    resident: Sequence[Sequence[str]] = ()  # per worker, the models it holds, least recently used first
    # model source -> its engines' speculative mode (absent or "off": decode steps append one token each)
    speculative: Mapping[str, str] = field(default_factory=dict)
    mode: PlannerMode = "dp"
    time_limit_s: float | None = DP_TIME_LIMIT_S


@dataclass(frozen=True)
class PlannedBatch:
    """A consolidated batch with its plan-search problem and the plan chosen for it."""

    graph: ConsolidatedGraph
    problem: PlanProblem
    plan: ExecutionPlan
    kv_parents: Mapping[str, str] = field(default_factory=dict)  # llm task -> the task whose prefix it shares

    def explain(self, actual: RunActuals | None = None) -> str:
        """The consolidated batch with the plan's per-node estimates, then the plan's epochs, as `halo
        explain` prints them; with `actual` (EXPLAIN ANALYZE) what a run of this plan measured sits
        beside every estimate, on the same lines, and a TOTAL line compares the whole batch."""
        estimates = node_estimates(self.graph, self.problem, self.plan)
        text = (
            explain_text(self.graph, estimates, None if actual is None else actual.nodes)
            + "\n\n"
            + self.plan.explain(None if actual is None else actual.epoch_s)
        )
        if actual is not None:
            text += "\n" + totals(self.graph, estimates, self.plan, actual).line()
        return text

    def explain_numbers(self, actual: RunActuals | None = None) -> dict[str, Any]:
        """The same figures as plain JSON-ready values (`halo explain --format json`)."""
        return explain_numbers(self.graph, self.problem, self.plan, actual)


def plan(graph: ConsolidatedGraph, context: PlanContext) -> PlannedBatch:
    """Price `graph` under `context` and choose its plan (epoch DP, or greedy)."""
    problem = build_plan_problem(
        graph,
        context.curves_for,
        workers=context.workers,
        tool_cost_s=context.tool_cost_s,
        output_history=context.output_history,
        remote_latency=context.remote_latency,
        speculative=context.speculative,
    )
    resident = _resident_models(problem, context.resident)
    if resident:  # the plan starts from the models the workers hold now (in flight or idle)
        loaded = sum(problem.model_load_s[m] for m in set(resident.values()))
        problem = replace(problem, resident=resident, per_call_s=problem.per_call_s - loaded)
    greedy = context.mode == "greedy"
    chosen = plan_greedy(problem) if greedy else plan_dp(problem, time_limit_s=context.time_limit_s)
    kv_parents = {t.id: t.kv_parent for t in problem.tasks if t.kv_parent is not None}
    return PlannedBatch(graph, problem, chosen, kv_parents)


def _resident_models(problem: PlanProblem, held: Sequence[Sequence[str]]) -> dict[str, str]:
    """Plan worker id -> the model it holds now among those this problem runs (the most recently used
    one: in an online session, the model its in-flight runs are decoding)."""
    if not problem.tasks:
        return {}
    needed = set(problem.model_load_s)
    resident: dict[str, str] = {}
    for plan_worker, models in zip(problem.workers, held, strict=False):
        mine = [m for m in models if m in needed]
        if mine:
            resident[plan_worker.id] = mine[-1]
    return resident
