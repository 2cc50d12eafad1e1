"""The python tool: calls a node's function with its rendered args/kwargs, under its timeout.

A function is a name registered with the workflow (`Workflow.register`, or a callable passed to the
builder) or an importable "package.module:function" (dotted attributes after the colon allowed).
Calls run on a thread pool; `cpu_bound` nodes run on a process pool (started on first use, with
the `spawn` method: forking a process that holds DuckDB, httpx and engine threads can deadlock), so
their function and arguments must pickle. A call past its timeout fails its node, but Python cannot
stop a running thread or a busy worker process: the call finishes in the background, its result dropped.
The timeout counts from submission, so time queued behind other cpu-bound calls (one process per
core) counts too.
"""

from __future__ import annotations

import importlib
import multiprocessing
import os
import threading
from collections.abc import Callable, Mapping
from concurrent.futures import Executor, Future, ProcessPoolExecutor, ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from typing import Any

from halo.errors import ToolError


def resolve_function(name: str, registered: Mapping[str, Callable[..., Any]]) -> Callable[..., Any]:
    """The callable `name` refers to; raises LookupError saying what was tried."""
    if name in registered:
        return registered[name]
    if ":" not in name:
        known = ", ".join(sorted(registered)) or "none"
        raise LookupError(f"function '{name}' is not registered with the workflow (registered: {known})")
    module_name, _, attribute = name.partition(":")
    try:
        target: Any = importlib.import_module(module_name)
    except ImportError as exc:
        raise LookupError(f"cannot import module '{module_name}' for function '{name}': {exc}") from exc
    for part in attribute.split("."):
        if not hasattr(target, part):
            raise LookupError(f"module '{module_name}' has no attribute '{attribute}'")
        target = getattr(target, part)
    if not callable(target):
        raise LookupError(f"'{name}' is not callable")
    return target


class PythonTool:
    """Runs python nodes; thread-safe. `close` shuts both pools down without waiting on stragglers."""

    def __init__(
        self, functions: Mapping[str, Callable[..., Any]], *, max_threads: int = 16, max_processes: int | None = None
    ) -> None:
        self.functions = dict(functions)
        self.max_processes = max_processes or os.cpu_count() or 1
        self._threads = ThreadPoolExecutor(max_threads, thread_name_prefix="halo-python")
        self._processes: ProcessPoolExecutor | None = None
        self._resolved: dict[str, Callable[..., Any]] = {}
        self._lock = threading.Lock()

    def run(self, node_id: str, request: Mapping[str, Any], *, cpu_bound: bool = False) -> dict[str, Any]:
        name = str(request["function"])
        function = self._function(node_id, name)
        args, kwargs = list(request.get("args") or ()), dict(request.get("kwargs") or {})
        timeout_s = float(request.get("timeout_s", 60.0))
        pool: Executor = self._process_pool() if cpu_bound else self._threads
        try:
            future: Future[Any] = pool.submit(function, *args, **kwargs)
        except Exception as exc:  # e.g. a pool broken by a worker that died
            raise ToolError(node_id, f"cannot start {name}: {exc!r}") from exc
        try:
            return {"output": future.result(timeout=timeout_s)}
        except FutureTimeout:
            future.cancel()  # drops it if it has not started; a running call cannot be stopped
            raise ToolError(node_id, f"{name} did not return within timeout_s={timeout_s:g}") from None
        except Exception as exc:
            raise ToolError(node_id, f"{name} raised {type(exc).__name__}: {exc}") from exc

    def close(self) -> None:
        self._threads.shutdown(wait=False, cancel_futures=True)
        with self._lock:
            if self._processes is not None:
                self._processes.shutdown(wait=False, cancel_futures=True)
                self._processes = None

    def _function(self, node_id: str, name: str) -> Callable[..., Any]:
        with self._lock:
            function = self._resolved.get(name)
            if function is None:
                try:
                    function = resolve_function(name, self.functions)
                except LookupError as exc:
                    raise ToolError(node_id, str(exc)) from None
                self._resolved[name] = function
            return function

    def _process_pool(self) -> ProcessPoolExecutor:
        with self._lock:
            if self._processes is None:
                context = multiprocessing.get_context("spawn")
                self._processes = ProcessPoolExecutor(self.max_processes, mp_context=context)
            return self._processes
