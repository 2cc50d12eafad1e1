"""The planner's calls per instance for conditional and map nodes: 1.0 and FOREACH_GUESS (at most
max_items) until a run was seen, then the observed mean kept in the output-length history."""

from __future__ import annotations

from halo.plan.cost import FOREACH_GUESS, OutputLengthHistory, calls_key
from halo.plan.plan_problem import calls_per_instance
from halo.spec import Workflow

WF = Workflow.from_yaml("""
name: shapes
inputs: [xs, flag]
nodes:
  - {id: plain, kind: rule, input: "{{ flag }}", regex: "(.*)"}
  - {id: maybe, kind: rule, when: "flag == 'y'", input: "{{ flag }}", regex: "(.*)"}
  - {id: each, kind: rule, foreach: "{{ xs }}", input: "{{ item }}", regex: "(.*)"}
  - {id: few, kind: rule, foreach: "{{ xs }}", max_items: 3, input: "{{ item }}", regex: "(.*)"}
""")


def test_defaults_before_any_run_and_the_observed_mean_after():
    nodes = {n.id: n for n in WF.graph.nodes}
    empty = OutputLengthHistory()
    assert calls_per_instance(nodes["plain"], None, empty) == 1.0
    assert calls_per_instance(nodes["maybe"], None, empty) == 1.0
    assert calls_per_instance(nodes["each"], None, empty) == float(FOREACH_GUESS)
    assert calls_per_instance(nodes["few"], None, None) == 3.0
    seen = OutputLengthHistory()
    seen.observe(calls_key(nodes["maybe"], None), 1 / 4, 4)  # one of four instances ran
    seen.observe(calls_key(nodes["each"], None), 5 / 2, 2)  # two instances, five elements
    seen.observe(calls_key(nodes["each"], None), 1.0, 2)  # two more, one element each
    assert calls_per_instance(nodes["maybe"], None, seen) == 0.25
    assert calls_per_instance(nodes["each"], None, seen) == 7 / 4
    assert calls_key(nodes["each"], None) != calls_key(nodes["few"], None)
