"""Requests and results of node instances: rendering at run time, llm jobs, fallbacks, row outputs.

Shared by the Processor and the serial baseline, so both build exactly the same requests and read
results the same way (the fidelity tests compare the two).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from halo.engine import OutputFormat, SamplingParams
from halo.plan.prompt_tokens import chat_messages
from halo.spec.errors import TemplateRenderError
from halo.spec.graph import GraphNode, OutputBinding, WorkflowGraph
from halo.spec.nodes import LlmNode
from halo.spec.structured_output import OutputCheck, check_output

SKIPPED = object()  # the result of an instance whose loop guard held


def render_values(wf: WorkflowGraph, node: GraphNode, row: Mapping[str, Any], results: Mapping[str, Any]) -> tuple:
    """The rendered slot values of one instance (raises TemplateRenderError naming this node)."""
    try:
        return wf.template(node).render(wf.context(node, row, results))
    except TemplateRenderError as exc:
        if exc.node != node.id:
            raise TemplateRenderError(node.id, exc.field, exc.detail) from exc
        raise


def llm_prompt(node: GraphNode, values: tuple) -> list[dict[str, str]]:
    assert isinstance(node.spec, LlmNode)
    return chat_messages(node.spec, values)


def output_format(spec: LlmNode) -> OutputFormat | None:
    """The node's structured output as the engine takes it (None: free text)."""
    if spec.choices is not None:
        return OutputFormat.of_choices(spec.choices)
    if spec.regex is not None:
        return OutputFormat.of_regex(spec.regex)
    if spec.json_schema is not None:
        return OutputFormat.of_json(spec.json_schema)
    return None


def sampling_params(node: GraphNode) -> SamplingParams:
    """The one place a node's request parameters are made (Processor, serial baseline, bench systems)."""
    spec = node.spec
    assert isinstance(spec, LlmNode)
    return SamplingParams(
        max_tokens=spec.max_tokens,
        temperature=spec.temperature,
        top_p=spec.top_p,
        seed=spec.seed,
        stop=spec.stop,
        output_format=output_format(spec),
        logprobs=0 if spec.logprobs else None,
    )


def llm_result(
    node: GraphNode,
    text: str,
    *,
    finish_reason: str | None = None,
    format_error: str | None = None,
    logprobs: Sequence[float] = (),
) -> dict[str, Any]:
    """An llm node's result: `output` and `text` are the text; with a json_schema `output` and `json`
    are the parsed document; with `logprobs: true`, `logprobs` are the generated tokens' log-probabilities.

    A structured output the engine reports incomplete (`format_error`, e.g. "json output truncated at
    max_tokens=64"), or that is not of the node's format, raises ValueError: the row's error, under the
    node's on_error. The text is checked here too, not only trusted, so a result from any engine (or
    one cut at `finish_reason` "length" by an engine that says no more) holds to the format.
    """
    spec = node.spec
    assert isinstance(spec, LlmNode)
    extra: dict[str, Any] = {"logprobs": list(logprobs)} if spec.logprobs else {}
    if not spec.structured:
        return {"output": text, "text": text, **extra}
    if format_error is not None:
        raise ValueError(format_error)
    check = OutputCheck(spec.choices, spec.regex, spec.json_schema)
    checked = check_output(check, text, finish_reason == "length", spec.max_tokens)
    if checked.error is not None:
        raise ValueError(checked.error)
    if spec.json_schema is not None:
        return {"output": checked.value, "json": checked.value, "text": text, **extra}
    return {"output": text, "text": text, **extra}


def fallback_result(node: GraphNode) -> dict[str, Any]:
    """What an instance yields when it fails under `on_error: default`: `fallback` as its output."""
    value = node.spec.fallback
    kind = node.kind
    if isinstance(node.spec, LlmNode):
        result = {"output": value, "text": "" if value is None else str(value)}
        if node.spec.json_schema is not None:
            result["json"] = value  # `fallback` stands for the parsed document
        if node.spec.logprobs:
            result["logprobs"] = []
        return result
    if kind == "sql":
        return {"output": value, "rows": value if isinstance(value, list) else [], "columns": []}
    if kind == "http":
        return {"output": value, "status": None, "json": None, "text": None, "headers": {}}
    if kind == "rule":
        return {"output": value, "matched": False}
    return {"output": value}


def row_outputs(wf: WorkflowGraph, row: Mapping[str, Any], results: Mapping[str, Any]) -> dict[str, Any]:
    """The workflow's `outputs` for one row; a value whose node did not run (failed, skipped) is None."""
    return {binding.name: output_value(binding, row, results) for binding in wf.outputs}


def output_value(binding: OutputBinding, row: Mapping[str, Any], results: Mapping[str, Any]) -> Any:
    if binding.input is not None:
        value: Any = row.get(binding.input)
    else:
        assert binding.binding is not None
        value = next((results[c] for c in binding.binding.candidates if c in results), None)
    for part in binding.path:
        if value is None:
            return None
        if isinstance(value, Mapping):
            value = value.get(part)
        elif isinstance(value, list | tuple) and part.lstrip("-").isdigit():
            index = int(part)
            value = value[index] if -len(value) <= index < len(value) else None
        else:
            value = getattr(value, part, None)
    return value
