"""The planner prices a scored choice node (choices, choice_mode: score) as prefill only: the prompt,
then one batched prefill of its options after the shared prompt; zero decode steps."""

from __future__ import annotations

import math

import pytest
from halo.plan import WhitespaceTokenizer, consolidate
from halo.plan.cost import DEFAULT_CURVES
from halo.plan.plan_problem import build_plan_problem, scored_option_tokens
from halo.spec import Workflow

WORKFLOW = """
name: scored
inputs: [ticket]
nodes:
  - id: scored
    kind: llm
    prompt: "Ticket: {{ ticket }} Answer billing, bug or something else."
    choices: [billing, bug, something else entirely]
    choice_mode: score
    max_tokens: 8
  - id: greedy
    kind: llm
    prompt: "Ticket: {{ ticket }} Answer billing, bug or something else."
    choices: [billing, bug, something else entirely]
    max_tokens: 8
outputs: {a: scored.output, b: greedy.output}
"""


@pytest.fixture
def workflow(tmp_path) -> Workflow:
    path = tmp_path / "scored.yaml"
    path.write_text(WORKFLOW)
    return Workflow.from_yaml(path)


def test_score_s_is_the_prompt_prefill_plus_one_batched_prefill_of_the_options() -> None:
    c = DEFAULT_CURVES
    a, b, k = c.prefill
    assert c.score_s(100, 0, [1, 1, 1], 4) == c.prefill_s(100, 0, 4)  # one-token options: the prompt's row
    extra = [2, 4]  # options of 3 and 5 tokens compute 2 and 4 tokens after the prompt
    want = c.prefill_s(80, 20, 4) + a + b * 4 * 6 + k * 4 * sum(n * (100 + n / 2) for n in extra)
    assert c.score_s(100, 20, [3, 1, 5], 4) == pytest.approx(want)
    assert c.score_s(100, 0, [3], 0) == 0.0


def test_a_scored_choice_node_is_priced_as_prefill_with_no_decode(workflow: Workflow) -> None:
    rows = [{"ticket": f"charged twice {i}"} for i in range(6)]
    graph = consolidate(workflow, rows, WhitespaceTokenizer())
    scored, greedy = (workflow.graph.node(n) for n in ("scored", "greedy"))
    assert scored_option_tokens(graph, greedy) is None
    options = scored_option_tokens(graph, scored)
    assert options == [1, 1, 3]  # one token per word
    problem = build_plan_problem(graph, lambda _m: DEFAULT_CURVES)
    counters = graph.counters["scored"]
    batch = counters.owned
    prompt = counters.physical_prompt_tokens // batch
    cached = counters.cached_prompt_tokens // batch
    task = problem.task("scored")
    assert task.decode_s == 0.0
    assert task.prefill_s == pytest.approx(DEFAULT_CURVES.score_s(prompt, cached, options, batch))
    assert task.prefill_s > DEFAULT_CURVES.prefill_s(prompt - cached, cached, batch)
    assert problem.task("greedy").decode_s > 0.0  # constrained greedy decoding still decodes
    no_tokenizer = consolidate(workflow, rows)  # a token per 4 UTF-8 bytes
    assert scored_option_tokens(no_tokenizer, scored) == [math.ceil(len(c.encode()) / 4) for c in scored.spec.choices]
