"""The Processor: executes one consolidated batch under its plan, over LLM workers and the tool pool.

The native scheduler core (`halo._core.SchedulerCore`) holds the readiness of every physical node;
the Processor only executes what the core hands out and reports completions back. The loop that
drives it lives in `run_loop.py` (one loop may drive several Processors over the same workers):

    loop until the core is finished:
        hand ready tool nodes to the tool pool (they run on threads, overlapping model work)
        hand ready llm nodes to their planned worker, up to its adaptive in-flight limit
        advance every worker a little (one engine step in-process) and collect what finished
        collect finished tool calls

Nothing waits for an epoch to end: a node is handed out as soon as its inputs exist, in plan order
within its queue (no global barrier). Equal pure llm requests discovered at run time (deferred
prompts that render the same) run once; through a shared `RequestBoard`, so do equal requests of
different Processors on one loop (a later run joins the earlier run's request in flight). A failing
node follows its `on_error` policy; under `fail_row` the core cancels everything downstream of it,
and each affected row records the error.
Every attempt at a physical node ends in `settle(phys, outcome)`, whatever ended it (a reply, a tool
result, an error, a render failure, a guard, a cancelled leader); on_error policies apply there only.
Every finished physical node and row is journaled as soon as it exists (see `journal.py`).
A prompt is tokenized once: a rendered request carries the ids consolidation encoded, a deferred one
is encoded here at dispatch with the tokenizer its model's engines use (see `_prompts`).
With a persistent result cache (`result_cache.py`, keys from `result_keys.py`), a request is looked
up right after it is rendered, before it is dispatched or joined (`_from_cache`): a hit settles the
node with the stored value and never reaches an engine or the tool pool; a miss's result is stored
when the node completes with a value of its own (never an error's fallback).
What it counts, it counts per graph node (`ProcessorOutcome.nodes`, one `NodeStats` each): llm
requests executed, coalesced and joined at dispatch, their tokens as each `LLMDone` reports them, and
skipped, failed and cancelled instances where they settle; the outcome's totals are sums of those.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from halo._core import SchedulerCore
from halo.engine import SamplingParams
from halo.errors import HaloError
from halo.plan.chat_tokenizer import ChatTokenizer
from halo.plan.consolidated_graph import ConsolidatedGraph
from halo.plan.cost import output_key
from halo.plan.emit import ExecutionGraph
from halo.runtime.journal import JournalState, JournalWriter
from halo.runtime.llm_worker import LLMDone, LLMJob, Prompt
from halo.runtime.node_io import (
    SKIPPED,
    fallback_result,
    instance_work,
    llm_prompt,
    map_result,
    replies_result,
    row_outputs,
    sampling_params,
)
from halo.runtime.request_board import RequestBoard
from halo.runtime.results import NodeStats, RowError, Span, sum_of
from halo.runtime.run_loop import RunLoop
from halo.spec.graph import GraphNode
from halo.spec.nodes import LlmNode

if TYPE_CHECKING:
    from halo.runtime.result_cache import ResultCache
    from halo.runtime.result_keys import ResultKeys


class LLMWorker(Protocol):
    index: int
    alive: bool  # False once a remote worker is gone: its work goes to a live one (`_live`)
    remote: bool  # its engines step elsewhere (a Ray actor): the run loop waits on its `wakeups()`
    inflight_limit: int | None  # what it may hold at once (None: the Processor's max_inflight)

    @property
    def inflight(self) -> int: ...

    def submit(self, jobs: Sequence[LLMJob]) -> list[LLMDone]: ...

    def poll(self) -> list[LLMDone]: ...

    def pull_prefix(self, source: Any, model: str, prompt: Prompt) -> None: ...

    def cancel(self, owner: int) -> int: ...

    def preload_async(self, model: str) -> Any: ...  # noqa: ANN401 - a Ray ObjectRef or None

    def wakeups(self) -> list[Future]: ...  # futures that finish when a poll would find something


class Tools(Protocol):
    def submit(self, node: GraphNode, request: dict[str, Any]) -> Future: ...


@dataclass(frozen=True, slots=True)
class Ran:
    """Where an attempt ran, for the timeline."""

    worker: int  # -1: the tool pool
    end: float  # perf_counter when it returned
    ok: bool  # it returned (a reply that then fails to parse still ran fine)


@dataclass(frozen=True, slots=True)
class Outcome:
    """How one attempt at a physical node ended: with `value`, with `error` (its on_error policy
    applies), or `retry`: run it again without counting an attempt (the equal request it waited on
    was cancelled). `ran` places an attempt that ran on a worker or the tool pool on the timeline."""

    value: Any = None
    error: str | None = None
    retry: bool = False
    ran: Ran | None = None


@dataclass
class Progress:
    rows_done: int
    rows_total: int
    generated_tokens: int
    tools_in_flight: int
    llm_in_flight: int


@dataclass
class ProcessorOutcome:
    """What a run did. The counters are per graph node (`nodes`); the totals below are their sums."""

    outputs: dict[int, dict[str, Any]]  # consolidated row -> outputs
    errors: dict[int, RowError]  # consolidated row -> first error
    timeline: list[Span]
    nodes: dict[str, NodeStats] = field(default_factory=dict)  # graph node id -> its run-time counters
    persistent_hits: dict[str, int] = field(default_factory=dict)  # graph node id -> persistent-cache hits
    resumed_rows: set[int] = field(default_factory=set)
    calls_by_worker: dict[int, int] = field(default_factory=dict)
    kv_moves: int = 0  # prefixes pulled from another worker before a request
    # conditional or map node -> (instances reached, calls they made): the planner's calls per instance
    instance_calls: dict[str, tuple[int, int]] = field(default_factory=dict)
    persistent_stores: dict[str, int] = field(default_factory=dict)  # graph node -> results stored there

    @property
    def persistent_hits_total(self) -> int:
        return sum(self.persistent_hits.values())

    @property
    def llm_executed(self) -> int:
        return sum_of(self.nodes.values(), "executed", "llm")

    @property
    def llm_coalesced(self) -> int:
        return sum_of(self.nodes.values(), "coalesced", "llm")

    @property
    def llm_joined(self) -> int:  # pure llm requests that joined an equal one of another run in flight
        return sum_of(self.nodes.values(), "joined")

    @property
    def skipped(self) -> int:  # instances
        return sum_of(self.nodes.values(), "skipped")

    @property
    def prompt_tokens(self) -> int:  # of the requests this run executed (not joined ones), as the engines counted
        return sum_of(self.nodes.values(), "prompt_tokens")

    @property
    def cached_tokens(self) -> int:
        return sum_of(self.nodes.values(), "cached_tokens")

    @property
    def generated_tokens(self) -> int:
        return sum_of(self.nodes.values(), "decode_tokens")

    @property
    def output_tokens(self) -> dict[str, tuple[int, int]]:
        """llm node -> (tokens generated, samples returned): what the output-length history learns."""
        return {node: (s.decode_tokens, s.replies) for node, s in self.nodes.items() if s.replies}

    @property
    def decode_steps(self) -> dict[str, tuple[int, int, int]]:
        """llm node -> (tokens its decode steps appended, those steps, the rows they computed): what the
        history learns a node's decode rate from where its engine drafts (plan/cost/output_history.py).
        Each sample's first token comes from its prefill; every accepted draft saved its sequence a step
        (a stop inside an accepted run drops the rest, so this can undercount steps by a few), and
        every draft verified was a row of its step."""
        out: dict[str, tuple[int, int, int]] = {}
        for node, s in self.nodes.items():
            tokens = s.decode_tokens - s.replies
            if s.replies and tokens > 0:
                steps = max(tokens - s.accepted_drafts, s.verifies, 1)
                out[node] = (tokens, steps, steps + s.drafted)
        return out


class Processor:
    """Runs one consolidated batch; `run()` returns outputs, errors and the timeline.

    A `RunLoop` drives it through `dispatch` / `llm_finished` / `collect_tools`; `run()` is a loop
    with this Processor alone. `owner` namespaces its jobs on shared workers (the loop assigns it).
    `tokenizers` are those the workers' engines encode with, per model source: a rendered request
    whose ids consolidation encoded with that very tokenizer sends them, a deferred one is encoded
    with it at dispatch; a model without one sends chat messages and its engine encodes them.
    `result_cache` with `cache_keys` answers pure requests from earlier runs (see `_from_cache`).
    """

    def __init__(
        self,
        graph: ConsolidatedGraph,
        rows: Sequence[Mapping[str, Any]],
        execution: ExecutionGraph,
        workers: Sequence[LLMWorker],
        tools: Tools,
        *,
        max_inflight: int = 64,
        journal: JournalWriter | None = None,
        resume: JournalState | None = None,
        on_progress: Callable[[Progress], None] | None = None,
        progress_every_s: float = 0.2,
        on_row: Callable[[int, dict[str, Any], RowError | None], None] | None = None,
        tokenizers: Mapping[str, ChatTokenizer] | None = None,
        result_cache: ResultCache | None = None,
        cache_keys: ResultKeys | None = None,
    ) -> None:
        self.graph = graph
        self.wf = graph.workflow
        self.rows = rows
        self.execution = execution
        self.workers = list(workers)
        self.tools = tools
        self.max_inflight = max_inflight
        self.journal = journal
        self.on_progress = on_progress
        self.progress_every_s = progress_every_s
        self.on_row = on_row  # (consolidated row, outputs, error) as soon as a row's last node settles
        self.tokenizers = dict(tokenizers or {})
        self.cache_keys = cache_keys if result_cache is not None else None
        self.result_cache = result_cache if cache_keys is not None else None
        self._cache_key: dict[int, str] = {}  # phys -> the key it missed: its result is stored there
        self._stored: set[str] = set()  # keys this run stored (two equal requests store once)
        # Consolidation's ids are the engine's only if it encoded with the engine's own tokenizer.
        self._planned_ids = {m for m, t in graph.tokenizers.items() if self.tokenizers.get(m) is t}
        self.core = SchedulerCore(
            execution.upstream_offsets,
            execution.upstream_indices,
            execution.queue,
            execution.priority,
            num_queues=execution.num_workers + 1,
        )
        n = len(graph.physical)
        # Job ids: a physical node's is its id; the calls of a foreach node's elements get n, n+1, ...
        # (`_calls`), and settle into their node's `_maps` entry, which completes when all have.
        self._n = n
        self._calls: list[_ElementCall] = []
        self._maps: dict[int, _MapState] = {}
        self._call_attempts: dict[int, int] = {}
        self.results: list[Any] = [None] * n
        self.ok = bytearray(n)  # 1: has a result (or was skipped)
        self.attempts = [0] * n
        self.start_time: dict[int, float] = {}
        self._tool_futures: dict[Future, int] = {}
        self.owner = 0
        self.board = RequestBoard()  # pure requests in flight (the loop shares one board between runs)
        self.pool = tuple(id(w) for w in self.workers)  # equal requests are joined only on the same workers
        self.llm_key: dict[int, tuple] = {}
        # Replies of the pure requests this run finished, by request key: an equal deferred request (a
        # foreach element, a prompt rendered at run time) that comes later is answered without a call.
        self._answers: dict[tuple, LLMDone] = {}
        self.error: BaseException | None = None  # what stopped this run, when it did not finish
        self.row_left = [len(self.wf.nodes)] * graph.rows
        self.node_left = {node.id: 0 for node in self.wf.nodes}  # unsettled physical nodes per graph node
        for node_id in graph.physical.node:
            self.node_left[node_id] += 1
        # Per worker, its planned llm nodes in epoch order: an idle worker preloads the next one's model.
        self.planned: dict[int, list[tuple[str, str]]] = {}
        for node in sorted(
            (n for n in self.wf.nodes if n.kind == "llm"), key=lambda n: execution.epoch_of.get(n.id, 0)
        ):
            # a node the plan splits data-parallel is planned on each of its share workers
            for worker in execution.workers_of.get(node.id, (execution.worker_of.get(node.id, 0),)):
                self.planned.setdefault(worker, []).append((node.id, self.wf.model_source(node) or ""))
        self.out = ProcessorOutcome({}, {}, [], nodes={n.id: NodeStats(n.name, n.kind) for n in self.wf.nodes})
        # Each llm node's engine request group (speculation's acceptance per node): its output-length
        # history key, under which the planner also remembers the node's tokens per decode step.
        self._groups = {n.id: output_key(n, self.wf.model_source(n)) for n in self.wf.nodes if n.kind == "llm"}
        self._last_progress = 0.0
        if resume is not None:
            self._restore(resume)

    # -- the loop's protocol ------------------------------------------------------------------------

    def run(self) -> ProcessorOutcome:
        """Run this batch alone to the end on the calling thread."""
        loop: RunLoop[Processor] = RunLoop(isolate=False)
        loop.add(self)
        while loop.active:
            loop.step()
        return self.out

    @property
    def finished(self) -> bool:
        return self.core.finished

    @property
    def tool_calls(self) -> list[Future]:
        """The tool calls of this run on the pool now (the loop waits on them when nothing else moves)."""
        return list(self._tool_futures)

    def dispatch(self) -> None:
        """Hand out what is ready: tool nodes to the pool, llm nodes to their worker while it has room."""
        core = self.core
        self._dispatch_tools(core.pop(self.execution.tool_queue))
        for worker in self.workers:
            target = self._live(worker)  # a dead worker's queue drains to a live one
            # a worker with its own limit (a remote model's, which bounds its concurrency itself) takes up to it
            room = (target.inflight_limit or self.max_inflight) - target.inflight
            if room > 0 and core.ready_count(worker.index):
                self._dispatch_llm(target, core.pop(worker.index, room))
            if worker.alive and worker.inflight == 0 and not core.ready_count(worker.index):
                self._preload_next(worker)

    def llm_finished(self, done: LLMDone) -> None:
        """A request this Processor submitted finished: settle it and every request that joined it."""
        key = self.llm_key.pop(done.phys, None)
        followers = self.board.finish(key) if key is not None else []
        # per sample: the history prices each of a node's n decodes by the length of one
        stats = self.out.nodes[self.graph.physical.node[self._phys_of(done.phys)]]
        stats.add_request(done.prompt_tokens, done.cached_tokens, done.generated_tokens, len(done.replies))
        stats.add_drafts(done.speculation.proposed, done.speculation.accepted, done.speculation.verifies)
        for position, (processor, phys) in enumerate([(self, done.phys), *followers]):
            outcome = processor._reply(phys, done)
            if position == 0 and key is not None and outcome.error is None:
                self._answers[key] = done  # a reply that failed its node (its format) is never reused
            processor.settle(phys, outcome)

    def collect_tools(self) -> bool:
        """Settle finished tool calls; True if any finished."""
        finished = [f for f in self._tool_futures if f.done()]
        for future in finished:
            phys = self._tool_futures.pop(future)
            error = future.exception()
            ran = Ran(-1, time.perf_counter(), error is None)
            if error is None:
                self.settle(phys, Outcome(value=future.result(), ran=ran))
            else:
                self.settle(phys, Outcome(error=str(error), ran=ran))
        return bool(finished)

    def has_ready(self) -> bool:
        return any(self.core.ready_count(q) for q in range(self.core.num_queues))

    def check_stalled(self) -> None:
        """Raise if nothing is ready, running or on the tool pool while nodes are left (a cycle?)."""
        if not self.core.finished and self.core.running == 0 and not self._tool_futures and not self.has_ready():
            raise RuntimeError(f"scheduler stalled: {self.core.remaining} nodes left, none ready or running (a cycle?)")

    def cancel(self) -> None:
        """Stop this run where it is: its jobs leave the workers, its tool calls are forgotten."""
        for worker in self.workers:
            worker.cancel(self.owner)
        self.llm_key.clear()
        for processor, phys in self.board.leave(self):  # others waited on our requests: they run their own
            processor.settle(phys, Outcome(retry=True))
        self._tool_futures.clear()

    def _preload_next(self, worker: LLMWorker) -> None:
        for node_id, model in self.planned.get(worker.index, ()):
            if self.node_left[node_id] > 0:
                worker.preload_async(model)
                return

    # -- settling -----------------------------------------------------------------------------------

    def settle(self, phys: int, outcome: Outcome) -> None:
        """End one attempt at physical node `phys`: the one place every completion passes through.

        A value completes the node; `retry` submits it again; an error follows the node's on_error
        policy: another attempt while `retries` last (retry), the fallback as its value (default),
        or the node fails and, under fail_row, so does everything downstream of it in its rows.
        """
        job, phys = phys, self._phys_of(phys)
        node = self.wf.node(self.graph.physical.node[phys])
        ran = outcome.ran
        if ran is not None:
            start = self.start_time.pop(job, ran.end)
            self.out.timeline.append(Span(phys, node.id, node.kind, ran.worker, start, ran.end, ran.ok))
        if job != phys:
            self._settle_element(job, node, outcome)
        elif outcome.retry:
            self._submit_again(phys, node)
        elif outcome.error is None:
            self._complete(phys, outcome.value)
        elif node.spec.on_error == "retry" and self.attempts[phys] < node.spec.retries:
            self.attempts[phys] += 1
            self._submit_again(phys, node)
        elif node.spec.on_error == "default":
            self._cache_key.pop(phys, None)  # the fallback stands in for a result: never cached
            self._complete(phys, fallback_result(node))
        else:
            self._fail(phys, outcome.error)

    def _settle_element(self, job: int, node: GraphNode, outcome: Outcome) -> None:
        """One element call of a foreach node ended: the node's on_error applies to the element (retry
        it, or its `fallback` in its place); under fail_row its node fails; the last one completes it."""
        call = self._calls[job - self._n]
        state = self._maps[call.phys]
        if state.finished:
            return  # the node failed on another element already
        if outcome.retry:
            self._send(node, [(job, node, call.values)])
            return
        value = outcome.value
        if outcome.error is not None:
            attempts = self._call_attempts.get(job, 0)
            if node.spec.on_error == "retry" and attempts < node.spec.retries:
                self._call_attempts[job] = attempts + 1
                self._send(node, [(job, node, call.values)])
                return
            if node.spec.on_error != "default":
                state.finished = True
                self._fail(call.phys, f"element {call.index + 1} of {len(state.results)}: {outcome.error}")
                return
            self._cache_key.pop(job, None)  # a fallback is not the call's result: never stored
            value = fallback_result(node)
        else:
            self._store(job, value)
        state.results[call.index] = value
        state.left -= 1
        if state.left == 0:
            state.finished = True
            self._complete(call.phys, map_result(node, state.results))

    def _phys_of(self, job: int) -> int:
        """The physical node a job id belongs to (itself, or the foreach node of an element call)."""
        return job if job < self._n else self._calls[job - self._n].phys

    def _reply(self, phys: int, done: LLMDone, ran: bool = True) -> Outcome:
        """The outcome of job `phys` answered by `done` (its own node reads the reply); `ran`: it ran for
        this job (a reply reused from an earlier equal request is not on the timeline again)."""
        where = Ran(done.worker, done.end, done.error is None) if ran else None
        if done.error is not None:
            return Outcome(error=done.error, ran=where)
        try:
            node = self.wf.node(self.graph.physical.node[self._phys_of(phys)])
            return Outcome(value=replies_result(node, done.replies), ran=where)
        except ValueError as exc:  # a structured output cut at max_tokens or not of the node's format
            return Outcome(error=str(exc), ran=where)

    def _submit_again(self, phys: int, node: GraphNode) -> None:
        if node.kind == "llm":
            self._dispatch_llm(self._worker_for(node, phys), np.asarray([phys]))
        else:
            self._dispatch_tools(np.asarray([phys]))

    def _worker_for(self, node: GraphNode, job: int) -> LLMWorker:
        """The worker of llm job `job`: its node's planned worker, or for a node split data-parallel
        its instance's share worker (`emit.split_assignment`, which prefers the parent's worker); while
        that worker is dead, a live one (`_live`)."""
        if node.id in self.execution.workers_of:
            index = int(self.execution.queue[self._phys_of(job)])
        else:
            index = int(self.execution.worker_of.get(node.id, 0))
        return self._live(self.workers[index % len(self.workers)])

    def _live(self, worker: LLMWorker) -> LLMWorker:
        """`worker`, or while it is dead the live worker with the least in flight (lowest index on a tie);
        with none alive, `worker` itself (it fails what it is sent, naming itself)."""
        if worker.alive:
            return worker
        live = [w for w in self.workers if w.alive]
        return min(live, key=lambda w: (w.inflight, w.index)) if live else worker

    def _send(self, node: GraphNode, calls: list[_Work]) -> None:
        """Send calls that are rendered already (a retried element) to the node's worker or the pool."""
        if node.kind == "llm":
            for call in calls:  # each to its own instance's worker (they differ on a split node)
                self._send_llm(self._worker_for(node, call[0]), [call])
        else:
            self._send_tools(calls)

    def _complete(self, phys: int, result: Any) -> None:
        self.results[phys] = result
        self.ok[phys] = 1
        self._store(phys, result)
        if result is SKIPPED:  # whatever skipped it (a loop guard), every instance it serves counts
            self._count_instances(phys, "skipped")
        if self.journal is not None:
            journaled = {"$skipped": True} if result is SKIPPED else result
            self.journal.node(self.graph.physical.signature(phys), journaled)
        self.core.complete(phys)
        self._count_off(phys)

    def _fail(self, phys: int, message: str) -> None:
        node_id = self.graph.physical.node[phys]
        for _, row in self.graph.physical.instances[phys]:
            self.out.errors.setdefault(row, RowError(row, node_id, message))
        self._count_instances(phys, "failed")
        cancelled = self.core.fail(phys)
        self._count_off(phys)
        for other in cancelled.tolist():
            self._count_instances(int(other), "cancelled")
            self._count_off(int(other))

    def _count_instances(self, phys: int, counter: str, each: int = 1) -> None:
        """Add `each` per instance physical node `phys` serves to `counter` of their graph nodes."""
        for node_id, _ in self.graph.physical.instances[phys]:
            stats = self.out.nodes[node_id]
            setattr(stats, counter, getattr(stats, counter) + each)

    def _count_off(self, phys: int) -> None:
        """A physical node reached a final state: count its instances off their rows."""
        self.node_left[self.graph.physical.node[phys]] -= 1
        for _, row in self.graph.physical.instances[phys]:
            self.row_left[row] -= 1
            if self.row_left[row] == 0:
                self._row_done(row)

    def _row_done(self, row: int) -> None:
        results: dict[str, Any] = {}
        for node in self.wf.nodes:
            phys = self.graph.assignment[node.id][row]
            if self.ok[phys] and self.results[phys] is not SKIPPED:
                results[node.id] = self.results[phys]
        outputs = row_outputs(self.wf, self.rows[row], results)
        self.out.outputs[row] = outputs
        error = self.out.errors.get(row)
        if self.journal is not None and row not in self.out.resumed_rows:
            self.journal.row(row, outputs, {"node": error.node, "message": error.message} if error else None)
        if self.on_row is not None:
            self.on_row(row, outputs, error)

    # -- handing out work ---------------------------------------------------------------------------

    def _context(self, phys: int) -> tuple[GraphNode, Mapping[str, Any], dict[str, Any]]:
        """The node, row and upstream results (by graph node id) of a physical node's first instance."""
        table = self.graph.physical
        node = self.wf.node(table.node[phys])
        row = table.row[phys]
        results: dict[str, Any] = {}
        for up in node.upstream:
            up_phys = self.graph.assignment[up][row]
            if self.ok[up_phys] and self.results[up_phys] is not SKIPPED:
                results[up] = self.results[up_phys]
        return node, self.rows[row], results

    def _prepare(self, phys: int) -> list[_Work]:
        """The calls of a node about to run: one, one per element of a foreach node, or none when it was
        settled instead (skipped by a loop guard or its `when`, or failed to render)."""
        now = time.perf_counter()
        first = phys not in self.start_time  # a retry prepares the node again: count its calls once
        self.start_time.setdefault(phys, now)
        node, row, results = self._context(phys)
        try:
            work = instance_work(
                self.wf, node, row, results, self.graph.physical.values[phys], self.graph.render_errors.get(phys)
            )
        except HaloError as exc:
            self.settle(phys, Outcome(error=str(exc)))  # on_error applies, as in the serial baseline
            return []
        if first and work.skip is None:
            self._count_instances(phys, "calls", len(work.calls))
        if first and (node.spec.when is not None or work.mapped):
            instances, made = self.out.instance_calls.get(node.id, (0, 0))
            self.out.instance_calls[node.id] = (instances + 1, made + (0 if work.skip is not None else len(work.calls)))
        if work.skip is not None:
            if work.skip is not SKIPPED:  # a false `when` (a loop guard's SKIPPED counts in `_complete`)
                self._count_instances(phys, "skipped")
            self.settle(phys, Outcome(value=work.skip))
            return []
        if not work.mapped:
            return [(phys, node, work.calls[0])]
        if not work.calls:
            self.settle(phys, Outcome(value=map_result(node, [])))
            return []
        self._maps[phys] = _MapState([None] * len(work.calls), len(work.calls))
        calls: list[_Work] = []
        for index, values in enumerate(work.calls):
            job = self._n + len(self._calls)
            self._calls.append(_ElementCall(phys, index, values))
            self.start_time[job] = now
            calls.append((job, node, values))
        return calls

    def _dispatch_tools(self, phys_ids: Any) -> None:
        self._send_tools([call for phys in phys_ids.tolist() for call in self._prepare(int(phys))])

    def _send_tools(self, calls: list[_Work]) -> None:
        for job, node, values in calls:
            request = self.wf.template(node).request(values)
            key = self.cache_keys.tool(node, request) if self.cache_keys is not None else None
            if self._from_cache(job, node, key):
                continue
            future = self.tools.submit(node, request)
            self._tool_futures[future] = job

    def _dispatch_llm(self, worker: LLMWorker, phys_ids: Any) -> None:
        self._send_llm(worker, [call for phys in phys_ids.tolist() for call in self._prepare(int(phys))])

    def _send_llm(self, worker: LLMWorker, calls: list[_Work]) -> None:
        requests: list[_Request] = []
        for phys, node, values in calls:
            samples = node.spec.n if isinstance(node.spec, LlmNode) else 1
            request = _Request(
                phys, self.wf.model_source(node) or "", llm_prompt(node, values), sampling_params(node), samples
            )
            keys = self.cache_keys
            cache_key = keys.llm(node, request.messages, request.params, request.n) if keys is not None else None
            key = None
            if node.pure:
                # n is in the key: a node of n samples never joins an equal request of another n
                key = (self.pool, request.model, json.dumps(request.messages), request.params, request.n)
                retried = self.attempts[phys] if phys < self._n else self._call_attempts.get(phys, 0)
                answered = None if retried else self._answers.get(key)  # a retry asks the engine again
                # The same request ran earlier in this run: its reply is this one's, and it counts as
                # coalesced whether or not that reply reached the persistent cache first (it did, if
                # it finished before this one was rendered: a hit there would call it a past run's).
                if answered is not None:
                    self.out.nodes[node.id].coalesced += 1  # found at run time, answered once
                    self.settle(phys, self._reply(phys, answered, ran=False))
                    continue
            if self._from_cache(phys, node, cache_key):
                continue
            if key is not None:
                leader = self.board.join(key, self, phys)
                if leader is not None:  # the same request is already running: share its result
                    if leader is self:
                        self.out.nodes[node.id].coalesced += 1
                    else:
                        self.out.nodes[node.id].joined += 1
                    continue
                self.llm_key[phys] = key
            requests.append(request)
        jobs: list[LLMJob] = []
        failed: list[LLMDone] = []
        for request, prompt in zip(requests, self._prompts(requests), strict=True):
            if isinstance(prompt, str):  # the chat template refused the messages, as the engine would have
                now = time.perf_counter()
                failed.append(LLMDone(request.phys, worker.index, error=prompt, start=now, end=now, owner=self.owner))
                continue
            instance = self._phys_of(request.phys)  # a split node's instances pull their prefix one by one
            node_id = self.graph.physical.node[instance]
            source = self.execution.kv_source_of.get(instance, self.execution.kv_source.get(node_id))
            if source is not None and source != worker.index and self.workers[source].alive:
                worker.pull_prefix(self.workers[source], request.model, prompt)
                self.out.kv_moves += 1
            group = self._groups[node_id]
            jobs.append(LLMJob(request.phys, request.model, prompt, request.params, self.owner, request.n, group))
        for request in requests:
            self.out.nodes[self.graph.physical.node[self._phys_of(request.phys)]].executed += 1
        self.out.calls_by_worker[worker.index] = self.out.calls_by_worker.get(worker.index, 0) + len(requests)
        for done in [*worker.submit(jobs), *failed]:
            self.llm_finished(done)

    def _store(self, job: int, result: Any) -> None:
        """Keep a completed call's result in the persistent cache if it was looked up there and missed."""
        key = self._cache_key.pop(job, None)
        if key is not None and key not in self._stored and self.result_cache is not None and result is not SKIPPED:
            node = self.wf.node(self.graph.physical.node[self._phys_of(job)])
            if self.result_cache.put(key, node.name, result):
                self._stored.add(key)
                self.out.persistent_stores[node.id] = self.out.persistent_stores.get(node.id, 0) + 1

    def _from_cache(self, phys: int, node: GraphNode, key: str | None) -> bool:
        """Answer `phys` from the persistent result cache: True if it was settled with the stored value.

        On a miss the key is kept, so the node's own result is stored when it completes (`_complete`).
        Called right after a request is rendered and found unanswered in this run, before it is
        dispatched or joined to an equal one in flight."""
        if key is None or self.result_cache is None:
            return False
        found, value = self.result_cache.get(key)
        if not found:
            self._cache_key[phys] = key
            return False
        self.start_time.pop(phys, None)  # nothing ran: no span on the timeline
        self.out.persistent_hits[node.id] = self.out.persistent_hits.get(node.id, 0) + 1
        self.settle(phys, Outcome(value=value))
        return True

    def _prompts(self, requests: Sequence[_Request]) -> list[Prompt | str]:
        """Each request's prompt as its engine takes it, encoded once: the ids consolidation encoded
        with the engine's tokenizer, else the messages encoded now with it (one batch per model), or the
        messages themselves where no tokenizer is known (the engine encodes them). A str is an error."""
        prompts: list[Prompt | str] = []
        texts: dict[str, list[tuple[int, str]]] = {}  # model -> (position, rendered chat) to encode
        planned = self.graph.physical.prompt_ids
        for position, request in enumerate(requests):
            ids = planned.get(request.phys) if request.model in self._planned_ids else None
            tokenizer = self.tokenizers.get(request.model)
            prompts.append(request.messages if ids is None else ids)
            if ids is None and tokenizer is not None:
                try:
                    texts.setdefault(request.model, []).append((position, tokenizer.render_chat(request.messages)))
                except HaloError as exc:
                    prompts[position] = str(exc)
        for model, rendered in texts.items():
            encoded = self.tokenizers[model].encode_batch([text for _, text in rendered])
            for (position, _), ids in zip(rendered, encoded, strict=True):
                prompts[position] = ids
        return prompts

    # -- resume ---------------------------------------------------------------------------------------

    def _restore(self, state: JournalState) -> None:
        """Mark what an earlier run finished as done, so only the rest runs.

        Not through `settle`: nothing ends here, an earlier run's state comes back, so nothing is
        journaled again, and a resumed row keeps the outputs the journal holds without being reported."""
        table = self.graph.physical
        restored: list[int] = []
        for phys in range(len(table)):
            result = state.nodes.get(table.signature(phys), _MISSING)
            if result is _MISSING:
                continue
            self.results[phys] = SKIPPED if result == {"$skipped": True} else result
            self.ok[phys] = 1
            restored.append(phys)
        for row, record in state.rows.items():
            if 0 <= row < self.graph.rows:
                self.out.resumed_rows.add(row)
                self.out.outputs[row] = record["output"]
                if record.get("error"):
                    self.out.errors[row] = RowError(row, record["error"]["node"], record["error"]["message"])
        # A physical node that only finished rows use need not run again, even if it failed then.
        done_rows = self.out.resumed_rows
        for phys in range(len(table)):
            if not self.ok[phys] and all(r in done_rows for _, r in table.instances[phys]):
                self.ok[phys] = 1
                self.results[phys] = SKIPPED
                restored.append(phys)
        if restored:
            self.core.complete(sorted(restored))
        for phys in restored:
            self.node_left[table.node[phys]] -= 1
            for _, row in table.instances[phys]:
                self.row_left[row] -= 1
        for row in range(self.graph.rows):
            if self.row_left[row] == 0 and row not in done_rows:
                self._row_done(row)

    def report_progress(self, force: bool = False) -> None:
        if self.on_progress is None:
            return
        now = time.perf_counter()
        if not force and now - self._last_progress < self.progress_every_s:
            return
        self._last_progress = now
        self.on_progress(
            Progress(
                rows_done=len(self.out.outputs),
                rows_total=self.graph.rows,
                generated_tokens=self.out.generated_tokens,
                tools_in_flight=len(self._tool_futures),
                llm_in_flight=sum(w.inflight for w in self.workers),
            )
        )


_Work = tuple[int, GraphNode, tuple]  # (job id, node, rendered slot values): one call to make


@dataclass(frozen=True, slots=True)
class _ElementCall:
    """The call of one element of a foreach node's instance (job id: the Processor's n + its index)."""

    phys: int  # the foreach node's physical id
    index: int  # the element's position in the list
    values: tuple  # its rendered slot values


@dataclass(slots=True)
class _MapState:
    """A foreach instance in flight: its elements' results so far."""

    results: list[Any]
    left: int
    finished: bool = False


@dataclass(frozen=True, slots=True)
class _Request:
    """An llm request rendered for dispatch, before its prompt is in the form its engine takes."""

    phys: int
    model: str
    messages: list[dict[str, str]]
    params: SamplingParams  # sample 0's
    n: int = 1  # samples (the node's n)


_MISSING = object()
