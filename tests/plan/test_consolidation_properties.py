"""Properties of consolidation against a naive per-row reference run (hypothesis).

The reference executes every (node, row) instance on its own with a fake executor: a pure node's
result is a function of its rendered request, an impure node's result is unique to its instance.
Consolidation must then (1) never merge two instances whose rendered requests differ (or of which
one is skipped by a loop guard and the other not), (2) keep every instance mapped to exactly one
physical node that serves it, so each node receives exactly its own inputs, and (3) merge every
pair of pure, rendered instances that send the same request with the same upstream executions.
"""

from __future__ import annotations

import json
from typing import Any

from halo.plan import WhitespaceTokenizer, consolidate
from halo.spec import Workflow
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

WORKFLOW = Workflow.from_yaml(
    """\
name: props
inputs: [a, b]
databases: {db: {path: x.duckdb}}
nodes:
  - {id: n1, kind: llm, prompt: "A={{ a }}"}
  - {id: n2, kind: llm, prompt: "A={{ a }}", temperature: 0.5}
  - {id: n3, kind: sql, db: db, query: "SELECT :x AS x", params: {x: "{{ b }}"}}
  - {id: n4, kind: llm, system: "sys {{ b }}", prompt: "{{ n1.output }}|{{ n3.rows }}|{{ b }}"}
  - {id: n5, kind: llm, prompt: "{{ n2.output }}"}
  - {id: n6, kind: rule, input: "{{ n4.output }}", regex: "(\\\\d)", default: none}
  - {id: n7, kind: http, url: "https://x.test/{{ a }}", params: {b: "{{ b }}"}}
  - {id: n8, kind: python, function: "json:dumps", args: ["{{ [a, n7.status] }}"], pure: true}
  - id: n9
    kind: llm
    prompt: "{{ a }}{% if iteration > 1 %} again {{ n9.output }}{% endif %}"
loops:
  - {nodes: [n9], max_iterations: 3, until: "'stop' in n9.output"}
"""
)
GRAPH = WORKFLOW.graph

VALUES = st.sampled_from(["x", "y", "x y", "stop", 1, "1", 1.0, True, None, [1, 2]])
ROWS = st.lists(st.fixed_dictionaries({"a": VALUES, "b": VALUES}), min_size=1, max_size=12)


def fake_result(node_id: str, row: int, pure: bool, request: dict[str, Any]) -> dict[str, Any]:
    text = json.dumps(request, sort_keys=True, default=repr)
    # Pure: a function of the request only. Impure: unique per instance.
    output = f"out:{len(text)}:{hash(text) % 7}" if pure else f"rand:{node_id}:{row}"
    if "stop" in text and pure:
        output += " stop"
    return {"output": output, "text": output, "rows": [{"x": output}], "status": 200, "matched": True}


def reference(rows: list[dict[str, Any]]) -> dict[tuple[str, int], str | None]:
    """Every instance's rendered request (canonical JSON), or None when a loop guard skipped it."""
    requests: dict[tuple[str, int], str | None] = {}
    for r, row in enumerate(rows):
        results: dict[str, Any] = {}
        for node in GRAPH.nodes:
            if GRAPH.skipped(node, row, results):
                requests[(node.id, r)] = None
                continue
            request = GRAPH.render(node, row, results)
            requests[(node.id, r)] = json.dumps(request, sort_keys=True, default=repr)
            results[node.id] = fake_result(node.id, r, node.pure, request)
    return requests


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ROWS)
def test_consolidation_matches_the_naive_run(rows: list[dict[str, Any]]):
    graph = consolidate(WORKFLOW, rows, WhitespaceTokenizer())
    naive = reference(rows)
    seen: set[tuple[str, int]] = set()
    for physical in graph.physical:
        requests = {naive[instance] for instance in physical.instances}
        # (1) one physical node, one request (and all instances skipped or none)
        assert len(requests) == 1, f"{physical.node} merged different requests: {requests}"
        if not physical.pure:
            assert physical.fan_out == 1
        if physical.values is not None:
            rendered = json.dumps(graph.request(physical), sort_keys=True, default=repr)
            only = next(iter(requests))
            assert only is None or rendered == only
        for instance in physical.instances:
            assert instance not in seen
            seen.add(instance)
            # (2) the assignment and the fan-out agree, instance by instance
            assert graph.assignment[instance[0]][instance[1]] == physical.id
    assert seen == set(naive)


@settings(max_examples=40, deadline=None)
@given(ROWS)
def test_rendered_pure_instances_with_equal_requests_are_merged(rows: list[dict[str, Any]]):
    graph = consolidate(WORKFLOW, rows)
    naive = reference(rows)
    for node in GRAPH.nodes:
        if not (node.pure and node.renderable and not node.upstream):
            continue
        by_request: dict[str | None, set[int]] = {}
        for r in range(len(rows)):
            by_request.setdefault(naive[(node.id, r)], set()).add(graph.assignment[node.id][r])
        # (3) exact counts: one execution per distinct request, no more
        assert all(len(ids) == 1 for ids in by_request.values())
        assert graph.counters[node.id].physical == len(by_request)


KINDS = ["llm", "llm_sampled", "llm_seeded", "sql", "get", "post", "rule", "py_pure", "py_impure"]


@st.composite
def random_workflows(draw: st.DrawFn) -> Workflow:
    """Small random DAGs: each node reads some inputs and some earlier nodes, in a random kind."""
    wf = Workflow("random").inputs("a", "b")
    for i in range(draw(st.integers(2, 6))):
        reads = draw(st.lists(st.integers(0, i - 1), max_size=2, unique=True)) if i else []
        inputs = draw(st.lists(st.sampled_from(["a", "b"]), max_size=2, unique=True))
        text = "T" + "|".join([f"{{{{ {x} }}}}" for x in inputs] + [f"{{{{ n{j}.output }}}}" for j in reads])
        kind = draw(st.sampled_from(KINDS))
        node_id = f"n{i}"
        if kind.startswith("llm"):
            extra = {"temperature": 0.9} if kind != "llm" else {}
            if kind == "llm_seeded":
                extra["seed"] = 3
            wf = wf.llm(node_id, prompt=text, **extra)
        elif kind == "sql":
            wf = wf.sql(node_id, query="SELECT :p AS p", params={"p": text})
        elif kind in ("get", "post"):
            wf = wf.http(node_id, url="https://x.test/" + text, method=kind.upper())
        elif kind == "rule":
            wf = wf.rule(node_id, input=text, regex="(\\w)")
        else:
            wf = wf.python(node_id, function="json:dumps", args=[text], pure=kind == "py_pure")
    return wf


def naive_requests(wf: Workflow, rows: list[dict[str, Any]]) -> dict[tuple[str, int], str]:
    graph = wf.graph
    out: dict[tuple[str, int], str] = {}
    for r, row in enumerate(rows):
        results: dict[str, Any] = {}
        for node in graph.nodes:
            request = graph.render(node, row, results)
            out[(node.id, r)] = json.dumps(request, sort_keys=True, default=repr)
            results[node.id] = fake_result(node.id, r, node.pure, request)
    return out


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(random_workflows(), ROWS)
def test_random_workflows_never_merge_different_requests(wf: Workflow, rows: list[dict[str, Any]]):
    graph = consolidate(wf, rows)
    naive = naive_requests(wf, rows)
    served = 0
    for physical in graph.physical:
        assert len({naive[instance] for instance in physical.instances}) == 1
        assert physical.pure or physical.fan_out == 1
        for node_id, row in physical.instances:
            assert graph.assignment[node_id][row] == physical.id
        served += physical.fan_out
    assert served == len(naive) == graph.logical_calls
