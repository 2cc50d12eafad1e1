"""`halo.compile(workflow).run(batch)`: the public face of the runtime.

`compile` validates the workflow, starts the workers and loads the models they will run, and binds
databases and tools. `run` consolidates the batch, plans it (epoch DP, greedy, or the serial
baseline) from the workers' current state (the models resident on each), emits the execution graph
and hands it to the Processor; the result has one output dict per input row in input order, the
per-row errors, and the run's counters. An app `attach`ed to an `OnlineSession` runs its batches on
the session's loop thread, beside other runs in flight (planning stays on the calling thread).
"""

from __future__ import annotations

import os
import time
import warnings
from collections.abc import Callable, Collection, Mapping
from concurrent.futures import Future
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal

from halo.engine import EngineStats, LLMEngine
from halo.engine.model_source import default_cache_dir
from halo.errors import InvalidRequestError
from halo.plan import consolidate
from halo.plan.consolidated_graph import ConsolidatedGraph
from halo.plan.cost import (
    LatencyCurves,
    OutputLengthHistory,
    ProfileMissingWarning,
    ToolCostModel,
    load_curves,
    output_key,
)
from halo.plan.emit import emit
from halo.plan.plan_problem import build_plan_problem
from halo.plan.search import ExecutionPlan, plan_dp, plan_greedy
from halo.runtime import journal as journal_io
from halo.runtime.batch import split_valid, to_rows
from halo.runtime.llm_worker import EngineSet, LocalWorker, RayWorker, engine_factory
from halo.runtime.online_session import OnlineSession
from halo.runtime.processor import Processor, Progress
from halo.runtime.results import EpochTiming, RowError, RunResult, RunStats, Span
from halo.runtime.serial import run_serial
from halo.runtime.tools.tool_runner import ToolRunner
from halo.spec.workflow import Workflow

WARM_PREFIX_WAIT_S = 2.0  # how long planning waits for the session thread to read the prefix cache

PlanMode = Literal["dp", "greedy", "serial"]


def compile(  # noqa: A001 - the public name the design asks for
    workflow: Workflow | str | os.PathLike[str],
    *,
    workers: int = 1,
    models: Mapping[str, str] | None = None,
    plan: PlanMode = "dp",
    dtype: str = "auto",
    engine_options: Mapping[str, Any] | None = None,
    allowed_hosts: Collection[str] = (),
    tool_threads: int = 16,
    max_inflight: int | None = None,
    ray_address: str | None = None,
) -> CompiledWorkflow:
    """Validate `workflow`, start `workers` LLM workers with their models loaded, bind its tools.

    `models` maps a model source named in the workflow to another one to load instead (e.g. a local
    GGUF). `engine_options` go to every `LLMEngine` (kv_memory_gb, max_num_seqs, ...). With more than
    one worker each runs in a Ray actor on its share of the cores (a local Ray is started on demand,
    or `ray_address` joins a cluster).
    """
    if isinstance(workflow, str | os.PathLike):
        workflow = Workflow.from_yaml(workflow)
    workflow.validate()
    if plan not in ("dp", "greedy", "serial"):
        raise InvalidRequestError(f"plan must be 'dp', 'greedy' or 'serial', got {plan!r}")
    if not isinstance(workers, int) or workers < 1:
        raise InvalidRequestError(f"workers must be a positive integer, got {workers!r}")
    if plan == "serial" and workers != 1:
        raise InvalidRequestError("the serial baseline runs on one worker")
    return CompiledWorkflow(
        workflow,
        workers=workers,
        models=dict(models or {}),
        plan=plan,
        engine_options={"dtype": dtype, **dict(engine_options or {})},
        allowed_hosts=tuple(allowed_hosts),
        tool_threads=tool_threads,
        max_inflight=max_inflight,
        ray_address=ray_address,
    )


@dataclass
class _RunContext:
    rows: list[Any]
    valid: list[int]
    input_errors: list[RowError]
    graph: ConsolidatedGraph | None
    plan: ExecutionPlan | None
    plan_s: float
    kv_parents: dict[str, str]


class CompiledWorkflow:
    """A workflow bound to workers, models and tools; `run` it over as many batches as you like."""

    def __init__(
        self,
        workflow: Workflow,
        *,
        workers: int,
        models: dict[str, str],
        plan: PlanMode,
        engine_options: dict[str, Any],
        allowed_hosts: tuple[str, ...],
        tool_threads: int,
        max_inflight: int | None,
        ray_address: str | None,
    ) -> None:
        self.workflow = workflow
        self.graph = workflow.graph
        self.plan_mode = plan
        self.num_workers = workers
        self._models = models
        self._engine_options = engine_options
        self._max_inflight = max_inflight
        self.model_sources = sorted({self.graph.model_source(n) or "" for n in self.graph.nodes if n.kind == "llm"})
        self._tool_options = {"max_threads": tool_threads, "allowed_hosts": allowed_hosts}
        # Observed tool latencies (and the SQL seconds-per-EXPLAIN-unit fit) carry over between runs.
        self.tool_costs_path = default_cache_dir() / "tool_costs.json"
        self.tool_costs = _load_tool_costs(self.tool_costs_path)
        self.output_history = _load_output_history()
        with self._new_tools() as tools:  # bind databases and functions now: a broken one fails compile
            tools.open_databases()
        self._workers: list[Any] = []
        self._session: OnlineSession | None = None  # where runs execute when attached (else: the caller)
        self._curves: dict[str, LatencyCurves] = {}
        self._tokenizers: dict[str, Any] = {}
        self.warnings: list[str] = []
        if workers == 1:
            factory = engine_factory(engine_options)
            engines = EngineSet(
                lambda source: factory(self._models.get(source, source)), capacity=max(2, len(self.model_sources))
            )
            self._workers = [LocalWorker(0, engines)]
            for source in self.model_sources:
                engine = engines.get(source)
                assert engine is not None
                self._tokenizers[source] = engine.tokenizer
        else:
            self._start_ray(ray_address)
            threads = max(1, (os.cpu_count() or 2) // workers)
            self._workers = [RayWorker(i, engine_options, threads) for i in range(workers)]
            for source in self.model_sources:
                from halo.engine.checkpoint import load_tokenizer

                self._tokenizers[source] = load_tokenizer(self._models.get(source, source))
            if self.model_sources:  # every worker loads the first model, all at once; others on demand
                import ray

                ray.get([w.preload_async(self.model_sources[0]) for w in self._workers])

    # -- public -------------------------------------------------------------------------------------

    def run(
        self,
        batch: Any,
        *,
        journal: str | os.PathLike[str] | None = None,
        resume: bool = False,
        on_progress: Callable[[Progress], None] | None = None,
        plan: PlanMode | None = None,
        on_row: Callable[[int, dict[str, Any], RowError | None], None] | None = None,
    ) -> RunResult:
        """Run the workflow over `batch`; with `journal`, finished work is recorded there as it happens
        and `resume=True` skips what an earlier (interrupted) run with the same journal finished.
        `plan` overrides the compiled planner for this run (e.g. "serial" for a baseline).
        `on_row(index, outputs, error)` is called once per input row as soon as that row is done (its
        values are those of the result; rows rejected before running come first, serial runs report at
        the end); it runs on the thread executing the batch, so it must be quick."""
        clock = time.perf_counter()
        arrived = time.monotonic()  # the run's age on a shared session: older runs are served first
        mode = plan or self.plan_mode
        if mode not in ("dp", "greedy", "serial") or (mode == "serial" and self.num_workers != 1):
            raise InvalidRequestError(f"plan {mode!r} is not available here (dp, greedy; serial on one worker)")
        context = self._prepare(batch, mode)
        stats = RunStats(rows=len(context.rows), plan_s=context.plan_s, planner=mode)
        reported: set[int] = set()
        report_row = None
        if on_row is not None:
            for error in context.input_errors:
                reported.add(error.row)
                on_row(error.row, dict.fromkeys(b.name for b in self.graph.outputs), error)

            def report_row(local: int, row_outputs: dict[str, Any], error: RowError | None) -> None:
                original = context.valid[local]
                reported.add(original)
                on_row(original, row_outputs, None if error is None else RowError(original, error.node, error.message))

        if mode == "serial":
            outcome, timeline = self._run_serial(context, stats)
        else:
            outcome, timeline = self._run_planned(context, stats, journal, resume, on_progress, arrived, report_row)
        outputs: list[dict[str, Any]] = [dict.fromkeys(b.name for b in self.graph.outputs) for _ in context.rows]
        errors = list(context.input_errors)
        for local, original in enumerate(context.valid):
            if local in outcome.outputs:
                outputs[original] = outcome.outputs[local]
            if local in outcome.errors:
                e = outcome.errors[local]
                errors.append(RowError(original, e.node, e.message))
        errors.sort(key=lambda e: e.row)
        if on_row is not None:
            by_row = {e.row: e for e in errors}
            for index in range(len(context.rows)):
                if index not in reported:
                    on_row(index, outputs[index], by_row.get(index))
        stats.rows_failed = len(errors)
        stats.wall_s = time.perf_counter() - clock
        for span in timeline:
            stats.seconds_by_kind[span.kind] = stats.seconds_by_kind.get(span.kind, 0.0) + span.end - span.start
        return RunResult(outputs, errors, stats, timeline)

    def attach(self, session: OnlineSession) -> None:
        """Run every later batch on `session`'s loop (with other runs in flight); one worker in-process
        or Ray workers alike. `detach` goes back to running on the caller's thread."""
        self._session = session

    def detach(self) -> None:
        self._session = None

    @property
    def workers(self) -> list[Any]:
        return list(self._workers)

    def engine(self, model: str | None = None) -> LLMEngine:
        """The loaded engine of `model` (default: the workflow's first model) on a one-worker app, for
        callers that drive it directly (the benchmark's baselines share it with `run`)."""
        worker = self._workers[0] if self._workers else None
        if not isinstance(worker, LocalWorker):
            raise InvalidRequestError("engine() needs a compiled app with one in-process worker")
        source = model if model is not None else (self.model_sources[0] if self.model_sources else "")
        engine = worker.engines.get(source)
        if engine is None:
            raise InvalidRequestError(f"no engine for model {source!r} could be loaded")
        return engine

    def explain(self, batch: Any) -> str:
        """The consolidated batch and the plan that `run` would follow, as text."""
        from halo.plan import explain_text

        context = self._prepare(batch, "greedy" if self.plan_mode == "greedy" else "dp")
        assert context.graph is not None and context.plan is not None
        return explain_text(context.graph) + "\n\n" + context.plan.explain()

    def close(self) -> None:
        for worker in self._workers:
            if isinstance(worker, RayWorker):
                worker.shutdown()
        self._workers = []

    def __enter__(self) -> CompiledWorkflow:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- stages -------------------------------------------------------------------------------------

    def _prepare(self, batch: Any, mode: PlanMode) -> _RunContext:
        clock = time.perf_counter()
        rows = to_rows(batch)
        valid, input_errors = split_valid(rows, self.workflow.spec.inputs)
        graph = None
        chosen = None
        kv_parents: dict[str, str] = {}
        if mode != "serial":
            graph = consolidate(
                self.graph, [rows[i] for i in valid], self._tokenizers, check=False, warm_prefix=self._warm_prefix
            )
            problem = build_plan_problem(
                graph,
                self._curves_for,
                workers=self.num_workers,
                tool_cost_s=self._tool_cost_s,
                output_history=self.output_history,
            )
            resident = self._resident_models(problem)
            if resident:  # the plan starts from the models the workers hold now (in flight or idle)
                loaded = sum(problem.model_load_s[m] for m in set(resident.values()))
                problem = replace(problem, resident=resident, per_call_s=problem.per_call_s - loaded)
            chosen = plan_greedy(problem) if mode == "greedy" else plan_dp(problem, time_limit_s=1.0)
            kv_parents = {t.id: t.kv_parent for t in problem.tasks if t.kv_parent is not None}
        return _RunContext(rows, valid, input_errors, graph, chosen, time.perf_counter() - clock, kv_parents)

    def _warm_prefix(self, model: str, prompts: list[list[int]]) -> list[int]:
        """Per prompt, the longest prefix an in-process engine of `model` caches now (0 where none does).

        The engines are stepped by one thread only: on an online session the question crosses to the
        session's thread (answered between two steps); otherwise this thread is the one that steps them.
        """
        engines = [e for w in self._workers if isinstance(w, LocalWorker) and (e := w.engines.engines.get(model))]
        if not engines or not prompts:
            return [0] * len(prompts)

        def ask() -> list[int]:
            per_engine = [engine.cached_prefix_lengths(prompts) for engine in engines]
            return [max(lengths) for lengths in zip(*per_engine, strict=True)]

        session = self._session
        if session is None:
            return ask()
        answer: Future[list[int]] = Future()
        session.call_soon(lambda: answer.set_result(ask()) if not answer.done() else None)
        try:
            return answer.result(timeout=WARM_PREFIX_WAIT_S)
        except TimeoutError:  # the loop is stuck in a long step: plan as if nothing were cached
            answer.cancel()
            return [0] * len(prompts)

    def _resident_models(self, problem: Any) -> dict[str, str]:
        """Plan worker id -> the model it holds now, for the models this problem runs (the worker's
        most recently used one: in an online session, the model its in-flight runs are decoding)."""
        needed = set(problem.model_load_s)
        resident: dict[str, str] = {}
        if not problem.tasks:
            return resident
        for plan_worker, worker in zip(problem.workers, self._workers, strict=False):
            held = [m for m in worker.resident_models() if m in needed]
            if held:
                resident[plan_worker.id] = held[-1]
        return resident

    def _new_tools(self, *, cache: bool = True, coalesce: bool = True) -> ToolRunner:
        """A tool runner for one run: its result cache and coalescing never outlive the run."""
        return ToolRunner(
            self.workflow, cache=cache, coalesce=coalesce, cost_model=self.tool_costs, **self._tool_options
        )

    def _tool_cost_s(self, node: Any, physical_calls: int) -> float:
        """A tool node's seconds on the pool: its measured (or declared) latency, in waves of pool width."""
        width = int(self._tool_options["max_threads"])
        return self.tool_costs.estimate_s(node) * -(-max(physical_calls, 0) // width)

    def _save_tool_costs(self) -> None:
        try:
            self.tool_costs.save(self.tool_costs_path)
        except OSError as exc:  # a read-only cache only costs the next run its latency history
            self.warnings.append(f"could not save tool latencies to {self.tool_costs_path}: {exc.strerror}")

    def _learn_output_lengths(self, observed: Mapping[str, tuple[int, int]]) -> None:
        for node_id, (tokens, calls) in observed.items():
            node = self.graph.node(node_id)
            self.output_history.observe(output_key(node, self.graph.model_source(node)), round(tokens / calls), calls)
        try:
            self.output_history.save()
        except OSError as exc:
            self.warnings.append(f"could not save output lengths: {exc.strerror}")

    def _curves_for(self, model: str) -> LatencyCurves:
        curves = self._curves.get(model)
        if curves is None:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always", ProfileMissingWarning)
                dtype = self._engine_options.get("dtype", "auto")
                curves = self._curves[model] = load_curves(self._models.get(model, model), dtype=str(dtype))
            self.warnings.extend(str(w.message) for w in caught)
        return curves

    def _run_planned(
        self,
        context: _RunContext,
        stats: RunStats,
        journal: str | os.PathLike[str] | None,
        resume: bool,
        on_progress: Callable[[Progress], None] | None,
        arrived: float,
        on_row: Callable[[int, dict[str, Any], RowError | None], None] | None = None,
    ) -> tuple[Any, list[Span]]:
        graph, plan = context.graph, context.plan
        assert graph is not None and plan is not None
        execution = emit(graph, plan, self.num_workers, context.kv_parents)
        writer = state = None
        if journal is not None:
            path = Path(journal)
            print_ = journal_io.fingerprint(self.workflow.spec, context.rows)
            if resume and path.exists():
                state = journal_io.load(path, print_)
            writer = journal_io.JournalWriter(path, print_, fresh=not (resume and path.exists()))
        before = [w.stats() for w in self._workers] if self._session is None else []
        tools = self._new_tools()
        try:
            processor = Processor(
                graph,
                [context.rows[i] for i in context.valid],
                execution,
                self._workers,
                tools,
                max_inflight=self._max_inflight or self._adaptive_inflight(),
                journal=writer,
                resume=state,
                on_progress=on_progress,
                on_row=on_row,
            )
            session = self._session
            outcome = session.execute(processor, arrived) if session is not None else processor.run()
        finally:
            tools.close()
            if writer is not None:
                writer.close()
            self._save_tool_costs()
        if self._session is None:
            for b, a in zip(before, [w.stats() for w in self._workers], strict=True):
                _add_token_deltas(stats, b, a)
        else:  # other runs share the engines: count this run's own requests (joined ones cost nothing)
            stats.prompt_tokens = outcome.prompt_tokens
            stats.cached_tokens = outcome.cached_tokens
            stats.prefill_tokens = outcome.prompt_tokens - outcome.cached_tokens
            stats.decode_tokens = outcome.generated_tokens
        tool_stats = tools.stats
        llm_nodes = [n for n in self.graph.nodes if n.kind == "llm"]
        stats.llm_calls_logical = len(context.valid) * len(llm_nodes)
        stats.llm_calls_executed = outcome.llm_executed
        stats.llm_calls_coalesced = outcome.llm_coalesced + outcome.llm_joined
        stats.tool_calls_logical = len(context.valid) * (len(self.graph.nodes) - len(llm_nodes))
        stats.tool_calls_executed = tool_stats.executed
        stats.tool_calls_coalesced = tool_stats.coalesced
        stats.tool_cache_hits = tool_stats.cache_hits
        stats.nodes_skipped = outcome.skipped
        stats.rows_resumed = len(outcome.resumed_rows)
        stats.calls_by_worker = dict(outcome.calls_by_worker)
        stats.kv_moves = outcome.kv_moves
        self._learn_output_lengths(outcome.output_tokens)
        stats.planner = plan.planner
        stats.predicted_s = plan.makespan_s
        for span in outcome.timeline:
            if span.kind == "llm":
                workers = stats.workers_by_node.setdefault(span.node, [])
                if span.worker not in workers:
                    workers.append(span.worker)
        stats.epochs = _epoch_timings(plan, outcome.timeline)
        return outcome, outcome.timeline

    def _run_serial(self, context: _RunContext, stats: RunStats) -> tuple[Any, list[Span]]:
        worker = self._workers[0]
        assert isinstance(worker, LocalWorker)

        def engine_for(source: str) -> LLMEngine:
            engine = worker.engines.get(source)
            assert engine is not None
            return engine

        tools = self._new_tools(cache=False, coalesce=False)

        def call_tool(node: Any, request: dict[str, Any]) -> dict[str, Any]:
            return tools.submit(node, request).result()

        rows = [context.rows[i] for i in context.valid]
        before = worker.stats()
        with tools:
            outcome = run_serial(self.graph, rows, engine_for, call_tool)
        _add_token_deltas(stats, before, worker.stats())
        llm_nodes = sum(1 for n in self.graph.nodes if n.kind == "llm")
        stats.llm_calls_logical = len(rows) * llm_nodes
        stats.llm_calls_executed = outcome.llm_executed
        stats.tool_calls_logical = len(rows) * (len(self.graph.nodes) - llm_nodes)
        stats.tool_calls_executed = outcome.tool_executed
        stats.nodes_skipped = outcome.skipped
        return outcome, outcome.timeline

    def _adaptive_inflight(self) -> int:
        """Requests in flight per worker: the smallest batch that reaches 95% of the best decode
        throughput the cost model predicts (more only adds latency and KV pressure)."""
        limit = int(self._engine_options.get("max_num_seqs", 128))
        best = 1
        for source in self.model_sources or [""]:
            curves = self._curves_for(source)
            rate = [b / max(curves.decode_step_s(b, 256.0), 1e-9) for b in range(1, limit + 1)]
            peak = max(rate)
            best = max(best, next(b for b, r in enumerate(rate, 1) if r >= 0.95 * peak))
        return best

    @staticmethod
    def _start_ray(address: str | None) -> None:
        import ray

        if not ray.is_initialized():
            ray.init(
                address=address,
                include_dashboard=False,
                log_to_driver=False,
                num_cpus=None if address else os.cpu_count(),
            )


def _add_token_deltas(stats: RunStats, before: EngineStats, after: EngineStats) -> None:
    """Add what one worker's engines computed between two snapshots to the run's token counters."""
    stats.prompt_tokens += after.prompt_tokens - before.prompt_tokens
    stats.prefill_tokens += after.prefill_tokens - before.prefill_tokens
    stats.cached_tokens += after.cached_tokens - before.cached_tokens
    stats.decode_tokens += after.decode_tokens - before.decode_tokens


def _load_output_history() -> OutputLengthHistory:
    try:
        return OutputLengthHistory.load()
    except (OSError, ValueError, KeyError, TypeError):
        return OutputLengthHistory()  # none yet, or unreadable: plan with max_tokens


def _load_tool_costs(path: Path) -> ToolCostModel:
    try:
        return ToolCostModel.load(path)
    except (OSError, ValueError, KeyError, TypeError):
        return ToolCostModel()  # none yet, or unreadable: start from the declared defaults


def _epoch_timings(plan: ExecutionPlan, timeline: list[Span]) -> list[EpochTiming]:
    spans: dict[str, list[Span]] = {}
    for span in timeline:
        spans.setdefault(span.node, []).append(span)
    out = []
    for index, epoch in enumerate(plan.epochs):
        nodes = tuple(p.task for p in epoch.placements)
        mine = [s for n in nodes for s in spans.get(n, [])]
        actual = max(s.end for s in mine) - min(s.start for s in mine) if mine else 0.0
        out.append(EpochTiming(index, nodes, epoch.time_s, actual))
    return out
