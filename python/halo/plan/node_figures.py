"""The figures EXPLAIN prints per node, per epoch and in total: the plan's estimates and, under
EXPLAIN ANALYZE, what a run of that plan measured.

`node_estimates` reads what the plan priced for each graph node: the executions it batches, the
prompt and generated tokens its times were priced with, and its seconds (an llm task's time in its
epoch, a tool's seconds on the CPU pool). `RunActuals` is what a run measured; the runtime fills it
(`halo.runtime.explain_analyze`), so the plan package knows only its shape (`NodeActual`, which the
runtime's per-node counters have) and never imports the runtime. `explain_numbers` is the JSON form
of the same figures that `PlannedBatch.explain` prints.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any, Protocol

from halo.plan.consolidated_graph import ConsolidatedGraph
from halo.plan.search import ExecutionPlan, PlanProblem


@dataclass(frozen=True)
class NodeEstimate:
    """What the plan predicts for one graph node."""

    calls: int  # executions: its own requests after merging equal ones (what it batches)
    prompt_tokens: int | None  # llm: over those requests, each of n samples counted (as engines count)
    decode_tokens: int | None  # llm: expected generated tokens over them (the output-length history)
    seconds: float  # llm: its time in its epoch; tool: its seconds on the CPU pool


class NodeActual(Protocol):
    """What a run measured for one graph node (the runtime's `NodeStats` has these)."""

    executed: int
    prompt_tokens: int
    computed_tokens: int
    cached_tokens: int
    decode_tokens: int
    busy_s: float
    start_s: float | None  # seconds after the run's first span
    end_s: float | None
    skipped: int
    failed: int

    @property
    def hits(self) -> int: ...  # instances answered at run time without an execution of their own

    @property
    def span_s(self) -> float: ...


ACTUAL_FIELDS = (
    "executed",
    "hits",
    "prompt_tokens",
    "computed_tokens",
    "cached_tokens",
    "decode_tokens",
    "busy_s",
    "span_s",
    "start_s",
    "end_s",
    "skipped",
    "failed",
)


@dataclass(frozen=True)
class RunActuals:
    """A run of a plan, as EXPLAIN ANALYZE shows it beside the plan."""

    nodes: Mapping[str, NodeActual]  # graph node id -> what it did
    epoch_s: Sequence[float]  # per plan epoch, in order: its tasks' first start to last end
    run_s: float  # executing (the run's wall time after planning)
    plan_s: float  # consolidation and planning


def node_estimates(graph: ConsolidatedGraph, problem: PlanProblem, plan: ExecutionPlan) -> dict[str, NodeEstimate]:
    """Per graph node, the plan's figures (a node the problem has no task for is estimated at 0 s)."""
    seconds: dict[str, float] = {tool.id: tool.cpu_s for tool in problem.tools}
    for epoch in plan.epochs:
        span: dict[str, float] = {}  # a split node's time in its epoch is its longest share's
        for placement in epoch.placements:
            span[placement.task] = max(span.get(placement.task, 0.0), placement.time_s)
        for task, time_s in span.items():
            seconds[task] = seconds.get(task, 0.0) + time_s
    tasks = {task.id: task for task in problem.tasks}
    out: dict[str, NodeEstimate] = {}
    for node in graph.workflow.nodes:
        task = tasks.get(node.id)
        out[node.id] = NodeEstimate(
            graph.counters[node.id].owned,
            None if task is None else task.prompt_tokens,
            None if task is None else task.output_tokens,
            seconds.get(node.id, 0.0),
        )
    return out


@dataclass(frozen=True)
class Totals:
    """Predicted against actual over the whole batch (actual fields are None without a run)."""

    llm_calls: tuple[int, int | None]
    tool_calls: tuple[int, int | None]
    prompt_tokens: tuple[int, int | None]
    decode_tokens: tuple[int, int | None]
    seconds: tuple[float, float | None]

    def line(self) -> str:
        """The TOTAL line of EXPLAIN ANALYZE."""
        s, llm, tools = self.seconds, self.llm_calls, self.tool_calls
        prompt, decode = self.prompt_tokens, self.decode_tokens
        return (
            f"TOTAL  time predicted={s[0]:.3f}s actual={s[1]:.3f}s"
            f"  llm calls predicted={llm[0]} executed={llm[1]}  tool calls predicted={tools[0]} executed={tools[1]}"
            f"  prompt tokens predicted={prompt[0]} actual={prompt[1]}"
            f"  decode tokens predicted={decode[0]} generated={decode[1]}"
        )


def totals(
    graph: ConsolidatedGraph,
    estimates: Mapping[str, NodeEstimate],
    plan: ExecutionPlan,
    actual: RunActuals | None,
) -> Totals:
    kinds = {node.id: node.kind for node in graph.workflow.nodes}

    def pair(estimate: int, measured: int) -> tuple[int, int | None]:
        return estimate, None if actual is None else measured

    def measured(field: str, llm: bool | None = None) -> int:
        if actual is None:
            return 0
        return sum(getattr(a, field) for n, a in actual.nodes.items() if llm is None or (kinds.get(n) == "llm") == llm)

    est = estimates.values()
    llm = [e for n, e in estimates.items() if kinds[n] == "llm"]
    return Totals(
        pair(sum(e.calls for e in llm), measured("executed", True)),
        pair(sum(e.calls for n, e in estimates.items() if kinds[n] != "llm"), measured("executed", False)),
        pair(sum(e.prompt_tokens or 0 for e in est), measured("prompt_tokens")),
        pair(sum(e.decode_tokens or 0 for e in est), measured("decode_tokens")),
        (plan.makespan_s, None if actual is None else actual.run_s),
    )


def explain_numbers(
    graph: ConsolidatedGraph, problem: PlanProblem, plan: ExecutionPlan, actual: RunActuals | None = None
) -> dict[str, Any]:
    """The figures of EXPLAIN (ANALYZE, with `actual`) as plain JSON-ready values."""
    estimates = node_estimates(graph, problem, plan)
    nodes: dict[str, Any] = {}
    for node in graph.workflow.nodes:
        measured = actual.nodes.get(node.id) if actual is not None else None
        nodes[node.id] = {
            "name": node.name,
            "kind": node.kind,
            "instances": graph.counters[node.id].logical,
            "estimate": asdict(estimates[node.id]),
            "actual": None if measured is None else {f: getattr(measured, f) for f in ACTUAL_FIELDS},
        }
    epochs = [
        {
            "epoch": index,
            "tasks": list(dict.fromkeys(p.task for p in epoch.placements)),
            "splits": {
                task: by_worker
                for task, by_worker in plan.shares().items()
                if any(p.task == task for p in epoch.placements)
            },
            "tools": list(epoch.tools),
            "predicted_s": epoch.time_s,
            "actual_s": None if actual is None else actual.epoch_s[index - 1],
        }
        for index, epoch in enumerate(plan.epochs, 1)
    ]
    return {
        "workflow": graph.workflow.spec.name,
        "rows": graph.rows,
        "planner": plan.planner,
        "optimal": plan.optimal,
        "plan_s": None if actual is None else actual.plan_s,
        "nodes": nodes,
        "epochs": epochs,
        "totals": asdict(totals(graph, estimates, plan, actual)),
    }
