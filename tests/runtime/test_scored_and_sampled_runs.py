"""Scored choice nodes (choice_mode: score), confidence, and nodes of n samples, at run time: every path
(the planned run, the serial baseline, the per-call and opwise benchmark systems) gives the same rows,
the fields hold what docs/structured_outputs.md ("In workflows") says, and a voting workflow weighs its
judges by confidence.

The tiny GGUF model (tests/tiny_gguf.py, random weights, fp32): its byte-level vocabulary has no merge
of the letters used in the options below, so each option has exactly one tokenization, which makes the
greedy confidence checkable against the scored first-token probabilities.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import halo
import pytest
from halo.spec import Workflow
from tiny_gguf import write_tiny_gguf

from bench.systems import run_system

JUDGES = """\
name: judged
models:
  t: {{source: {model}, dtype: fp32}}
inputs: [text]
nodes:
  - id: greedy
    kind: llm
    model: t
    prompt: "Verdict on {{{{ text }}}}:"
    choices: [qx, wy, kz]
    logprobs: true
    max_tokens: 4
  - id: scored
    kind: llm
    model: t
    prompt: "Verdict on {{{{ text }}}}:"
    choices: [q, w, k]
    choice_mode: score
  - id: normalized
    kind: llm
    model: t
    prompt: "Verdict on {{{{ text }}}}:"
    choices: [qqq, w, kz]
    choice_mode: score
    length_normalized: true
    logprobs: true
  - id: vote
    kind: python
    function: weighted_vote
    args:
      - "{{{{ [greedy.output[0], scored.output, normalized.output[0]] }}}}"
      - "{{{{ [greedy.confidence, scored.confidence, normalized.confidence] }}}}"
    pure: true
  - id: explain
    kind: llm
    model: t
    prompt: "{{{{ text }}}}: {{{{ scored.output }}}} at {{{{ scored.probabilities.q | round(1) }}}}"
    max_tokens: 3
outputs:
  g: greedy.output
  gc: greedy.confidence
  glp: greedy.logprobs
  s: scored.output
  sc: scored.confidence
  sp: scored.probabilities
  ss: scored.scores
  n: normalized.output
  nc: normalized.confidence
  ns: normalized.scores
  nlp: normalized.logprobs
  vote: vote.output
  explain: explain.output
"""
ROWS = [{"text": "the cat"}, {"text": "a bin"}, {"text": "the cat"}, {"text": "an ox"}]
FLOATS = ("gc", "glp", "sc", "sp", "ss", "nc", "ns", "nlp")


def weighted_vote(letters: list[str], weights: list[float]) -> str:
    """The letter with the most confidence summed over the judges that chose it (first on a tie)."""
    total: dict[str, float] = {}
    for letter, weight in zip(letters, weights, strict=True):
        total[letter] = total.get(letter, 0.0) + weight
    return max(total, key=lambda k: (total[k], -letters.index(k)))


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_gguf(tmp_path_factory.mktemp("tiny") / "tiny.gguf", seed=3)


def _workflow(tmp_path: Path, model: Path, text: str) -> Workflow:
    path = tmp_path / "wf.yaml"
    path.write_text(text.format(model=model))
    return Workflow.from_yaml(path, functions={"weighted_vote": weighted_vote})


def _same(a: list[dict[str, Any]], b: list[dict[str, Any]], floats: tuple[str, ...]) -> None:
    """Equal rows: exactly, but for float fields (batched fp32 logits), which are equal to rounding."""
    assert [{k: v for k, v in row.items() if k not in floats} for row in a] == [
        {k: v for k, v in row.items() if k not in floats} for row in b
    ]
    for x, y in zip(a, b, strict=True):
        for key in floats:
            assert _close(x[key], y[key]), key


def _close(x: Any, y: Any) -> bool:
    if isinstance(x, dict):
        return x.keys() == y.keys() and all(_close(x[k], y[k]) for k in x)
    if isinstance(x, list):
        return len(x) == len(y) and all(_close(a, b) for a, b in zip(x, y, strict=True))
    return x == pytest.approx(y, abs=1e-5)


def test_scored_and_confident_judges_agree_on_every_path(tmp_path: Path, model: Path):
    with halo.compile(_workflow(tmp_path, model, JUDGES)) as app:
        planned = app.run(ROWS)
        runs = {name: run_system(name, app, ROWS) for name in ("serial", "per-call", "opwise")}
    assert planned.errors == []
    for name, run in runs.items():
        assert run.errors == {}, name
        _same(planned.outputs, run.outputs, FLOATS)
    assert planned.outputs[0] == planned.outputs[2]  # equal rows
    for out in planned.outputs:
        # score mode: output is the argmax option; probabilities are the softmax of the scores over the
        # options (plain sums here, one token each); confidence is the chosen option's probability
        probs, scores = out["sp"], out["ss"]
        assert list(probs) == list(scores) == ["q", "w", "k"]
        assert out["s"] == max(scores, key=scores.__getitem__) and out["sc"] == probs[out["s"]]
        assert sum(probs.values()) == pytest.approx(1.0)
        denominator = math.fsum(math.exp(v) for v in scores.values())
        assert all(probs[k] == pytest.approx(math.exp(scores[k]) / denominator) for k in probs)
        # greedy mode: confidence = exp(sum of the chosen tokens' masked logprobs); the second token of
        # each option is forced by the grammar (jump-forward: logprob 0.0, probability 1), so it is the
        # first token's probability renormalised over the options' first tokens, which is exactly the
        # scored probability of that first letter: greedy and scoring agree under the mask
        assert out["g"] in ("qx", "wy", "kz") and len(out["glp"]) == 2 and out["glp"][1] == 0.0
        assert out["gc"] == pytest.approx(math.exp(math.fsum(out["glp"]))) and 0.0 < out["gc"] <= 1.0
        assert out["gc"] == pytest.approx(probs[out["g"][0]], abs=1e-5)
        assert out["g"][0] == out["s"]
        # length_normalized: scores are mean token logprobs; logprobs are the chosen option's tokens'
        assert out["n"] == max(out["ns"], key=out["ns"].__getitem__)
        assert len(out["nlp"]) == {"qqq": 3, "w": 1, "kz": 2}[out["n"]]
        assert out["ns"][out["n"]] == pytest.approx(math.fsum(out["nlp"]) / len(out["nlp"]))
        assert out["vote"] == weighted_vote([out["g"][0], out["s"], out["n"][0]], [out["gc"], out["sc"], out["nc"]])
    assert planned.stats.llm_calls_executed < planned.stats.llm_calls_logical  # equal rows coalesce


SAMPLED = """\
name: sampled
models:
  t: {{source: {model}, dtype: fp32}}
inputs: [text]
nodes:
  - id: many
    kind: llm
    model: t
    prompt: "Guess {{{{ text }}}}:"
    temperature: 0.9
    seed: 11
    n: 3
    max_tokens: 5
  - id: one
    kind: llm
    model: t
    prompt: "Guess {{{{ text }}}}:"
    temperature: 0.9
    seed: 11
    max_tokens: 5
  - id: next
    kind: llm
    model: t
    prompt: "Guess {{{{ text }}}}:"
    temperature: 0.9
    seed: 13
    max_tokens: 5
  - id: picks
    kind: llm
    model: t
    prompt: "Pick for {{{{ text }}}} after {{{{ many.output | join(',') }}}}:"
    choices: [qx, wy, kz]
    temperature: 1.5
    seed: 5
    n: 4
    logprobs: true
    max_tokens: 4
  - id: docs
    kind: llm
    model: t
    prompt: "Doc {{{{ text }}}}:"
    json_schema: {{type: object, properties: {{v: {{type: string, pattern: "^[a-z]{{1,3}}$"}}}}, required: [v],
                  additionalProperties: false}}
    temperature: 1.0
    seed: 2
    n: 2
    max_tokens: 30
outputs: {{many: many.output, many_text: many.text, one: one.output, next: next.output, picks: picks.output,
           conf: picks.confidence, lps: picks.logprobs, docs: docs.output, vs: docs.json}}
"""


def test_a_node_of_n_samples_is_one_call_of_n_seeded_samples_on_every_path(tmp_path: Path, model: Path):
    with halo.compile(_workflow(tmp_path, model, SAMPLED)) as app:
        planned = app.run(ROWS)
        runs = {name: run_system(name, app, ROWS) for name in ("serial", "per-call", "opwise")}
    assert planned.errors == []
    for name, run in runs.items():
        assert run.errors == {}, name
        _same(planned.outputs, run.outputs, ("conf", "lps"))
    for out in planned.outputs:
        # output and text are lists of n, in seed order: sample i is what an n: 1 node seeded 11 + i draws;
        # the n: 1 node of the same request and seed is a call of its own, never merged with sample 0's
        assert isinstance(out["many"], list) and len(out["many"]) == 3 and out["many"] == out["many_text"]
        assert out["many"][0] == out["one"] and out["many"][2] == out["next"]
        assert len(out["picks"]) == len(out["conf"]) == len(out["lps"]) == 4
        assert all(p in ("qx", "wy", "kz") for p in out["picks"])
        for confidence, logprobs in zip(out["conf"], out["lps"], strict=True):
            assert confidence == pytest.approx(math.exp(math.fsum(logprobs))) and 0.0 < confidence <= 1.0
        assert out["docs"] == out["vs"] and len(out["docs"]) == 2
        assert all(set(doc) == {"v"} and len(doc["v"]) <= 3 for doc in out["docs"])
    assert planned.outputs[0] == planned.outputs[2]  # seeded, so pure: equal rows run once
    graph = app.graph
    assert {n.id: n.spec.pure for n in graph.nodes}["many"]


CUT = """\
name: cut
models:
  t: {{source: {model}, dtype: fp32}}
inputs: [text]
nodes:
  - id: docs
    kind: llm
    model: t
    prompt: "Doc {{{{ text }}}}:"
    json_schema: {{type: object, properties: {{v: {{type: string}}}}, required: [v]}}
    temperature: 1.0
    seed: 2
    n: 2
    max_tokens: 3
    {policy}
outputs: {{docs: docs.output, text: docs.text}}
"""


@pytest.mark.parametrize("policy", ["on_error: fail_row", "on_error: default\n    fallback: []"])
def test_a_cut_sample_fails_the_node_alike_on_every_path(tmp_path: Path, model: Path, policy: str):
    with halo.compile(_workflow(tmp_path, model, CUT.replace("{policy}", policy))) as app:
        planned = app.run(ROWS[:2])
        runs = {name: run_system(name, app, ROWS[:2]) for name in ("serial", "per-call", "opwise")}
    for name, run in runs.items():
        assert run.outputs == planned.outputs, name
        assert run.errors == {e.row: e.node for e in planned.errors}, name
    if "fail_row" in policy:
        assert [e.message for e in planned.errors] == ["sample 0 of 2: json output truncated at max_tokens=3"] * 2
        assert planned.outputs == [{"docs": None, "text": None}] * 2
    else:
        assert planned.errors == [] and planned.outputs == [{"docs": [], "text": []}] * 2
