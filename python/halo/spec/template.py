"""Sandboxed Jinja templates: compile, find what they reference, render with node-aware errors.

Every template is rendered by an `ImmutableSandboxedEnvironment` (no attribute escapes such as
`__class__`, no mutation of passed values, no file access since it has no loader) with
`StrictUndefined`, so a missing variable is an error naming the node and the variable.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from jinja2 import StrictUndefined, Template, TemplateError, Undefined, meta, nodes
from jinja2.runtime import Context
from jinja2.sandbox import ImmutableSandboxedEnvironment, SecurityError

from halo.spec.errors import TemplateRenderError

DYNAMIC_FIELD = "*"
"""Field of a reference made through a computed subscript (`node[key]`): unknown until run time."""

_SINGLE_EXPRESSION = re.compile(r"^\s*\{\{(?P<expr>(?:(?!\{\{|\}\}|\{%|%\}).)*)\}\}\s*$", re.DOTALL)


def make_environment() -> ImmutableSandboxedEnvironment:
    """A fresh sandboxed environment (one per workflow: environments cache compiled templates)."""
    return ImmutableSandboxedEnvironment(undefined=StrictUndefined, autoescape=False, keep_trailing_newline=True)


def is_template(text: str) -> bool:
    return "{{" in text or "{%" in text or "{#" in text


@dataclass(frozen=True, order=True)
class Reference:
    """A free name a template reads, with the first attribute read from it (None when read bare)."""

    name: str
    field: str | None = None


def template_references(env: ImmutableSandboxedEnvironment, source: str) -> frozenset[Reference]:
    """The free names `source` reads and their first attribute; raises jinja2.TemplateSyntaxError.

    `{{ history.rows[0].n }}` yields Reference("history", "rows"); `{{ ticket }}` Reference("ticket").
    A name bound inside the template (`{% set %}`, `{% for %}`) is not free and is not reported.
    """
    tree = env.parse(source)
    free = meta.find_undeclared_variables(tree)
    found: set[Reference] = set()
    _collect(tree, free, found)
    return frozenset(found)


def expression_references(env: ImmutableSandboxedEnvironment, expression: str) -> frozenset[Reference]:
    return template_references(env, "{{ (" + expression + ") }}")


def _collect(node: nodes.Node, free: set[str], found: set[Reference]) -> None:
    if isinstance(node, nodes.Getattr) and isinstance(node.node, nodes.Name) and node.node.name in free:
        found.add(Reference(node.node.name, node.attr))
        return
    if isinstance(node, nodes.Getitem) and isinstance(node.node, nodes.Name) and node.node.name in free:
        key = node.arg
        field = key.value if isinstance(key, nodes.Const) and isinstance(key.value, str) else DYNAMIC_FIELD
        found.add(Reference(node.node.name, field))
        if field == DYNAMIC_FIELD:
            _collect(key, free, found)
        return
    if isinstance(node, nodes.Name) and node.ctx == "load" and node.name in free:
        found.add(Reference(node.name, None))
        return
    for child in node.iter_child_nodes():
        _collect(child, free, found)


class CompiledTemplate:
    """One template slot of a node (e.g. its prompt), compiled once and rendered per instance.

    A slot written as a single `{{ expression }}` keeps the expression's native value when
    evaluated (so a SQL parameter stays an int and a python argument stays a list); any other slot,
    and every slot rendered as text, is a string.
    """

    def __init__(self, env: ImmutableSandboxedEnvironment, node: str, field: str, source: str) -> None:
        self.node = node
        self.field = field
        self.source = source
        self.constant = not is_template(source)
        self._template = None if self.constant else env.from_string(source)
        match = _SINGLE_EXPRESSION.match(source)
        # An expression compiles to a template that stores its value in the context as `result`.
        self._expression = env.from_string("{% set result = " + match.group("expr") + " %}") if match else None
        # Globals (range, namespace, ...) merged once: Template.render re-merges them on every call,
        # which costs more than rendering a short prompt.
        self._globals = dict(self._template.globals) if self._template is not None else {}
        self._concat = env.concat
        self._env = env

    def render(self, context: Mapping[str, Any]) -> str:
        if self._template is None:
            return self.source
        template = self._template
        try:
            ctx = self._context(template, context)
            return self._concat(template.root_render_func(ctx))
        except (TemplateError, SecurityError, TypeError, ValueError) as exc:
            raise TemplateRenderError(self.node, self.field, _describe(exc)) from exc

    def evaluate(self, context: Mapping[str, Any]) -> Any:
        if self._expression is None:
            return self.render(context)
        expression = self._expression
        try:
            ctx = self._context(expression, context)
            for _ in expression.root_render_func(ctx):
                pass
            value = ctx.vars["result"]
            if isinstance(value, Undefined):
                str(value)  # raises UndefinedError with Jinja's own description of what is missing
        except (TemplateError, SecurityError, TypeError, ValueError) as exc:
            raise TemplateRenderError(self.node, self.field, _describe(exc)) from exc
        return value

    def _context(self, template: Template, values: Mapping[str, Any]) -> Context:
        # What Template.new_context builds, minus re-reading the globals ChainMap on every call.
        return self._env.context_class(self._env, {**self._globals, **values}, template.name, template.blocks)


def _describe(exc: Exception) -> str:
    if isinstance(exc, SecurityError):
        return f"unsafe operation blocked by the sandbox: {exc}"
    return f"{type(exc).__name__}: {exc}"
