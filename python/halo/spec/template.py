"""Sandboxed Jinja templates: compile, find what they reference, render with node-aware errors.

Every template is rendered by a `BoundedEnvironment` (`halo.spec.sandbox`: Jinja's immutable
sandbox, so no attribute escapes such as `__class__`, no mutation of passed values, no file access
since it has no loader; plus bounds on render size and time) with `StrictUndefined`, so a missing
variable is an error naming the node and the variable. Any failure while rendering (a bound, a
`range` over 100,000 items, a recursive macro, a division by zero) is a `TemplateRenderError`;
a template nested deeper than `Limits.max_template_depth` is a syntax error at load.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from jinja2 import Template, TemplateSyntaxError, Undefined, meta, nodes
from jinja2.runtime import Context
from jinja2.sandbox import ImmutableSandboxedEnvironment, SecurityError

from halo.spec.errors import TemplateRenderError
from halo.spec.limits import DEFAULT_LIMITS, Limits
from halo.spec.sandbox import BoundedEnvironment, RenderBoundError

DYNAMIC_FIELD = "*"
"""Field of a reference made through a computed subscript (`node[key]`): unknown until run time."""

_SINGLE_EXPRESSION = re.compile(r"^\s*\{\{(?P<expr>(?:(?!\{\{|\}\}|\{%|%\}).)*)\}\}\s*$", re.DOTALL)


_OPENING_TAGS = frozenset({"for", "if", "macro", "call", "filter", "with", "block", "autoescape"})


def make_environment(limits: Limits = DEFAULT_LIMITS) -> BoundedEnvironment:
    """A fresh sandboxed environment (one per workflow: environments cache compiled templates)."""
    return BoundedEnvironment(limits)


def is_single_expression(text: str) -> bool:
    """True for a template that is one `{{ expression }}` and nothing else (it evaluates to a value)."""
    return _SINGLE_EXPRESSION.match(text) is not None


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
    limit = env.limits.max_template_depth if isinstance(env, BoundedEnvironment) else DEFAULT_LIMITS.max_template_depth
    _check_nesting(env, source, limit)
    try:
        tree = env.parse(source)
        free = meta.find_undeclared_variables(tree)
        found: set[Reference] = set()
        _collect(tree, free, found)
    except (RecursionError, MemoryError):
        # Long operator chains (`a+a+...+a`) nest the syntax tree without brackets.
        raise TemplateSyntaxError("template too deeply nested to compile (long operator chain?)", 1) from None
    return frozenset(found)


def _check_nesting(env: ImmutableSandboxedEnvironment, source: str, limit: int) -> None:
    """Raise TemplateSyntaxError at the line where brackets and block tags nest deeper than `limit`.

    Checked on tokens, before parsing: Jinja's parser and compiler recurse once per level (a
    3,000-deep `((((x))))` is a RecursionError) and Python compiles at most 20 nested loops.
    """
    if sum(source.count(c) for c in "([{") <= limit:
        return  # cannot nest deeper than it has openers; skip the lexer for ordinary prompts
    depth = 0
    tag: list[str] | None = None  # the names and operators of the block tag being read
    try:
        for lineno, kind, value in env.lex(source):
            if kind == "block_begin":
                tag = []
            elif kind == "block_end" and tag is not None:
                name = tag[0] if tag else ""
                if name.startswith("end"):
                    depth -= 1
                elif name in _OPENING_TAGS or (name == "set" and "=" not in tag):
                    depth += 1
                tag = None
            elif kind == "operator" and value in "([{":
                depth += 1
            elif kind == "operator" and value in ")]}":
                depth -= 1
            if kind in ("name", "operator") and tag is not None:
                tag.append(value)
            if depth > limit:
                raise TemplateSyntaxError(
                    f"template nested deeper than {limit} levels of brackets and blocks (Limits.max_template_depth)",
                    lineno,
                )
    except TemplateSyntaxError as exc:
        if "Limits.max_template_depth" in exc.message:
            raise
        # A lexing error: the parser reports it with its own message.


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
        match = _SINGLE_EXPRESSION.match(source)
        try:
            self._template = None if self.constant else env.from_string(source)
            # An expression compiles to a template that stores its value in the context as `result`.
            self._expression = env.from_string("{% set result = " + match.group("expr") + " %}") if match else None
        except (RecursionError, MemoryError, SyntaxError) as exc:
            # Validation refuses templates nested past Limits.max_template_depth; this is the
            # backstop for a raised limit Python's own compiler cannot follow.
            raise TemplateRenderError(node, field, f"template cannot be compiled: {_describe(exc)}") from None
        # Globals (range, namespace, ...) merged once: Template.render re-merges them on every call,
        # which costs more than rendering a short prompt.
        self._globals = dict(self._template.globals) if self._template is not None else {}
        self._env = env
        self._bounded = env if isinstance(env, BoundedEnvironment) else None

    def render(self, context: Mapping[str, Any]) -> str:
        if self._template is None:
            return self.source
        template = self._template
        try:
            ctx = self._context(template, context)
            bounded = self._bounded
            if bounded is None:
                return "".join(template.root_render_func(ctx))
            # Invariant: the text kept so far is within max_render_chars. (Time needs no check here:
            # output beyond the template's own text comes from loops, which check the deadline.)
            limit = bounded.limits.max_render_chars
            size = 0
            parts: list[str] = []
            for chunk in template.root_render_func(ctx):
                size += len(chunk)
                if size > limit:
                    bounded.check_size(size, "the rendered text")
                parts.append(chunk)
            return "".join(parts)
        except Exception as exc:  # noqa: BLE001 - the template is user code: every failure is theirs, located
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
        except Exception as exc:  # noqa: BLE001 - the template is user code: every failure is theirs, located
            raise TemplateRenderError(self.node, self.field, _describe(exc)) from exc
        return value

    def _context(self, template: Template, values: Mapping[str, Any]) -> Context:
        # What Template.new_context builds, minus re-reading the globals ChainMap on every call.
        context = self._env.context_class(self._env, {**self._globals, **values}, template.name, template.blocks)
        if self._bounded is not None:
            self._bounded.start(context)  # type: ignore[arg-type]
        return context


def _describe(exc: Exception) -> str:
    if isinstance(exc, SecurityError):
        return f"unsafe operation blocked by the sandbox: {exc}"
    if isinstance(exc, RenderBoundError):
        return str(exc)
    if isinstance(exc, OverflowError) and "MAX_RANGE" in str(exc):
        return f"range too big: {exc}"
    if isinstance(exc, RecursionError):
        return "recursion too deep (a macro or recursive loop calling itself without end?)"
    if isinstance(exc, MemoryError):
        return "out of memory while rendering"
    return f"{type(exc).__name__}: {exc}"
