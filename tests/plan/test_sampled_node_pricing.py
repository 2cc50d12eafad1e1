"""The planner prices a node of n samples (`n: k`) as one prefill of its prompt (the samples share it
through the prefix cache) and k decodes per call (k times the batch in each decode step); a node that
reads it reads k outputs."""

from __future__ import annotations

import pytest
from halo.plan import WhitespaceTokenizer, consolidate
from halo.plan.cost import DEFAULT_CURVES
from halo.plan.plan_problem import build_plan_problem
from halo.spec import Workflow


def test_n_samples_are_priced_as_n_decodes_after_one_prefill() -> None:
    wf = (
        Workflow("sampled")
        .inputs("t")
        .llm("one", prompt="Guess {{ t }} now", temperature=0.8, max_tokens=6)
        .llm("many", prompt="Guess {{ t }} now", temperature=0.8, max_tokens=6, n=4)
        .llm("after_one", prompt="Pick {{ one.output }}", max_tokens=2)
        .llm("after_many", prompt="Pick {{ many.output }}", max_tokens=2)
    )
    rows = [{"t": f"row {i}"} for i in range(3)]
    graph = consolidate(wf, rows, WhitespaceTokenizer())
    problem = build_plan_problem(graph, lambda _m: DEFAULT_CURVES)
    one, many = problem.task("one"), problem.task("many")
    counters = graph.counters["many"]
    batch, prompt = counters.owned, counters.physical_prompt_tokens // counters.owned
    cached = counters.cached_prompt_tokens // batch
    assert batch == 3
    assert many.prefill_s == pytest.approx(DEFAULT_CURVES.prefill_s(prompt - cached, cached, batch))  # once a call
    steps = 6 - 1
    assert many.decode_s == pytest.approx(steps * DEFAULT_CURVES.decode_step_s(batch * 4, prompt + (steps + 1) / 2))
    assert one.decode_s == pytest.approx(steps * DEFAULT_CURVES.decode_step_s(batch, prompt + (steps + 1) / 2))
    assert many.decode_s > one.decode_s
    # a deferred reader's prompt estimate counts the 4 outputs it reads
    assert problem.task("after_many").prefill_s > problem.task("after_one").prefill_s
