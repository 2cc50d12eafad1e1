"""llm nodes that score their choices (choice_mode: score, length_normalized), report confidence, or
draw n samples: what loads from YAML and the builder, the located errors, the result fields and their
shapes (node_io), the requests they make, and that consolidation keeps an n-sample call apart."""

from __future__ import annotations

import hashlib
import json
import math
import textwrap

import pytest
from halo.engine.choice_scoring import ChoiceScores, OptionScore
from halo.plan import WhitespaceTokenizer, consolidate
from halo.plan.cost import output_key
from halo.runtime.llm_worker import LlmReply
from halo.runtime.node_io import fallback_result, llm_result, replies_result, request_params, sampling_params
from halo.spec import SpecError, Workflow
from halo.spec.nodes import MAX_SEED, output_fields


def _load(text: str) -> Workflow:
    return Workflow.from_yaml(textwrap.dedent(text))


def _errors(text: str) -> list[tuple[str | None, int | None, str]]:
    with pytest.raises(SpecError) as caught:
        _load(text)
    return [(i.node, i.line, i.message) for i in caught.value.issues]


def test_scored_confident_and_sampled_nodes_load_with_their_fields():
    wf = _load("""\
        name: s
        inputs: [text]
        nodes:
          - {id: judge, kind: llm, prompt: "{{ text }}", choices: [APPROVE, REJECT], choice_mode: score}
          - id: norm
            kind: llm
            prompt: "{{ text }}"
            choices: [APPROVE, REJECT]
            choice_mode: score
            length_normalized: true
            logprobs: true
          - {id: greedy, kind: llm, prompt: "{{ text }}", choices: [APPROVE, REJECT], logprobs: true}
          - {id: many, kind: llm, prompt: "{{ text }}", temperature: 0.7, seed: 3, n: 5}
          - id: weigh
            kind: llm
            prompt: "{{ judge.output }} {{ judge.confidence }} {{ judge.probabilities.APPROVE }}
              {{ judge.scores['REJECT'] }} {{ greedy.confidence }} {{ many.output[0] }} {{ many.text | length }}"
        outputs: {p: judge.probabilities.APPROVE, c: greedy.confidence, all: many.output, first: many.text}
        """)
    judge, norm, greedy, many = (wf.graph.node(n).spec for n in ("judge", "norm", "greedy", "many"))
    assert judge.scored and judge.pure and not judge.length_normalized and norm.length_normalized
    assert output_fields(judge) == {"output", "text", "confidence", "scores", "probabilities"}
    assert output_fields(norm) == output_fields(judge) | {"logprobs"}
    assert output_fields(greedy) == {"output", "text", "logprobs", "confidence"}
    assert output_fields(many) == {"output", "text"} and many.n == 5 and many.pure
    scored_free = (
        Workflow("s").inputs("t").llm("a", prompt="{{ t }}", choices=["x"], choice_mode="score", temperature=1)
    )
    assert scored_free.spec.nodes[0].pure  # scoring samples nothing: temperature does not make it impure


def test_the_builder_takes_the_new_fields_and_round_trips():
    wf = (
        Workflow("s")
        .inputs("t")
        .llm("judge", prompt="{{ t }}", choices=["x", "y"], choice_mode="score", length_normalized=True, logprobs=True)
        .llm("many", prompt="{{ t }}", temperature=0.5, seed=9, n=3)
        .outputs(c="judge.confidence", p="judge.probabilities.x", m="many.output")
    )
    assert Workflow.from_yaml(wf.to_yaml()) == wf
    judge, many = wf.graph.node("judge"), wf.graph.node("many")
    assert sampling_params(judge).choice_mode == "score" and sampling_params(judge).length_normalized
    assert sampling_params(judge).logprobs == 0
    assert [p.seed for p in request_params(many)] == [9, 10, 11]
    assert [p.seed for p in request_params(judge)] == [None]
    wrapping = Workflow("s").inputs("t").llm("a", prompt="{{ t }}", temperature=1, seed=MAX_SEED, n=2)
    assert [p.seed for p in request_params(wrapping.graph.node("a"))] == [MAX_SEED, 0]
    with pytest.raises(SpecError, match="n=2 needs sampling"):
        Workflow("s").inputs("t").llm("a", prompt="{{ t }}", n=2).validate()


def test_bad_sampling_and_scoring_fields_are_located():
    text = """\
        name: s
        inputs: [text]
        nodes:
          - {id: greedy, kind: llm, prompt: "{{ text }}", n: 3}
          - {id: scored, kind: llm, prompt: "{{ text }}", choices: [a, b], choice_mode: score, temperature: 1, n: 2}
          - {id: zero, kind: llm, prompt: "{{ text }}", temperature: 1, n: 0}
          - {id: huge, kind: llm, prompt: "{{ text }}", temperature: 1, n: 129}
          - {id: norm, kind: llm, prompt: "{{ text }}", choices: [a, b], length_normalized: true}
          - {id: free, kind: llm, prompt: "{{ text }}", choice_mode: score}
          - {id: conf, kind: llm, prompt: "{{ text }} {{ greedy.confidence }}"}
          - {id: noconf, kind: llm, prompt: "{{ text }}", choices: [a, b]}
          - {id: probs, kind: llm, prompt: "{{ noconf.confidence }} {{ norm.probabilities.a }}"}
        """
    issues = _errors(text)
    found = {(node, line): message for node, line, message in issues if node != "probs"}
    assert found[("greedy", 4)] == (
        "n=3 needs sampling: with temperature 0 (greedy decoding) every sample would be the same text; "
        "set temperature > 0 or n: 1"
    )
    assert found[("scored", 5)] == (
        "n=2 with choice_mode: score: scoring is deterministic, every sample would be the same pick"
    )
    assert "'n'" in found[("zero", 6)] and "greater than or equal to 1" in found[("zero", 6)]
    assert "'n'" in found[("huge", 7)] and "less than or equal to 128" in found[("huge", 7)]
    assert found[("norm", 8)].startswith("length_normalized applies to choice_mode: score only")
    assert found[("free", 9)] == "choice_mode applies to 'choices' only (this node has none)"
    assert found[("conf", 10)] == "node 'greedy' (llm) has no field 'confidence' (fields: output, text)"
    probs = sorted((line, message) for node, line, message in issues if node == "probs")
    assert probs == [
        (12, "node 'noconf' (llm) has no field 'confidence' (fields: output, text)"),
        (12, "node 'norm' (llm) has no field 'probabilities' (fields: output, text)"),
    ]
    assert len(issues) == 9


def _scores(length_normalized: bool = False) -> ChoiceScores:
    options = (OptionScore("APPROVE", (1, 2), (-0.5, -0.25)), OptionScore("REJECT", (3,), (-1.5,)))
    return ChoiceScores.of(options, length_normalized)


def test_a_scored_result_is_the_chosen_option_with_its_scores():
    judge = Workflow("s").inputs("t").llm("j", prompt="{{ t }}", choices=["APPROVE", "REJECT"], choice_mode="score")
    node = judge.graph.node("j")
    scores = _scores()
    result = llm_result(node, "APPROVE", finish_reason="stop", choice_scores=scores)
    want = 1 / (1 + math.exp(-0.75))  # softmax of the sums -0.75 and -1.5
    assert result == {
        "output": "APPROVE",
        "text": "APPROVE",
        "confidence": pytest.approx(want),
        "scores": {"APPROVE": -0.75, "REJECT": -1.5},
        "probabilities": {"APPROVE": pytest.approx(want), "REJECT": pytest.approx(1 - want)},
    }
    with pytest.raises(ValueError, match="carries no option scores"):
        llm_result(node, "APPROVE", finish_reason="stop")
    assert fallback_result(node) == {"output": None, "text": "", "confidence": None, "scores": {}, "probabilities": {}}


def test_greedy_confidence_is_the_exp_of_the_summed_masked_logprobs():
    wf = Workflow("s").inputs("t").llm("g", prompt="{{ t }}", choices=["APPROVE", "REJECT"], logprobs=True)
    node = wf.graph.node("g")
    result = llm_result(node, "REJECT", finish_reason="stop", logprobs=[-0.2, 0.0, 0.0])  # two forced tokens
    assert result == {"output": "REJECT", "text": "REJECT", "logprobs": [-0.2, 0.0, 0.0], "confidence": math.exp(-0.2)}
    # a reply known by its text only (no logprobs) has no confidence to give
    assert replies_result(node, ["APPROVE"])["confidence"] is None
    assert fallback_result(node) == {"output": None, "text": "", "logprobs": [], "confidence": None}


def test_n_samples_make_every_field_a_list_and_one_bad_sample_fails_the_node():
    wf = Workflow("s").inputs("t").llm("m", prompt="{{ t }}", choices=["a", "b"], temperature=1, n=3, logprobs=True)
    node = wf.graph.node("m")
    replies = [LlmReply("a", "stop", token_logprobs=(-0.1,)), LlmReply("b", "stop", token_logprobs=(-2.0,)), "a"]
    assert replies_result(node, replies) == {
        "output": ["a", "b", "a"],
        "text": ["a", "b", "a"],
        "logprobs": [[-0.1], [-2.0], []],
        "confidence": [math.exp(-0.1), math.exp(-2.0), None],
    }
    with pytest.raises(ValueError, match=r"^sample 1 of 3: choices output truncated at max_tokens=256$"):
        replies_result(node, ["a", LlmReply("", "length", "choices output truncated at max_tokens=256"), "b"])
    with pytest.raises(ValueError, match="draws n=3 samples but 1 replies came back"):
        replies_result(node, ["a"])
    assert fallback_result(node) == {"output": None, "text": [], "logprobs": [], "confidence": []}
    doc = Workflow("s").inputs("t").llm("d", prompt="{{ t }}", json_schema={"type": "object"}, temperature=1, n=2)
    parsed = replies_result(doc.graph.node("d"), ['{"k": 1}', "{}"])
    assert parsed == {"output": [{"k": 1}, {}], "json": [{"k": 1}, {}], "text": ['{"k": 1}', "{}"]}


def test_an_n_sample_call_never_merges_with_a_single_call_of_the_same_request():
    wf = (
        Workflow("s")
        .inputs("t")
        .llm("many", prompt="{{ t }}", temperature=0.7, seed=1, n=3)
        .llm("one", prompt="{{ t }}", temperature=0.7, seed=1)
        .llm("again", prompt="{{ t }}", temperature=0.7, seed=1, n=3)
        .llm("scored", prompt="{{ t }}", choices=["x", "y"], choice_mode="score")
        .llm("greedy", prompt="{{ t }}", choices=["x", "y"])
        .outputs(a="many.output")
    )
    graph = consolidate(wf, [{"t": "same"}, {"t": "same"}], WhitespaceTokenizer())
    calls = {node: ids[0] for node, ids in graph.assignment.items()}
    assert all(len(set(ids)) == 1 for ids in graph.assignment.values())  # seeded: equal rows run once
    assert calls["again"] == calls["many"]  # the same n-sample call
    assert len({calls["many"], calls["one"], calls["scored"], calls["greedy"]}) == 4


def test_the_output_length_history_key_holds_the_format():
    wf = (
        Workflow("s")
        .inputs("t")
        .llm("free", prompt="{{ t }}")
        .llm("picked", prompt="{{ t }}", choices=["x", "y"])
        .llm("scored", prompt="{{ t }}", choices=["x", "y"], choice_mode="score")
        .llm("coded", prompt="{{ t }}", regex="[0-9]+")
    )
    keys = {n.id: output_key(n, "m").split(":")[1] for n in wf.graph.nodes}
    assert len(set(keys.values())) == 4
    # a free-text node keeps the key it had before formats were part of it (its history stays valid)
    old = json.dumps(["m", None, "{{ t }}", 256])
    assert keys["free"] == hashlib.sha1(old.encode()).hexdigest()[:12]
