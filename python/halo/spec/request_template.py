"""A node's request as templates: which fields are templated, and rendering them for one instance.

A node's *slots* are the template strings in its request: an llm's system and prompt, a sql node's
param values, an http node's url, params, headers and the string leaves of its json body, a python
node's string arguments, a rule's input. Rendering an instance fills every slot from a context of
row inputs and upstream node results; the rendered values, in slot order, are the instance's request.
An llm node's rendered system + prompt is bounded by `Limits.max_prompt_chars` before it reaches a
tokenizer.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from jinja2.sandbox import ImmutableSandboxedEnvironment

from halo.spec.errors import TemplateRenderError
from halo.spec.limits import DEFAULT_LIMITS
from halo.spec.nodes import (
    CONTROL_FIELDS,
    EXECUTION_FIELDS,
    AnyNode,
    HttpNode,
    LlmNode,
    PythonNode,
    ReduceNode,
    RuleNode,
    SqlNode,
)
from halo.spec.sandbox import BoundedEnvironment
from halo.spec.source_map import DocPath
from halo.spec.template import CompiledTemplate

SlotPath = tuple[str | int, ...]


def template_slots(spec: AnyNode) -> list[tuple[SlotPath, str, bool]]:
    """(path inside the node, template source, native) for every string the request templates.

    `native` slots keep a single expression's value (SQL params, python arguments, json bodies).
    """
    slots: list[tuple[SlotPath, str, bool]] = []
    if isinstance(spec, LlmNode):
        if spec.system is not None:
            slots.append((("system",), spec.system, False))
        slots.append((("prompt",), spec.prompt, False))
    elif isinstance(spec, SqlNode):
        _leaves(("params",), spec.params, True, slots)
    elif isinstance(spec, HttpNode):
        slots.append((("url",), spec.url, False))
        _leaves(("params",), spec.params, False, slots)
        _leaves(("headers",), spec.headers, False, slots)
        _leaves(("json",), spec.body, True, slots)
    elif isinstance(spec, PythonNode):
        _leaves(("args",), list(spec.args), True, slots)
        _leaves(("kwargs",), spec.kwargs, True, slots)
    elif isinstance(spec, RuleNode):
        slots.append((("input",), spec.input, False))
    elif isinstance(spec, ReduceNode):
        slots.append((("input",), spec.input, True))
    return slots


def control_slots(spec: AnyNode) -> list[tuple[SlotPath, str]]:
    """(path, expression) of the node's `when` and `foreach`: read before the request, never part of it.
    An expression may be written with or without its `{{ }}`."""
    return [((name,), expression_source(value)) for name in ("when", "foreach") if (value := getattr(spec, name))]


def expression_source(text: str) -> str:
    """`{{ x }}` for an expression written bare as `x`; a text already in braces as it is."""
    return text if text.strip().startswith("{{") else "{{ " + text + " }}"


def _leaves(path: SlotPath, value: Any, native: bool, out: list[tuple[SlotPath, str, bool]]) -> None:
    if isinstance(value, str):
        out.append((path, value, native))
    elif isinstance(value, Mapping):
        for key, item in value.items():
            _leaves(path + (str(key),), item, native, out)
    elif isinstance(value, list | tuple):
        for index, item in enumerate(value):
            _leaves(path + (index,), item, native, out)


class RequestTemplate:
    """Every slot of one declared node, compiled once; shared by all its instances and iterations."""

    def __init__(self, env: ImmutableSandboxedEnvironment, node_id: str, spec: AnyNode) -> None:
        self.spec = spec
        self.node_id = node_id
        self.slots: list[tuple[SlotPath, CompiledTemplate, bool]] = [
            (path, CompiledTemplate(env, node_id, ".".join(map(str, path)), source), native)
            for path, source, native in template_slots(spec)
        ]
        limits = env.limits if isinstance(env, BoundedEnvironment) else DEFAULT_LIMITS
        self._max_prompt_chars = limits.max_prompt_chars if isinstance(spec, LlmNode) else None

    def render(self, context: Mapping[str, Any]) -> tuple[Any, ...]:
        """The rendered value of every slot, in slot order (raises TemplateRenderError)."""
        values = tuple(
            template.evaluate(context) if native else template.render(context) for _, template, native in self.slots
        )
        if self._max_prompt_chars is not None:
            # An llm node's slots are its system and prompt, both text.
            size = sum(len(value) for value in values)
            if size > self._max_prompt_chars:
                field = ".".join(map(str, self.slots[-1][0]))
                detail = (
                    f"rendered prompt is {size} characters (system and prompt), above the limit of "
                    f"{self._max_prompt_chars} (Limits.max_prompt_chars)"
                )
                raise TemplateRenderError(self.node_id, field, detail)
        return values

    def request(self, values: tuple[Any, ...]) -> dict[str, Any]:
        """The structured request: the node's request fields with each slot replaced by its value."""
        fields = _request_fields(self.spec)
        for (path, _, _), value in zip(self.slots, values, strict=True):
            _assign(fields, path, value)
        return fields


def _request_fields(spec: AnyNode) -> dict[str, Any]:
    data = spec.model_dump(
        by_alias=True, exclude={"id", "after", "description", "sql", "http", "pure", *EXECUTION_FIELDS, *CONTROL_FIELDS}
    )
    if "args" in data:
        data["args"] = list(data["args"])
    return data


def _assign(target: Any, path: DocPath, value: Any) -> None:
    for part in path[:-1]:
        target = target[part]
    target[path[-1]] = value
