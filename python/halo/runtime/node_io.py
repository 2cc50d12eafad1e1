"""Requests and results of node instances: rendering at run time, llm jobs, fallbacks, row outputs.

Shared by the Processor and the serial baseline, so both build exactly the same requests and read
results the same way (the fidelity tests compare the two).
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Any

from halo.engine import SamplingParams
from halo.plan.prompt_tokens import chat_messages
from halo.spec.errors import TemplateRenderError
from halo.spec.graph import GraphNode, OutputBinding, WorkflowGraph
from halo.spec.nodes import LlmNode

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


def sampling_params(node: GraphNode) -> SamplingParams:
    spec = node.spec
    assert isinstance(spec, LlmNode)
    return SamplingParams(
        max_tokens=spec.max_tokens, temperature=spec.temperature, top_p=spec.top_p, seed=spec.seed, stop=spec.stop
    )


def llm_result(node: GraphNode, text: str) -> dict[str, Any]:
    """An llm node's result; with a json_schema the output is the parsed JSON (ValueError if none)."""
    spec = node.spec
    assert isinstance(spec, LlmNode)
    if spec.json_schema is None:
        return {"output": text, "text": text}
    return {"output": parse_json_output(text), "text": text}


def parse_json_output(text: str) -> Any:
    """The first JSON value in a model's reply (models often wrap it in prose or code fences)."""
    decoder = json.JSONDecoder()
    for match in re.finditer(r"[\[{]", text):
        try:
            value, _ = decoder.raw_decode(text, match.start())
            return value
        except json.JSONDecodeError:
            continue
    raise ValueError(f"the reply contains no JSON value: {text[:80]!r}")


def fallback_result(node: GraphNode) -> dict[str, Any]:
    """What an instance yields when it fails under `on_error: default`: `fallback` as its output."""
    value = node.spec.fallback
    kind = node.kind
    if kind == "llm":
        return {"output": value, "text": "" if value is None else str(value)}
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
