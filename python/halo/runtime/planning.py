"""Planning an app's batches: rows checked, consolidated and handed to `halo.plan.plan` in one place.

`CostModels` is what an app plans with and learns from (latency curves per model, the tool latencies
and output lengths earlier runs observed); `BatchPlanner` turns a batch into a `PreparedBatch` with
the `PlanContext` of the app's workers as they are now. `CompiledWorkflow.run` and `explain` use the
app's planner; `halo explain` uses `fresh_planner`, the planner a freshly compiled app would have
(its workers' models as `halo run` loads them, nothing cached yet), so it prints the plan `halo run`
follows without loading a model.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from halo.engine.checkpoint import load_tokenizer
from halo.engine.model_source import default_cache_dir
from halo.engine.speculative_modes import SPECULATIVE_DEFAULT
from halo.errors import InvalidRequestError
from halo.plan import PlanContext, PlannedBatch, consolidate, plan
from halo.plan.consolidate import WarmPrefix
from halo.plan.consolidated_graph import ConsolidatedGraph
from halo.plan.cost import (
    LatencyCurves,
    OutputLengthHistory,
    ProfileMissingWarning,
    ToolCostModel,
    WeightsProfileMissingWarning,
    calls_key,
    decode_key,
    load_curves,
    output_key,
)
from halo.plan.cost.remote_latency import RemoteLatencyModel
from halo.runtime.batch import split_valid, to_rows
from halo.runtime.llm_worker import EngineRecipe
from halo.runtime.remote_models import counting_tokenizers
from halo.runtime.results import RowError
from halo.runtime.workers import models_loaded_at_start
from halo.spec.graph import GraphNode
from halo.spec.workflow import Workflow

PlanMode = Literal["dp", "greedy", "serial"]
DEFAULT_TOOL_THREADS = 16  # tool calls an app's pool runs at once


class CostModels:
    """The costs an app plans with; `profiles` (per model source, its engine's requested (dtype, weights),
    `("auto", "auto")` where absent: see `model_profiles`) picks each model's latency profile,
    `tool_threads` the pool width, `speculative` (per model source, its engines' speculative mode; absent:
    "off") whether a node's decode rate is measured and planned with.

    Tool latencies (and the SQL seconds-per-EXPLAIN-unit fit) and output lengths carry over between
    runs in the halo cache dir; what cannot be read or saved is noted in `warnings`.
    """

    def __init__(
        self,
        workflow: Workflow,
        *,
        models: Mapping[str, str],
        profiles: Mapping[str, tuple[str, str]],
        tool_threads: int,
        warnings: list[str],
        speculative: Mapping[str, str] | None = None,
    ) -> None:
        self.graph = workflow.graph
        self.speculative = {m: mode for m, mode in (speculative or {}).items() if mode != "off"}
        self.warnings = warnings
        self.profiles_missing = False  # some model plans with built-in default curves
        self.tool_costs_path = default_cache_dir() / "tool_costs.json"
        self.tool_costs = _load_tool_costs(self.tool_costs_path)
        self.output_history = _load_output_history()
        self.remote_latency = _load_remote_latency()
        self._models = dict(models)
        self._profiles = dict(profiles)
        self._tool_threads = tool_threads
        self._curves: dict[str, LatencyCurves] = {}

    def curves_for(self, model: str) -> LatencyCurves:
        curves = self._curves.get(model)
        if curves is None:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always", ProfileMissingWarning)
                warnings.simplefilter("always", WeightsProfileMissingWarning)
                dtype, weights = self._profiles.get(model, ("auto", "auto"))
                curves = self._curves[model] = load_curves(self._models.get(model, model), dtype=dtype, weights=weights)
            self.profiles_missing |= any(issubclass(w.category, ProfileMissingWarning) for w in caught)
            self.warnings.extend(str(w.message) for w in caught)
        return curves

    def tool_cost_s(self, node: GraphNode, physical_calls: int) -> float:
        """A tool node's seconds on the pool: its measured (or declared) latency, in waves of pool width."""
        return self.tool_costs.estimate_s(node) * -(-max(physical_calls, 0) // self._tool_threads)

    def save_tool_costs(self) -> None:
        try:
            self.tool_costs.save(self.tool_costs_path)
        except OSError as exc:  # a read-only cache only costs the next run its latency history
            self.warnings.append(f"could not save tool latencies to {self.tool_costs_path}: {exc.strerror}")

    def save_remote_latency(self) -> None:
        try:
            self.remote_latency.save()
        except OSError as exc:  # a read-only cache only costs the next run its remote latency history
            self.warnings.append(f"could not save remote latencies: {exc.strerror}")

    def learn_output_lengths(
        self,
        observed: Mapping[str, tuple[int, int]],
        instance_calls: Mapping[str, tuple[int, int]] | None = None,
        decode: Mapping[str, tuple[int, int, int]] | None = None,
    ) -> None:
        """Record a run's output lengths (llm node -> (tokens, calls)), the calls per instance of its
        conditional and map nodes (node -> (instances, calls)) and, for the nodes of models that draft
        speculatively, their decode rates (node -> (decode tokens, steps, rows)) in the history, and save it."""
        for node_id, (tokens, calls) in observed.items():
            node = self.graph.node(node_id)
            self.output_history.observe(output_key(node, self.graph.model_source(node)), round(tokens / calls), calls)
        for node_id, (tokens, steps, rows) in (decode or {}).items():
            node = self.graph.node(node_id)
            model = self.graph.model_source(node) or ""
            mode = self.speculative.get(model)
            if mode is not None:
                self.output_history.observe_decode(decode_key(node, model, mode), tokens, steps, rows)
        for node_id, (instances, calls) in (instance_calls or {}).items():
            node = self.graph.node(node_id)
            self.output_history.observe(calls_key(node, self.graph.model_source(node)), calls / instances, instances)
        try:
            self.output_history.save()
        except OSError as exc:
            self.warnings.append(f"could not save output lengths: {exc.strerror}")

    def adaptive_inflight(self, model_sources: Sequence[str], max_num_seqs: int) -> int:
        """Requests in flight per worker: the smallest batch that reaches 95% of the best decode
        throughput the cost model predicts (more only adds latency and KV pressure)."""
        best = 1
        for source in model_sources or [""]:
            curves = self.curves_for(source)
            rate = [b / max(curves.decode_step_s(b, 256.0), 1e-9) for b in range(1, max_num_seqs + 1)]
            peak = max(rate)
            best = max(best, next(b for b, r in enumerate(rate, 1) if r >= 0.95 * peak))
        return best


@dataclass(frozen=True)
class PreparedBatch:
    """A batch ready to execute: its rows, which of them fit the workflow, and their plan."""

    rows: list[Any]
    valid: list[int]  # indices of the rows that run
    input_errors: list[RowError]  # the rows that do not fit (never run)
    planned: PlannedBatch | None  # None for the serial baseline, which runs unplanned
    plan_s: float  # checking, consolidation and planning


@dataclass(frozen=True)
class BatchPlanner:
    """Plans batches for one app: `resident()` and `warm_prefix` say what its workers hold and cache now."""

    workflow: Workflow
    costs: CostModels
    tokenizers: Mapping[str, Any]
    workers: int
    resident: Callable[[], Sequence[Sequence[str]]]  # per worker, its models, least recently used first
    warm_prefix: WarmPrefix | None = None

    def prepare(self, batch: Any, mode: PlanMode) -> PreparedBatch:
        clock = time.perf_counter()
        rows, valid, input_errors = self._check(batch)
        planned = None
        if mode != "serial":
            planned = plan(self._consolidate(rows, valid), self.context(mode))
        return PreparedBatch(rows, valid, input_errors, planned, time.perf_counter() - clock)

    def graph(self, batch: Any) -> ConsolidatedGraph:
        """The consolidated batch alone (what `halo explain --format dot` draws)."""
        rows, valid, _ = self._check(batch)
        return self._consolidate(rows, valid)

    def context(self, mode: Literal["dp", "greedy"]) -> PlanContext:
        return PlanContext(
            self.costs.curves_for,
            workers=self.workers,
            tool_cost_s=self.costs.tool_cost_s,
            output_history=self.costs.output_history,
            remote_latency=self.costs.remote_latency,
            resident=self.resident(),
            speculative=self.costs.speculative,
            mode=mode,
        )

    def _check(self, batch: Any) -> tuple[list[Any], list[int], list[RowError]]:
        rows = to_rows(batch)
        valid, input_errors = split_valid(rows, self.workflow.spec.inputs)
        return rows, valid, input_errors

    def _consolidate(self, rows: list[Any], valid: list[int]) -> ConsolidatedGraph:
        # the rows were checked against the declared inputs above: the rest is the Processor's per-row work
        return consolidate(
            self.workflow.graph, [rows[i] for i in valid], self.tokenizers, check=False, warm_prefix=self.warm_prefix
        )


def model_profiles(recipe: EngineRecipe, workflow: Workflow) -> dict[str, tuple[str, str]]:
    """Per model source of `workflow`, the (dtype, weights) its engine is asked for (`recipe`: the
    declaration's settings over the run's), which name the latency profile it is planned with."""
    sources = {workflow.graph.model_source(n) or "" for n in workflow.graph.nodes if n.kind == "llm"}
    out = {}
    for source in sorted(sources):
        options = recipe.options_for(source)
        out[source] = (str(options.get("dtype") or "auto"), str(options.get("weights") or "auto"))
    return out


def speculative_modes(recipe: EngineRecipe, workflow: Workflow) -> dict[str, str]:
    """Per local model source of `workflow`, the speculative mode its engine is built with ("off" by
    default; a remote model's server decodes as it does)."""
    remote = workflow.graph.remote_models()
    sources = {workflow.graph.model_source(n) or "" for n in workflow.graph.nodes if n.kind == "llm"} - set(remote)
    return {s: str(recipe.options_for(s).get("speculative") or SPECULATIVE_DEFAULT) for s in sorted(sources)}


def fresh_planner(
    workflow: Workflow,
    *,
    workers: int = 1,
    dtype: str = "auto",
    weights: str = "auto",
    speculative: str | None = None,
) -> BatchPlanner:
    """The planner `halo.compile(workflow, workers=workers, dtype=dtype, engine_options={"weights":
    weights, "speculative": speculative})` has right after it starts its workers (their models loaded
    as `compile` loads them, no prefix cached), without starting any; `speculative` None: the engine's
    default."""
    if workers < 1:
        raise InvalidRequestError(f"workers must be a positive integer, got {workers!r}")
    remote = workflow.graph.remote_models()
    sources = sorted(
        {
            s
            for n in workflow.graph.nodes
            if n.kind == "llm"
            if (s := workflow.graph.model_source(n) or "") not in remote
        }
    )
    options = {"dtype": dtype, "weights": weights} | ({} if speculative is None else {"speculative": speculative})
    recipe = EngineRecipe(options, workflow.graph.model_settings())
    costs = CostModels(
        workflow,
        models={},
        profiles=model_profiles(recipe, workflow),
        tool_threads=DEFAULT_TOOL_THREADS,
        warnings=[],
        speculative=speculative_modes(recipe, workflow),  # as compile prices decodes
    )
    held = tuple(models_loaded_at_start(sources, workers))
    tokenizers = {source: load_tokenizer(source) for source in sources} | counting_tokenizers(workflow)
    return BatchPlanner(workflow, costs, tokenizers, workers=workers, resident=lambda: (held,) * workers)


def _load_output_history() -> OutputLengthHistory:
    try:
        return OutputLengthHistory.load()
    except (OSError, ValueError, KeyError, TypeError):
        return OutputLengthHistory()  # none yet, or unreadable: plan with max_tokens


def _load_remote_latency() -> RemoteLatencyModel:
    try:
        return RemoteLatencyModel.load()
    except (OSError, ValueError, KeyError, TypeError):
        return RemoteLatencyModel()  # none yet, or unreadable: plan remote calls with the default curve


def _load_tool_costs(path: Any) -> ToolCostModel:
    try:
        return ToolCostModel.load(path)
    except (OSError, ValueError, KeyError, TypeError):
        return ToolCostModel()  # none yet, or unreadable: start from the declared defaults
