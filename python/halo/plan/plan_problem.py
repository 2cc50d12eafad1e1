"""From a consolidated batch and measured latency curves to the plan-search problem.

One task per llm node of the workflow graph (all of its rows run inside it as one batch), so the
problem's size depends on the graph, never on the batch. A task's times come from the model's
latency curves: prefill of the node's owned executions (prompt tokens after merging equal requests,
minus those a shared prefix already covers) and ``max_tokens`` decode steps at that batch size.
Tool nodes are not tasks: an llm node that reads a tool's result depends on the llm nodes behind it.
Requests rendered only at run time (deferred) are estimated from their static prefix plus the
``max_tokens`` of the llm results they read.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

from halo.plan.consolidated_graph import ConsolidatedGraph
from halo.plan.cost import LatencyCurves
from halo.plan.search import LLMTask, PlanProblem, Worker

DEFAULT_MODEL_LOAD_S = 4.0  # reading and converting the default GGUF on 2 cores (measured ~3.5-4.7 s)


def build_plan_problem(
    graph: ConsolidatedGraph,
    curves_for: Callable[[str], LatencyCurves],
    workers: int = 1,
    model_load_s: Mapping[str, float] | None = None,
    epoch_overhead_s: float = 0.005,
) -> PlanProblem:
    wf = graph.workflow
    llm_ids = {n.id for n in wf.nodes if n.kind == "llm"}
    nearest: dict[str, frozenset[str]] = {}  # node -> the llm nodes its result ultimately comes from
    tasks: list[LLMTask] = []
    models: set[str] = set()
    for node in wf.nodes:  # topological order
        deps = frozenset().union(*(nearest.get(u, frozenset()) for u in node.upstream))
        nearest[node.id] = frozenset({node.id}) if node.id in llm_ids else deps
        if node.id not in llm_ids:
            continue
        model = wf.model_source(node) or "default"
        models.add(model)
        counters = graph.counters[node.id]
        batch = max(counters.owned, 0)
        max_tokens = int(node.spec.max_tokens)
        if counters.deferred:
            upstream_out = sum(int(wf.node(d).spec.max_tokens) for d in deps)
            prompt = (counters.static_prefix_tokens or 0) + upstream_out
            cached = 0
        else:
            prompt = counters.physical_prompt_tokens // max(batch, 1)
            cached = counters.cached_prompt_tokens // max(batch, 1)
        curves = curves_for(model)
        prefill = curves.prefill_s(prompt - cached, cached, batch)
        steps = max(0, max_tokens - 1)
        decode = steps * curves.decode_step_s(batch, prompt + (steps + 1) / 2) if batch else 0.0
        tasks.append(LLMTask(node.id, model, prefill, decode, depends_on=tuple(sorted(deps))))
    loads = {m: DEFAULT_MODEL_LOAD_S for m in models} | dict(model_load_s or {})
    return PlanProblem(
        tasks=tuple(tasks),
        workers=tuple(Worker(f"w{i}") for i in range(workers)),
        model_load_s=loads,
        epoch_overhead_s=epoch_overhead_s,
    )
