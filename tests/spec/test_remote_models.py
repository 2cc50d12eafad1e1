"""Validation of `source: openai` model declarations and of the llm nodes that use them: located errors."""

from __future__ import annotations

import pytest
from halo.spec import Workflow
from halo.spec.errors import SpecError

NODE = """inputs: [q]
nodes:
  - id: ask
    kind: llm
    model: big
    prompt: "{{ q }}"
outputs: {a: ask.output}
"""


def load(model: str, node: str = "") -> Workflow:
    return Workflow.from_yaml(f"name: t\nmodels:\n  big: {model}\n{NODE}{node}")


def test_a_full_declaration_loads() -> None:
    wf = load(
        "{source: openai, base_url: 'http://10.0.0.5:8000/v1/', model: llama-70b, api_key_env: MY_KEY,"
        " max_concurrency: 64, api: completions, timeout_s: 30, max_attempts: 3, tokenizer: smollm2-135m}"
    )
    spec = wf.spec.models["big"]
    assert (spec.base_url, spec.model, spec.max_concurrency, spec.api) == (
        "http://10.0.0.5:8000/v1",
        "llama-70b",
        64,
        "completions",
    )
    assert wf.graph.model_source(wf.graph.node("ask")) == "openai:big"
    assert Workflow.from_yaml(wf.to_yaml()) == wf  # round trip (a dumped spec sets every field)


@pytest.mark.parametrize(
    ("model", "message"),
    [
        ("{source: openai, model: m}", "line 3: invalid 'models.big': a source: openai model needs 'base_url'"),
        (
            "{source: openai, base_url: 'http://h/v1'}",
            "line 3: invalid 'models.big': a source: openai model needs 'model'",
        ),
        (
            "{source: openai, base_url: 'ftp://h/v1', model: m}",
            "models.big.base_url': 'ftp://h/v1' is not an endpoint URL",
        ),
        ("{source: openai, base_url: 'http://:80/v1', model: m}", "is not an endpoint URL"),
        ("{source: openai, base_url: 'http://h:99999/v1', model: m}", "has an invalid port"),
        (
            "{source: openai, base_url: 'http://h/v1', model: m, api_key_env: 'MY-KEY'}",
            "not an environment variable name",
        ),
        ("{source: openai, base_url: 'http://h/v1', model: m, max_concurrency: 0}", "models.big.max_concurrency"),
        ("{source: openai, base_url: 'http://h/v1', model: m, api: grpc}", "models.big.api"),
        (
            "{source: openai, base_url: 'http://h/v1', model: m, dtype: fp32}",
            "'dtype' and 'weights' are for local models",
        ),
        ("{source: smollm2-135m, base_url: 'http://h/v1'}", "'base_url' is for source: openai models only"),
    ],
)
def test_bad_declarations_are_located(model: str, message: str) -> None:
    with pytest.raises(SpecError) as caught:
        load(model)
    assert message in str(caught.value)


@pytest.mark.parametrize(
    ("field", "line", "message"),
    [
        ("    choices: ['y', 'n']\n", 10, "OpenAI requests carry no 'choices' constraint"),
        ("    regex: 'a+'\n", 10, "OpenAI requests carry no 'regex' constraint"),
        ("    logprobs: true\n", 10, "'logprobs' needs a local model"),
    ],
)
def test_nodes_asking_what_the_wire_cannot_carry_are_located(field: str, line: int, message: str) -> None:
    text = f"name: t\nmodels:\n  big: {{source: openai, base_url: 'http://h/v1', model: m}}\n{NODE}"
    text = text.replace('    prompt: "{{ q }}"\n', '    prompt: "{{ q }}"\n' + field)
    with pytest.raises(SpecError) as caught:
        Workflow.from_yaml(text)
    assert f"line {line}, node 'ask': model 'big' is remote (source: openai): " in str(caught.value)
    assert message in str(caught.value)


def test_json_schema_needs_the_chat_api() -> None:
    text = f"name: t\nmodels:\n  big: {{source: openai, base_url: 'http://h/v1', model: m, api: completions}}\n{NODE}"
    text = text.replace('    prompt: "{{ q }}"\n', '    prompt: "{{ q }}"\n    json_schema: {type: object}\n')
    with pytest.raises(SpecError, match="with api: completions, which takes no response_format"):
        Workflow.from_yaml(text)
