"""ToolRunner: exact coalescing and cache counts, error fan-out, rule nodes, timeline overlap, close."""

from __future__ import annotations

import threading
import time
import uuid

import pytest
from halo.errors import ToolError
from halo.plan.cost.tool_cost import ToolCostModel, http_signature
from halo.runtime.tools import ToolRunner, ToolSpan
from halo.spec.workflow import Workflow


def _max_overlap(spans: list[ToolSpan]) -> int:
    events = sorted([(span.start, 1) for span in spans] + [(span.end, -1) for span in spans])
    running = best = 0
    for _, step in events:
        running += step
        best = max(best, running)
    return best


def test_identical_pure_calls_in_flight_run_once_then_hit_the_cache(http_server):
    key = uuid.uuid4().hex[:12]
    wf = (
        Workflow("c")
        .inputs("v")
        .http("a", url=http_server.url + "/held/{{ v }}")  # answers once the test releases it
        .http("b", url=http_server.url + "/held/{{ v }}")  # another node, the same request
    )
    a, b = wf.graph.node("a"), wf.graph.node("b")
    with ToolRunner(wf) as runner:
        futures = [runner.submit(a if i % 2 else b, wf.graph.render(a, {"v": key})) for i in range(8)]
        http_server.release(key)  # all eight were submitted while the first was in flight
        results = [future.result(timeout=10) for future in futures]
        assert http_server.hits[key] == 1
        assert all(result["output"] == {"key": key, "n": 1} for result in results)
        stats = runner.stats.by_kind["http"]
        assert (stats.logical, stats.executed, stats.coalesced, stats.cache_hits) == (8, 1, 7, 0)
        # Finished now: the same GET is answered from the run's cache.
        again = runner.submit(a, wf.graph.render(a, {"v": key})).result(timeout=10)
        assert again == results[0] and again is not results[0]
        assert http_server.hits[key] == 1
        stats = runner.stats
        assert (stats.logical, stats.executed, stats.coalesced, stats.cache_hits) == (9, 1, 7, 1)
        kinds = [(span.coalesced, span.cached) for span in runner.timeline]
        assert kinds.count((False, False)) == 1 and kinds.count((True, False)) == 7 and kinds[-1] == (False, True)


def test_pure_python_coalesces_but_is_not_cached_and_impure_never_shares():
    calls: list[str] = []
    lock = threading.Lock()
    release = threading.Event()  # every call waits for it: all submits happen while leaders are in flight

    def slow_upper(text: str) -> str:
        with lock:
            calls.append(text)
        assert release.wait(30)
        return text.upper()

    wf = (
        Workflow("p")
        .inputs("v")
        .register("slow_upper", slow_upper)
        .python("pure", function="slow_upper", args=["{{ v }}"], pure=True)
        .python("impure", function="slow_upper", args=["{{ v }}"])
    )
    pure, impure = wf.graph.node("pure"), wf.graph.node("impure")
    with ToolRunner(wf) as runner:
        rows = ["x", "x", "x", "y", "x", "y"]
        futures = [runner.submit(pure, wf.graph.render(pure, {"v": v})) for v in rows]
        release.set()
        assert [f.result(timeout=10)["output"] for f in futures] == [v.upper() for v in rows]
        assert sorted(calls) == ["x", "y"]
        runner.submit(pure, wf.graph.render(pure, {"v": "x"})).result(timeout=10)  # python results are not cached
        futures = [runner.submit(impure, wf.graph.render(impure, {"v": "z"})) for _ in range(3)]
        assert [f.result(timeout=10)["output"] for f in futures] == ["Z"] * 3
        stats = runner.stats.by_kind["python"]
    assert (stats.logical, stats.executed, stats.coalesced, stats.cache_hits) == (10, 6, 4, 0)
    assert calls.count("z") == 3


def test_sql_calls_are_cached_per_request_and_database(call):
    wf = (
        Workflow("s")
        .inputs("v")
        .sql("q", query="SELECT :v * 2 AS doubled, random() AS r", params={"v": "{{ v }}"})
        .sql("q2", query="SELECT :v * 2 AS doubled, random() AS r", params={"v": "{{ v }}"})
    )
    with ToolRunner(wf) as runner:
        first = call(runner, wf, "q", {"v": 21})
        assert first["rows"][0]["doubled"] == 42
        assert call(runner, wf, "q2", {"v": 21}) == first  # same request, same database: the cached rows
        assert call(runner, wf, "q", {"v": 22})["rows"][0]["doubled"] == 44
        stats = runner.stats.by_kind["sql"]
    assert (stats.logical, stats.executed, stats.cache_hits) == (3, 2, 1)


def test_a_failing_call_fails_every_joined_caller_under_its_own_node(http_server):
    wf = (
        Workflow("f")
        .inputs("v")
        .http("a", url=http_server.url + "/status/500?delay=0.2&k={{ v }}")
        .http("b", url=http_server.url + "/status/500?delay=0.2&k={{ v }}")
    )
    a, b = wf.graph.node("a"), wf.graph.node("b")
    with ToolRunner(wf, http_attempts=1) as runner:
        request = wf.graph.render(a, {"v": uuid.uuid4().hex})
        futures = [runner.submit(a, request), runner.submit(b, request), runner.submit(b, request)]
        errors = [future.exception(timeout=10) for future in futures]
        assert [type(e) for e in errors] == [ToolError] * 3
        assert [e.node_id for e in errors] == ["a", "b", "b"]  # type: ignore[union-attr]
        assert all("HTTP 500" in str(e) for e in errors)
        runner.submit(a, request).exception(timeout=10)  # failures are not cached: it runs again
        stats = runner.stats.by_kind["http"]
    assert (stats.logical, stats.executed, stats.coalesced, stats.cache_hits, stats.failures) == (4, 2, 2, 0, 2)


def test_rule_nodes_extract_by_regex_and_field_with_defaults(call):
    wf = (
        Workflow("r")
        .inputs("text")
        .rule("order", input="{{ text }}", regex=r"order #(\d+)", group=1, ignore_case=True, default="none")
        .rule("named", input="{{ text }}", regex=r"(?P<amount>\d+\.\d\d) EUR", group="amount")
        .rule("field", input="{{ text }}", field="customer.tags[1]", default="?")
    )
    with ToolRunner(wf) as runner:
        assert call(runner, wf, "order", {"text": "Re: ORDER #4411 late"}) == {"output": "4411", "matched": True}
        assert call(runner, wf, "order", {"text": "no number"}) == {"output": "none", "matched": False}
        assert call(runner, wf, "named", {"text": "paid 12.50 EUR"}) == {"output": "12.50", "matched": True}
        document = '{"customer": {"tags": ["new", "vip"]}}'
        assert call(runner, wf, "field", {"text": document}) == {"output": "vip", "matched": True}
        assert call(runner, wf, "field", {"text": '{"customer": {}}'}) == {"output": "?", "matched": False}
        assert call(runner, wf, "field", {"text": "not json"}) == {"output": "?", "matched": False}
        assert runner.stats.by_kind["rule"].executed == 6


def test_calls_overlap_on_the_pool_and_feed_the_cost_model(http_server):
    wf = Workflow("o").inputs("v").http("slow", url=http_server.url + "/json?delay=0.25&name={{ v }}")
    node = wf.graph.node("slow")
    model = ToolCostModel()
    with ToolRunner(wf, max_threads=16, cost_model=model) as runner:
        futures = [runner.submit(node, wf.graph.render(node, {"v": f"n{i}"})) for i in range(16)]
        for future in futures:
            future.result(timeout=10)
        spans = runner.timeline
    assert len(spans) == 16 and all(span.ok and span.start <= span.end for span in spans)
    assert _max_overlap(spans) >= 8  # serial would be 1; the pool ran them side by side
    # The estimate is learned from these calls: at least the server's delay, and within what the
    # calls took (a loaded CI machine stretches them past 1 s, so no fixed upper bound).
    durations = [span.end - span.start for span in spans]
    estimate = model.estimate_s(node, wf.graph.render(node, {"v": "other"}))
    assert estimate >= 0.2 and min(durations) - 0.05 <= estimate <= max(durations) + 0.05
    assert estimate != model.estimate_s(Workflow("p").inputs("v").http("slow", url="http://x/").graph.node("slow"))
    assert model.signature(node) == http_signature("GET", http_server.url + "/json")


def test_close_fails_calls_that_never_started_and_refuses_new_ones(http_server):
    tag = uuid.uuid4().hex[:8]
    wf = Workflow("z").inputs("v").http("slow", url=http_server.url + "/json?delay=2&name={{ v }}")
    node = wf.graph.node("slow")
    runner = ToolRunner(wf, max_threads=1)
    futures = [runner.submit(node, wf.graph.render(node, {"v": f"{tag}{i}"})) for i in range(3)]
    deadline = time.monotonic() + 30
    while not http_server.hits[f"arrived:/json?delay=2&name={tag}0"]:  # the first call is in flight
        assert time.monotonic() < deadline, "the first call never reached the server"
        time.sleep(0.01)
    runner.close()  # the server holds the first call 2 s: the other two are still queued
    assert futures[0].result(timeout=5)["status"] == 200
    for future in futures[1:]:
        with pytest.raises(ToolError, match="closed before the call ran"):
            future.result(timeout=5)
    with pytest.raises(RuntimeError, match="closed"):
        runner.submit(node, wf.graph.render(node, {"v": "late"}))


def test_llm_nodes_are_not_tools():
    wf = Workflow("l").inputs("v").llm("ask", prompt="{{ v }}")
    with ToolRunner(wf) as runner, pytest.raises(ValueError, match="is an llm node"):
        runner.submit(wf.graph.node("ask"), {"prompt": "x"})
