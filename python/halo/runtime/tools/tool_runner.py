"""`ToolRunner`: the CPU tool pool the Processor hands sql, http, python and rule calls to.

`submit(node, request)` returns a Future of the kind's output fields (`halo.spec.nodes.OUTPUT_FIELDS`)
or fails it with `ToolError`. Between submit and the tool:

1. cache — an identical SQL or GET/HEAD request that already succeeded in this run is answered
   from the run-scoped cache (a copy of the result dict; lists inside are shared, treat as read-only);
2. coalescing — an identical *pure* call already in flight is joined: it runs once, every caller's
   future gets the result (or the error);
3. otherwise the call runs on a thread of the pool (rule calls, microseconds each, run inline).

"Identical" is the canonical request (`halo.plan.signature.freeze`, type-exact) plus, for SQL, the
database it runs on. Executed calls that succeed are reported to the cost model, if one is given.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Collection, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from halo.errors import ToolError
from halo.plan.cost.tool_cost import ToolCostModel
from halo.plan.signature import freeze
from halo.runtime.tools.python_call import PythonTool
from halo.runtime.tools.rule import run_rule
from halo.runtime.tools.sql import DEFAULT_STATEMENT_TIMEOUT_S, SqlTool
from halo.runtime.tools.tool_stats import KindStats, ToolSpan, ToolStats
from halo.spec.graph import GraphNode
from halo.spec.workflow import Workflow

if TYPE_CHECKING:
    from halo.runtime.tools.http import HttpTool

TOOL_KINDS = ("sql", "http", "python", "rule", "reduce")


class ToolRunner:
    """Runs tool calls concurrently for one run; thread-safe; close it (or use `with`) to free connections."""

    def __init__(
        self,
        workflow: Workflow,
        *,
        max_threads: int = 16,
        allowed_hosts: Collection[str] = (),
        cost_model: ToolCostModel | None = None,
        coalesce: bool = True,
        cache: bool = True,
        statement_timeout_s: float = DEFAULT_STATEMENT_TIMEOUT_S,
        http_attempts: int = 3,
        http_backoff_s: float = 0.1,
    ) -> None:
        self.workflow = workflow
        self.coalesce = coalesce
        self.cache = cache
        self.cost_model = cost_model
        self._sql = SqlTool(workflow.spec.databases, workflow.base_dir, statement_timeout_s=statement_timeout_s)
        # made at the first http call: httpx costs start-up time (~0.05 s) a run without http nodes never needs
        self._http_options = {
            "allowed_hosts": tuple(allowed_hosts),
            "attempts": http_attempts,
            "backoff_s": http_backoff_s,
        }
        self._http: HttpTool | None = None
        self._python = PythonTool(workflow.functions, max_threads=max_threads)
        self._pool = ThreadPoolExecutor(max_threads, thread_name_prefix="halo-tool")
        self._lock = threading.Lock()
        self._in_flight: dict[Any, Future[dict[str, Any]]] = {}
        self._pending: dict[Future[dict[str, Any]], str] = {}  # primaries not finished yet, by node id
        self._results: dict[Any, dict[str, Any]] = {}
        self._stats: dict[str, KindStats] = {kind: KindStats() for kind in TOOL_KINDS}
        self._timeline: list[ToolSpan] = []
        self._closed = False
        if cost_model is not None and cost_model.explain is None:
            cost_model.explain = self.explain_cost  # SQL estimates need EXPLAIN on this run's databases

    # -- the protocol ---------------------------------------------------------------------------

    def submit(self, node: GraphNode, request: Mapping[str, Any]) -> Future[dict[str, Any]]:
        """Start one tool call of `node` with its rendered `request` (`WorkflowGraph.render`)."""
        kind = node.kind
        if kind not in TOOL_KINDS:
            raise ValueError(f"node '{node.id}' is an {kind} node; the tool runner runs {', '.join(TOOL_KINDS)}")
        submitted = time.perf_counter()
        key = self._key(node, request) if node.pure and kind != "rule" else None
        cacheable = key is not None and self.cache and kind in ("sql", "http")
        with self._lock:
            if self._closed:
                raise RuntimeError("the tool runner is closed")
            stats = self._stats[kind]
            stats.logical += 1
            if cacheable and key in self._results:
                stats.cache_hits += 1
                self._timeline.append(ToolSpan(node.id, kind, submitted, submitted, submitted, True, cached=True))
                done: Future[dict[str, Any]] = Future()
                done.set_result(dict(self._results[key]))
                return done
            if key is not None and self.coalesce and key in self._in_flight:
                stats.coalesced += 1
                follower: Future[dict[str, Any]] = Future()
                self._in_flight[key].add_done_callback(self._fan_out(node, follower, submitted))
                return follower
            primary: Future[dict[str, Any]] = Future()
            self._pending[primary] = node.id
            if key is not None and self.coalesce:
                self._in_flight[key] = primary
        request = dict(request)
        if kind == "rule":
            self._execute(node, request, key, cacheable, primary, submitted)
        else:
            self._pool.submit(self._execute, node, request, key, cacheable, primary, submitted)
        return primary

    def open_databases(self) -> None:
        """Open every declared database now; a missing file or failing init script raises ToolError here
        (at compile time) instead of failing every row that queries it."""
        for name in self.workflow.spec.databases:
            self._sql.database("databases", name)

    def explain_cost(self, db: str | None, query: str, params: Mapping[str, Any]) -> float:
        """The database's own cost estimate of a query (PostgreSQL: `EXPLAIN (FORMAT JSON)` total cost
        in its cost units; DuckDB: estimated rows emitted, summed over the plan's operators)."""
        return self._sql.explain_cost(db, query, params)

    @property
    def stats(self) -> ToolStats:
        with self._lock:
            return ToolStats({kind: replace(stats) for kind, stats in self._stats.items()})

    @property
    def timeline(self) -> list[ToolSpan]:
        with self._lock:
            return list(self._timeline)

    def close(self) -> None:
        """Wait for running calls, fail the ones not started, close databases, clients and pools."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
        self._pool.shutdown(wait=True, cancel_futures=True)
        with self._lock:
            stranded = list(self._pending.items())
            self._pending.clear()
            self._in_flight.clear()
        for future, node_id in stranded:
            if not future.done():
                future.set_exception(ToolError(node_id, "the tool runner was closed before the call ran"))
        if self.cost_model is not None and self.cost_model.explain == self.explain_cost:
            self.cost_model.explain = None  # the model may outlive this run; its databases close now
        self._python.close()
        if self._http is not None:
            self._http.close()
        self._sql.close()

    def __enter__(self) -> ToolRunner:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -- execution ------------------------------------------------------------------------------

    def _execute(
        self,
        node: GraphNode,
        request: dict[str, Any],
        key: Any,
        cacheable: bool,
        primary: Future[dict[str, Any]],
        submitted: float,
    ) -> None:
        start = time.perf_counter()
        error: ToolError | None = None
        result: dict[str, Any] = {}
        try:
            result = self._call(node, request)
        except ToolError as exc:
            error = exc
        except Exception as exc:  # a bug or an odd value in a tool: still this node's failure, with its cause
            error = ToolError(node.id, f"{type(exc).__name__}: {exc}")
            error.__cause__ = exc
        end = time.perf_counter()
        if error is None and self.cost_model is not None:
            self.cost_model.observe(node, request, end - start)
        with self._lock:
            stats = self._stats[node.kind]
            stats.executed += 1
            stats.busy_s += end - start
            stats.failures += error is not None
            self._timeline.append(ToolSpan(node.id, node.kind, submitted, start, end, error is None))
            # Publish before resolving: a caller arriving after this point finds the cache, not a
            # finished in-flight entry.
            if key is not None and self._in_flight.get(key) is primary:
                del self._in_flight[key]
            if cacheable and error is None:
                self._results[key] = dict(result)
            self._pending.pop(primary, None)
        if error is not None:
            primary.set_exception(error)
        else:
            primary.set_result(result)

    def _call(self, node: GraphNode, request: Mapping[str, Any]) -> dict[str, Any]:
        if node.kind == "sql":
            return self._sql.run(node.id, request)
        if node.kind == "http":
            return self._http_tool().run(node.id, request)
        if node.kind == "python":
            return self._python.run(node.id, request, cpu_bound=bool(getattr(node.spec, "cpu_bound", False)))
        if node.kind == "reduce":
            # A reducer is a python call of one argument, the list its input gave.
            items = request["input"]
            if not isinstance(items, list | tuple):
                raise ToolError(node.id, f"a reduce input must give a list, got {type(items).__name__}")
            call = {
                "function": request["python"],
                "args": [list(items)],
                "kwargs": {},
                "timeout_s": request["timeout_s"],
            }
            return self._python.run(node.id, call, cpu_bound=bool(getattr(node.spec, "cpu_bound", False)))
        return run_rule(request)

    def _http_tool(self) -> HttpTool:
        with self._lock:
            if self._http is None:
                from halo.runtime.tools.http import HttpTool  # see __init__

                self._http = HttpTool(**self._http_options)
            return self._http

    def _fan_out(
        self, node: GraphNode, follower: Future[dict[str, Any]], submitted: float
    ) -> Callable[[Future[dict[str, Any]]], None]:
        def resolve(primary: Future[dict[str, Any]]) -> None:
            error = primary.exception()
            end = time.perf_counter()
            with self._lock:
                span = ToolSpan(node.id, node.kind, submitted, submitted, end, error is None, coalesced=True)
                self._timeline.append(span)
            if error is not None:
                # The error names the node that ran; a follower may be another node with the same request.
                message = error.message if isinstance(error, ToolError) else str(error)
                follower.set_exception(ToolError(node.id, message))
            else:
                follower.set_result(dict(primary.result()))

        return resolve

    def _key(self, node: GraphNode, request: Mapping[str, Any]) -> Any:
        target = self._sql.target_key(request.get("db")) if node.kind == "sql" else None
        return (node.kind, target, freeze(dict(request)))
