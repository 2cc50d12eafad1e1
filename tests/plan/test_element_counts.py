"""A foreach node over row inputs: consolidation counts its per-element instances (equal element
requests across rows and within a row once), explain prints them, and the planner prices the
counted calls; a foreach over an upstream result says its elements are known at run time."""

from __future__ import annotations

from halo.plan import consolidate
from halo.plan.explain import explain_text
from halo.plan.plan_problem import build_plan_problem
from halo.spec import Workflow

WF = Workflow.from_yaml("""
name: shapes
inputs: [xs, flag]
nodes:
  - {id: each, kind: rule, foreach: "{{ xs }}", as: x, input: "{{ x }}", regex: "(.*)"}
  - {id: few, kind: rule, foreach: "{{ xs }}", as: x, max_items: 2, truncate: true, input: "{{ x }}", regex: "(.*)"}
  - {id: strict, kind: rule, foreach: "{{ xs }}", as: x, max_items: 2, input: "{{ x }}", regex: "(.*)"}
  - {id: maybe, kind: rule, when: "{{ flag == 'y' }}", foreach: "{{ xs }}", as: x, input: "{{ x }}", regex: "(.*)"}
  - {id: later, kind: rule, foreach: "{{ each.output }}", as: x, input: "{{ x }}", regex: "(.*)"}
outputs: {later: later.output}
""")

ROWS = [
    {"xs": ["a", "b", "a"], "flag": "y"},  # "a" twice within the row
    {"xs": ["b", "c"], "flag": "n"},  # "b" again across rows
    {"xs": ["a", "b", "a"], "flag": "y"},  # an equal row: merged into the first instance
    {"xs": [], "flag": "y"},
]


def test_counts_elements_across_and_within_rows():
    graph = consolidate(WF, ROWS)
    each = graph.counters["each"].elements
    assert each is not None
    assert (each.instances, each.elements, each.distinct, each.largest) == (3, 5, 3, 3)  # a,b,a + b,c + []
    few = graph.counters["few"].elements
    assert few is not None and (few.elements, few.distinct, few.largest) == (4, 3, 2)  # a,b + b,c truncated
    strict = graph.counters["strict"].elements
    assert strict is not None  # a,b,a is over max_items
    assert (strict.instances, strict.failed, strict.distinct) == (2, 1, 2)
    maybe = graph.counters["maybe"].elements
    assert maybe is not None and (maybe.instances, maybe.skipped, maybe.elements, maybe.distinct) == (2, 1, 3, 2)
    assert graph.counters["later"].elements is None  # its list is an upstream result


def test_explain_prints_the_element_instances():
    text = explain_text(consolidate(WF, ROWS))
    each = "FOREACH  each: 3 instances map 5 elements (at most 3 in one) -> 3 distinct element calls (40% saved)"
    assert each in text
    assert "FOREACH  strict: 2 instances map 2 elements (at most 2 in one) -> 2 distinct element calls" in text
    assert "1 instance(s) fail" in text
    assert "FOREACH  maybe: 2 instances map 3 elements" in text and "1 instance(s) skipped by when" in text
    assert "FOREACH  later: maps over a list that reads each; its elements are known at run time" in text


def test_planner_prices_the_counted_calls():
    graph = consolidate(WF, ROWS * 10)  # equal rows merge: the same three distinct element calls
    seen: dict[str, int] = {}

    def tool_cost(node, calls):
        seen.setdefault(node.id, calls)  # the plan's call first, then one call alone for the per-call price
        return 0.001 * calls

    build_plan_problem(graph, lambda m: None, tool_cost_s=tool_cost)  # no llm node: no curves
    assert seen["each"] == 3 and seen["few"] == 3 and seen["maybe"] == 2
