"""Structured llm nodes at run time: the node's format reaches the engine in every path, equal prompts
with different formats are never merged, json fields are read downstream and in outputs, and a cut
or mismatching output is a row error under the node's on_error.

The end-to-end runs use the tiny GGUF model (tests/tiny_gguf.py, random weights, fp32 greedy): what is
under test is the plumbing and the engine's enforcement, not the answers.
"""

from __future__ import annotations

import json
import re
import textwrap
from pathlib import Path

import halo
import pytest
from halo.engine import OutputFormat
from halo.plan import WhitespaceTokenizer, consolidate
from halo.runtime.node_io import fallback_result, llm_result, sampling_params
from halo.spec import Workflow
from tiny_gguf import write_tiny_gguf

SCHEMA = {
    "type": "object",
    "properties": {"vendor": {"type": "string", "maxLength": 6}},
    "required": ["vendor"],
    "additionalProperties": False,
}
CHOICES = ["billing", "bug", "other"]


def _formats() -> Workflow:
    return (
        Workflow("formats")
        .inputs("t")
        .llm("free", prompt="{{ t }}")
        .llm("pick", prompt="{{ t }}", choices=["x", "y"])
        .llm("pick_other", prompt="{{ t }}", choices=["x", "z"])
        .llm("pick_again", prompt="{{ t }}", choices=["x", "y"])
        .llm("code", prompt="{{ t }}", regex="[0-9]+")
        .llm("doc", prompt="{{ t }}", json_schema=SCHEMA)
        .outputs(a="free.output")
    )


def test_sampling_params_carry_the_nodes_format():
    graph = _formats().graph
    formats = {n.id: sampling_params(n).output_format for n in graph.nodes}
    assert formats == {
        "free": None,
        "pick": OutputFormat.of_choices(["x", "y"]),
        "pick_other": OutputFormat.of_choices(["x", "z"]),
        "pick_again": OutputFormat.of_choices(["x", "y"]),
        "code": OutputFormat.of_regex("[0-9]+"),
        "doc": OutputFormat.of_json(SCHEMA),
    }
    # The in-flight coalescing key holds the params: different formats never share a request.
    assert sampling_params(graph.node("pick")) != sampling_params(graph.node("pick_other"))


def test_equal_prompts_with_different_formats_are_never_merged():
    wf = _formats()
    graph = consolidate(wf, [{"t": "same"}, {"t": "same"}], WhitespaceTokenizer())
    physical = {node_id: ids for node_id, ids in graph.assignment.items()}
    assert all(len(set(ids)) == 1 for ids in physical.values())  # equal rows: one call per node
    # Only the node that repeats pick's request exactly shares pick's call; every other format has its own.
    assert physical["pick_again"] == physical["pick"]
    others = [physical[n][0] for n in ("free", "pick", "pick_other", "code", "doc")]
    assert len(set(others)) == 5


def test_llm_result_holds_the_text_to_the_format():
    graph = _formats().graph
    doc, pick = graph.node("doc"), graph.node("pick")
    assert llm_result(doc, '{"vendor": "ACME"}', finish_reason="stop") == {
        "output": {"vendor": "ACME"},
        "json": {"vendor": "ACME"},
        "text": '{"vendor": "ACME"}',
    }
    assert llm_result(pick, "y", finish_reason="stop") == {"output": "y", "text": "y"}
    with pytest.raises(ValueError, match=r"^json output truncated at max_tokens=256: '\{\"vend'$"):
        llm_result(doc, '{"vend', finish_reason="length")
    with pytest.raises(ValueError, match="is not one of the choices 'x', 'y'"):
        llm_result(pick, "maybe", finish_reason="stop")
    assert fallback_result(doc) == {"output": None, "json": None, "text": ""}
    assert fallback_result(pick) == {"output": None, "text": ""}


WORKFLOW = """\
name: structured
models:
  t: {{source: {model}, dtype: fp32}}
inputs: [text]
nodes:
  - id: extract
    kind: llm
    model: t
    prompt: "Invoice: {{{{ text }}}}"
    json_schema: {schema}
    max_tokens: 40
  - id: kind
    kind: llm
    model: t
    prompt: "{{{{ text }}}} from {{{{ extract.json.vendor }}}}"
    choices: {choices}
    max_tokens: 12
    logprobs: true
  - id: code
    kind: llm
    model: t
    prompt: "Code for {{{{ text }}}}"
    regex: "[0-9]{{3}}"
    max_tokens: 8
outputs: {{vendor: extract.json.vendor, doc: extract.json, kind: kind.output, lp: kind.logprobs, code: code.output}}
"""
ROWS = [{"text": "the cat"}, {"text": "the hat"}, {"text": "the cat"}, {"text": "a bin"}]


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_gguf(tmp_path_factory.mktemp("tiny") / "tiny.gguf", seed=3)


def _workflow(tmp_path: Path, model: Path, text: str = WORKFLOW) -> Path:
    path = tmp_path / "wf.yaml"
    path.write_text(text.format(model=model, schema=json.dumps(SCHEMA), choices=json.dumps(CHOICES)))
    return path


def test_an_optimized_run_with_structured_nodes_equals_the_serial_run(tmp_path: Path, model: Path):
    with halo.compile(_workflow(tmp_path, model)) as app:
        planned = app.run(ROWS)
        serial = app.run(ROWS, plan="serial")
    assert planned.errors == serial.errors == []
    # Log-probabilities come from batched fp32 logits: equal to rounding, everything else exactly.
    assert [{**o, "lp": None} for o in planned.outputs] == [{**o, "lp": None} for o in serial.outputs]
    for a, b in zip(planned.outputs, serial.outputs, strict=True):
        assert a["lp"] == pytest.approx(b["lp"], abs=1e-5)
    for out in planned.outputs:
        assert out["vendor"] == out["doc"]["vendor"] and set(out["doc"]) == {"vendor"}
        assert out["kind"] in CHOICES
        assert out["lp"] and all(isinstance(lp, float) and lp <= 0.0 for lp in out["lp"])  # one per token
        assert re.fullmatch("[0-9]{3}", out["code"])
    assert planned.outputs[0] == planned.outputs[2]  # equal rows


TRUNCATED = """\
name: cut
models:
  t: {{source: {model}, dtype: fp32}}
inputs: [text]
nodes:
  - id: extract
    kind: llm
    model: t
    prompt: "Invoice: {{{{ text }}}}"
    json_schema: {schema}
    max_tokens: 3
    {policy}
outputs: {{vendor: extract.json.vendor, doc: extract.output}}
"""


@pytest.mark.parametrize("plan", ["dp", "serial"])
def test_a_json_output_cut_at_max_tokens_fails_its_row(tmp_path: Path, model: Path, plan: str):
    text = TRUNCATED.replace("{policy}", "on_error: fail_row")
    with halo.compile(_workflow(tmp_path, model, text), plan=plan) as app:
        result = app.run(ROWS[:2])
    assert [(e.row, e.node) for e in result.errors] == [(0, "extract"), (1, "extract")]
    assert [e.message for e in result.errors] == ["json output truncated at max_tokens=3"] * 2
    assert result.outputs == [{"vendor": None, "doc": None}] * 2  # never half a document


@pytest.mark.parametrize("plan", ["dp", "serial"])
def test_on_error_default_yields_the_fallback_document(tmp_path: Path, model: Path, plan: str):
    policy = 'on_error: default\n    fallback: {{vendor: "unknown"}}'
    with halo.compile(_workflow(tmp_path, model, TRUNCATED.replace("{policy}", policy)), plan=plan) as app:
        result = app.run(ROWS[:2])
    assert result.errors == []
    assert result.outputs == [{"vendor": "unknown", "doc": {"vendor": "unknown"}}] * 2


@pytest.mark.parametrize("plan", ["dp", "serial"])
def test_on_error_retry_tries_again_then_fails_the_row(tmp_path: Path, model: Path, plan: str):
    policy = "on_error: retry\n    retries: 2"
    with halo.compile(_workflow(tmp_path, model, TRUNCATED.replace("{policy}", policy)), plan=plan) as app:
        result = app.run(ROWS[:1])
    [error] = result.errors
    assert error.node == "extract" and error.message.startswith("json output truncated at max_tokens=3")
    assert result.stats.llm_calls_executed == 3  # the first attempt and two retries (greedy: the same cut)


def test_a_schema_file_beside_the_workflow_is_used_at_run_time(tmp_path: Path, model: Path):
    (tmp_path / "vendor.json").write_text(json.dumps(SCHEMA))
    text = textwrap.dedent("""\
        name: file
        models:
          t: {{source: {model}, dtype: fp32}}
        inputs: [text]
        nodes:
          - {{id: extract, kind: llm, model: t, prompt: "{{{{ text }}}}", json_schema: vendor.json, max_tokens: 40}}
        outputs: {{vendor: extract.json.vendor}}
        """)
    with halo.compile(_workflow(tmp_path, model, text)) as app:
        result = app.run(ROWS[:1])
    assert result.errors == [] and isinstance(result.outputs[0]["vendor"], str)
