"""Python tools: registered and importable callables, errors, timeouts, and the cpu-bound process pool."""

from __future__ import annotations

import math
import os
import threading

import pytest
from halo.errors import ToolError
from halo.runtime.tools import ToolRunner
from halo.runtime.tools.python_call import resolve_function
from halo.spec.workflow import Workflow


def square(x: int, *, offset: int = 0) -> int:
    return x * x + offset


def explode(message: str) -> None:
    raise ValueError(f"bad input {message}")


def test_registered_name_builder_callable_and_import_path(call):
    wf = (
        Workflow("p")
        .inputs("v")
        .register("scorer", lambda text, scale=1: len(text) * scale)
        .python("named", function="scorer", args=["{{ v }}"], kwargs={"scale": 10})
        .python("builder", function=square, args=["{{ v | length }}"], kwargs={"offset": 1})
        .python("imported", function="math:comb", args=[5, 2])
        .python("dotted", function="os.path:join", args=["a", "{{ v }}"])
    )
    with ToolRunner(wf) as runner:
        assert call(runner, wf, "named", {"v": "abc"}) == {"output": 30}
        assert call(runner, wf, "builder", {"v": "abc"}) == {"output": 10}
        assert call(runner, wf, "imported", {"v": ""}) == {"output": 10}
        assert call(runner, wf, "dotted", {"v": "b"}) == {"output": os.path.join("a", "b")}


def test_raising_function_is_a_tool_error_with_its_cause(call):
    wf = Workflow("p").inputs("v").python("boom", function=explode, args=["{{ v }}"])
    with ToolRunner(wf) as runner, pytest.raises(ToolError) as caught:
        call(runner, wf, "boom", {"v": "x1"})
    assert caught.value.node_id == "boom"
    assert "raised ValueError: bad input x1" in str(caught.value)
    assert isinstance(caught.value.__cause__, ValueError)
    assert runner.stats.by_kind["python"].failures == 1


def test_timeout_fails_the_call_without_waiting_for_it(call):
    started, release, returned = threading.Event(), threading.Event(), threading.Event()

    def held(value: int) -> str:
        started.set()
        release.wait(30)
        returned.set()
        return "rested"

    wf = Workflow("p").inputs("v").python("slow", function=held, args=["{{ v }}"], timeout_s=0.2)
    with ToolRunner(wf) as runner:
        try:
            with pytest.raises(ToolError, match="did not return within timeout_s=0.2"):
                call(runner, wf, "slow", {"v": 1})
            assert started.wait(10) and not returned.is_set()  # it failed while the function still ran
        finally:
            release.set()  # closing the runner waits for the abandoned call


def test_unresolvable_functions_say_what_was_tried():
    with pytest.raises(LookupError, match="not registered with the workflow"):
        resolve_function("nowhere", {"known": len})
    with pytest.raises(LookupError, match="cannot import module 'no_such_pkg.mod' for function"):
        resolve_function("no_such_pkg.mod:f", {})
    with pytest.raises(LookupError, match="has no attribute 'nope'"):
        resolve_function("math:nope", {})


def test_cpu_bound_calls_run_in_worker_processes(call):
    wf = (
        Workflow("p")
        .inputs("v")
        .python("pid", function="os:getpid", cpu_bound=True)
        .python("heavy", function="math:factorial", args=["{{ v }}"], cpu_bound=True)
        .python("local", function=square, args=["{{ v }}"], cpu_bound=True, timeout_s=30)
        .python("in_thread", function="os:getpid")
    )
    with ToolRunner(wf) as runner:
        worker_pid = call(runner, wf, "pid", {"v": 0})["output"]
        assert worker_pid != os.getpid()
        assert call(runner, wf, "in_thread", {"v": 0})["output"] == os.getpid()
        assert call(runner, wf, "heavy", {"v": 300})["output"] == math.factorial(300)
        # A function of this test module pickles by reference; the spawned worker imports it.
        assert call(runner, wf, "local", {"v": 12}, timeout=60)["output"] == 144
