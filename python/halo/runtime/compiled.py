"""`halo.compile(workflow).run(batch)`: the public face of the runtime.

`compile` validates the workflow, starts the workers and loads the models they will run
(`runtime/workers.py`), and binds databases and tools. `run` plans the batch from the workers'
current state (`runtime/planning.py`: the one planner, or the serial baseline unplanned), emits the
execution graph and hands it to the Processor; the result (`runtime/run_stats.py`) has one output
dict per input row in input order, the per-row errors, and the run's counters. A planned run answers
pure requests from the persistent result cache (`runtime/result_cache.py`, on unless `cache=False`)
and stores what it computes there; the serial baseline never uses it. An app `attach`ed to
an `OnlineSession` runs its batches on the session's loop thread, beside other runs in flight
(planning stays on the calling thread).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Collection, Mapping, Sequence
from pathlib import Path
from typing import Any

from halo.engine import LLMEngine
from halo.errors import InvalidRequestError
from halo.plan import PlannedBatch
from halo.plan.emit import emit
from halo.runtime import journal as journal_io
from halo.runtime.explain_analyze import AnalyzedRun
from halo.runtime.llm_worker import EngineRecipe, LocalWorker
from halo.runtime.online_session import OnlineSession
from halo.runtime.planning import (
    DEFAULT_TOOL_THREADS,
    BatchPlanner,
    CostModels,
    PlanMode,
    PreparedBatch,
    model_profiles,
    speculative_modes,
)
from halo.runtime.processor import Processor, ProcessorOutcome, Progress
from halo.runtime.remote_models import counting_tokenizers, learn_latencies, remote_identities, start_remote_workers
from halo.runtime.result_cache import ResultCache, cache_path
from halo.runtime.result_keys import ResultKeys, model_identities
from halo.runtime.results import RowError, RunResult
from halo.runtime.run_stats import RowCallback, TokenCounts, run_result, run_stats
from halo.runtime.serial import SerialOutcome, run_serial
from halo.runtime.tools.tool_runner import ToolRunner
from halo.runtime.tools.tool_stats import ToolSpan
from halo.runtime.workers import RayOptions, WorkerPool
from halo.spec.workflow import Workflow

__all__ = ["CompiledWorkflow", "PlanMode", "compile"]


def compile(  # noqa: A001 - the public name the design asks for
    workflow: Workflow | str | os.PathLike[str],
    *,
    workers: int = 1,
    models: Mapping[str, str] | None = None,
    plan: PlanMode = "dp",
    dtype: str = "auto",
    engine_options: Mapping[str, Any] | None = None,
    allowed_hosts: Collection[str] = (),
    tool_threads: int = DEFAULT_TOOL_THREADS,
    max_inflight: int | None = None,
    ray_address: str | None = None,
    worker_cpus: float | None = None,
    worker_resources: Sequence[str] | None = None,
    cache: bool = True,
    cache_dir: str | os.PathLike[str] | None = None,
) -> CompiledWorkflow:
    """Validate `workflow`, start `workers` LLM workers with their models loaded, bind its tools.

    `models` maps a model source named in the workflow to another one to load instead (e.g. a local
    GGUF). `engine_options` go to every `LLMEngine` (kv_memory_gb, max_num_seqs, ...). With more than
    one worker each runs in a Ray actor (a local Ray is started on demand, or `ray_address`, e.g.
    "10.0.0.1:6379", joins an existing cluster) reserving `worker_cpus` CPUs (default: this machine's
    cores ÷ workers); `worker_resources` names one custom Ray resource per worker, a node label that
    puts worker i on a node started with it (`ray start --resources '{"LABEL": 1}'`; README "Running
    on a Ray cluster"). `cache` turns the persistent result cache on for `run` (a run's
    `cache=` overrides it), kept in `cache_dir` (default: `$HALO_RESULT_CACHE_DIR`, else
    `<halo cache dir>/results`; docs/result_cache.md).
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
    if not isinstance(cache, bool):
        raise InvalidRequestError(f"cache must be True or False, got {cache!r}")
    if isinstance(worker_resources, str):
        raise InvalidRequestError(f"worker_resources must be a list of names, one per worker: got {worker_resources!r}")
    ray = RayOptions(ray_address, worker_cpus, tuple(worker_resources or ()))
    ray.check(workers)
    return CompiledWorkflow(
        workflow,
        workers=workers,
        models=dict(models or {}),
        plan=plan,
        engine_options={"dtype": dtype, **dict(engine_options or {})},
        allowed_hosts=tuple(allowed_hosts),
        tool_threads=tool_threads,
        max_inflight=max_inflight,
        ray=ray,
        cache=cache,
        cache_dir=cache_dir,
    )


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
        ray: RayOptions | None = None,
        cache: bool = True,
        cache_dir: str | os.PathLike[str] | None = None,
    ) -> None:
        self.workflow = workflow
        self.cache = cache  # the persistent result cache, for runs that do not say
        self._cache_dir = cache_dir
        self._result_cache: ResultCache | None = None  # opened by the first run that uses it
        self._model_identities: dict[str, dict[str, Any]] | None = None
        self.graph = workflow.graph
        self.plan_mode = plan
        self.num_workers = workers
        self._engine_options = engine_options
        self._max_inflight = max_inflight
        # the models local engines run; remote (`source: openai`) ones have workers of their own
        remote = self.graph.remote_models()
        self.model_sources = sorted(
            {s for n in self.graph.nodes if n.kind == "llm" if (s := self.graph.model_source(n) or "") not in remote}
        )
        self._tool_options = {"max_threads": tool_threads, "allowed_hosts": allowed_hosts}
        self.warnings: list[str] = []
        recipe = self._recipe = EngineRecipe(engine_options, self.graph.model_settings(), models)
        self.costs = CostModels(
            workflow,
            models=models,
            profiles=model_profiles(recipe, workflow),  # the latency profiles of the engines the recipe builds
            tool_threads=tool_threads,
            warnings=self.warnings,
            speculative=speculative_modes(recipe, workflow),
        )
        self.tool_costs_path = self.costs.tool_costs_path
        self.tool_costs = self.costs.tool_costs
        self.output_history = self.costs.output_history
        with self._new_tools() as tools:  # bind databases and functions now: a broken one fails compile
            tools.open_databases()
        self._session: OnlineSession | None = None  # where runs execute when attached (else: the caller)
        # Remote workers first: an unset API key fails compile before any model loads.
        self._remote = {w.source: w for w in start_remote_workers(workflow, first_index=workers)}
        try:
            self._pool = WorkerPool(workers, self.model_sources, recipe=recipe, ray=ray)
        except BaseException:
            self._close_remote()
            raise
        self._pool.workers.extend(self._remote.values())  # indices workers, workers + 1, ...
        self._planner = BatchPlanner(
            workflow,
            self.costs,
            {**self._pool.tokenizers, **counting_tokenizers(workflow)},  # remote models: counted, never encoded
            workers=workers,
            resident=self._pool.resident,
            warm_prefix=self._warm_prefix,
        )

    # -- public -------------------------------------------------------------------------------------

    def run(
        self,
        batch: Any,
        *,
        journal: str | os.PathLike[str] | None = None,
        resume: bool = False,
        on_progress: Callable[[Progress], None] | None = None,
        plan: PlanMode | None = None,
        on_row: RowCallback | None = None,
        cache: bool | None = None,
    ) -> RunResult:
        """Run the workflow over `batch`; with `journal`, finished work is recorded there as it happens
        and `resume=True` skips what an earlier (interrupted) run with the same journal finished.
        `plan` overrides the compiled planner for this run (e.g. "serial" for a baseline), `cache` the
        compiled persistent-cache setting (None: `compile`'s; the serial baseline never uses it).
        `on_row(index, outputs, error)` is called once per input row as soon as that row is done (its
        values are those of the result; rows rejected before running come first, serial runs report at
        the end); it runs on the thread executing the batch, so it must be quick."""
        clock = time.perf_counter()
        arrived = time.monotonic()  # the run's age on a shared session: older runs are served first
        mode = plan or self.plan_mode
        if cache is not None and not isinstance(cache, bool):
            raise InvalidRequestError(f"cache must be True, False or None, got {cache!r}")
        if mode not in ("dp", "greedy", "serial") or (mode == "serial" and self.num_workers != 1):
            raise InvalidRequestError(f"plan {mode!r} is not available here (dp, greedy; serial on one worker)")
        if mode == "serial" and self._remote:
            raise InvalidRequestError(
                "the serial baseline runs in-process engines only; this workflow has remote models"
            )
        prepared = self._planner.prepare(batch, mode)
        reported: set[int] = set()
        report_row = None
        if on_row is not None:
            for error in prepared.input_errors:
                reported.add(error.row)
                on_row(error.row, dict.fromkeys(b.name for b in self.graph.outputs), error)

            def report_row(local: int, row_outputs: dict[str, Any], error: RowError | None) -> None:
                original = prepared.valid[local]
                reported.add(original)
                on_row(original, row_outputs, None if error is None else RowError(original, error.node, error.message))

        outcome: ProcessorOutcome | SerialOutcome
        tool_spans: list[ToolSpan] = []
        if prepared.planned is None:
            outcome, tokens = self._run_serial(prepared)
        else:
            use_cache = self.cache if cache is None else cache
            outcome, tokens, tool_spans = self._run_planned(
                prepared, journal, resume, on_progress, arrived, report_row, use_cache
            )
        stats = run_stats(
            self.graph,
            rows=len(prepared.rows),
            ran=len(prepared.valid),
            plan_s=prepared.plan_s,
            planner=mode,
            outcome=outcome,
            tokens=tokens,
            tool_spans=tool_spans,
            planned=prepared.planned,
        )
        result = run_result(
            self.graph,
            stats,
            outcome,
            prepared.valid,
            prepared.input_errors,
            reported=reported,
            on_row=on_row,
            planned=prepared.planned,
        )
        stats.wall_s = time.perf_counter() - clock
        return result

    def plan(self, batch: Any) -> PlannedBatch:
        """The consolidated batch and the plan `run` would follow for it now (the compiled planner)."""
        planned = self._planner.prepare(batch, "greedy" if self.plan_mode == "greedy" else "dp").planned
        assert planned is not None
        return planned

    def explain(self, batch: Any, *, analyze: bool = False) -> str:
        """The consolidated batch and the plan that `run` would follow, as text; with `analyze=True`
        (EXPLAIN ANALYZE) the batch runs and the plan it executed is printed beside what it measured."""
        return self.analyze(batch).text() if analyze else self.plan(batch).explain()

    def analyze(self, batch: Any) -> AnalyzedRun:
        """Run `batch` and keep the plan the run executed with its result (text, JSON numbers, PNG)."""
        return AnalyzedRun(self.run(batch))

    def attach(self, session: OnlineSession) -> None:
        """Run every later batch on `session`'s loop (with other runs in flight); one worker in-process
        or Ray workers alike. `detach` goes back to running on the caller's thread."""
        self._session = session

    def detach(self) -> None:
        self._session = None

    @property
    def workers(self) -> list[Any]:
        return list(self._pool.workers)

    def engine(self, model: str | None = None) -> LLMEngine:
        """The loaded engine of `model` (default: the workflow's first model) on a one-worker app, for
        callers that drive it directly (the benchmark's baselines share it with `run`)."""
        source = model if model is not None else (self.model_sources[0] if self.model_sources else "")
        return self._pool.engine(source)

    def close(self) -> None:
        if self._result_cache is not None:
            self._result_cache.close()
            self._result_cache = None
        self._close_remote()
        self._pool.close()

    def _close_remote(self) -> None:
        for worker in self._remote.values():
            worker.close()
        self._remote = {}

    def __enter__(self) -> CompiledWorkflow:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- stages -------------------------------------------------------------------------------------

    @property
    def _workers(self) -> list[Any]:
        return self._pool.workers

    @property
    def _tokenizers(self) -> dict[str, Any]:
        return self._pool.tokenizers

    def _warm_prefix(self, model: str, prompts: list[list[int]]) -> list[int]:
        """Per prompt, the longest prefix an in-process engine of `model` caches now (see `WorkerPool`)."""
        return self._pool.warm_prefix(model, prompts, self._session)

    def _new_tools(self, *, cache: bool = True, coalesce: bool = True) -> ToolRunner:
        """A tool runner for one run: its result cache and coalescing never outlive the run."""
        return ToolRunner(
            self.workflow, cache=cache, coalesce=coalesce, cost_model=self.tool_costs, **self._tool_options
        )

    def _run_planned(
        self,
        prepared: PreparedBatch,
        journal: str | os.PathLike[str] | None,
        resume: bool,
        on_progress: Callable[[Progress], None] | None,
        arrived: float,
        on_row: RowCallback | None,
        cache: bool = True,
    ) -> tuple[ProcessorOutcome, TokenCounts, list[ToolSpan]]:
        planned = prepared.planned
        assert planned is not None
        pinned = {  # a remote model's nodes run on its worker (planned as tools: plan/remote_task.py)
            node.id: self._remote[source].index
            for node in self.graph.nodes
            if node.kind == "llm" and (source := self.graph.model_source(node) or "") in self._remote
        }
        execution = emit(
            planned.graph, planned.plan, self.num_workers + len(self._remote), dict(planned.kv_parents), pinned
        )
        writer = state = None
        if journal is not None:
            path = Path(journal)
            print_ = journal_io.fingerprint(self.workflow.spec, prepared.rows)
            if resume and path.exists():
                state = journal_io.load(path, print_)
            writer = journal_io.JournalWriter(path, print_, fresh=not (resume and path.exists()))
        session = self._session
        before = self._pool.stats() if session is None else []
        result_cache, cache_keys = self._persistent_cache() if cache else (None, None)
        tools = self._new_tools()
        try:
            max_inflight = self._max_inflight or self.costs.adaptive_inflight(
                self.model_sources, int(self._engine_options.get("max_num_seqs", 128))
            )
            processor = Processor(
                planned.graph,
                [prepared.rows[i] for i in prepared.valid],
                execution,
                self._pool.workers,
                tools,
                max_inflight=max_inflight,
                journal=writer,
                resume=state,
                on_progress=on_progress,
                on_row=on_row,
                tokenizers=self._pool.tokenizers,  # the engines' (the planner encoded with them): ids travel
                result_cache=result_cache,
                cache_keys=cache_keys,
            )
            outcome = session.execute(processor, arrived) if session is not None else processor.run()
        finally:
            tools.close()
            if result_cache is not None:
                result_cache.flush()  # what this run computed is there for the next one, even if the app lives on
            if writer is not None:
                writer.close()
            self.costs.save_tool_costs()
            if self._remote:
                learn_latencies(self.costs.remote_latency, self._remote)
                self.costs.save_remote_latency()
        if session is None:
            tokens = TokenCounts.between(before, self._pool.stats())
        else:  # other runs share the engines: count this run's own requests
            tokens = TokenCounts.of_requests(outcome)
        self.costs.learn_output_lengths(outcome.output_tokens, outcome.instance_calls, outcome.decode_steps)
        return outcome, tokens, tools.timeline

    @property
    def cache_dir(self) -> str | os.PathLike[str] | None:
        """The folder of the persistent result cache later runs use (None: the default location)."""
        return self._cache_dir

    @cache_dir.setter
    def cache_dir(self, folder: str | os.PathLike[str] | None) -> None:
        self._cache_dir = folder

    def _persistent_cache(self) -> tuple[ResultCache | None, ResultKeys | None]:
        """The result store (opened once per cache file: the location is read now, so a changed
        `$HALO_RESULT_CACHE_DIR` takes effect) and this run's keys; (None, None) when it is unusable."""
        path = cache_path(self._cache_dir)
        if self._result_cache is None or self._result_cache.path != path:
            if self._result_cache is not None:
                self._result_cache.close()
            self._result_cache = ResultCache(path)
        if not self._result_cache.usable:
            return None, None
        if self._model_identities is None:
            local = self._pool.engine if self.num_workers == 1 else None
            self._model_identities = model_identities(self.model_sources, self._recipe, local) | remote_identities(
                self.workflow
            )
        return self._result_cache, ResultKeys(self.workflow, self._model_identities)

    def _run_serial(self, prepared: PreparedBatch) -> tuple[SerialOutcome, TokenCounts]:
        worker = self._pool.workers[0]
        assert isinstance(worker, LocalWorker)

        def engine_for(source: str) -> LLMEngine:
            engine = worker.engines.get(source)
            assert engine is not None
            return engine

        tools = self._new_tools(cache=False, coalesce=False)

        def call_tool(node: Any, request: dict[str, Any]) -> dict[str, Any]:
            return tools.submit(node, request).result()

        rows = [prepared.rows[i] for i in prepared.valid]
        before = worker.stats()
        with tools:
            outcome = run_serial(self.graph, rows, engine_for, call_tool)
        return outcome, TokenCounts.between([before], [worker.stats()])
