"""`BoundedEnvironment`: Jinja's immutable sandbox plus bounds on what one render may build and take.

The sandbox already blocks attribute escapes and mutation and caps `range` at 100,000 items; it does
not bound time or size. Here (limits from `halo.spec.limits.Limits`):

- size: an operation that would build a string or list above `max_render_chars` is refused *before*
  it runs: repetition and concatenation (`'a' * 10**9`, `s + s`, `a ~ b`), huge powers, format
  widths (`'%0999999999d' % 1`), padding and replacing filters and methods (`center`, `replace`,
  `join`, ...); any other filter or call result above the bound is refused after it returns;
- time: every `{% for %}` iteration, call and intercepted operator checks the render's deadline
  (`max_render_seconds`), so loops that print nothing (`range(99999)` inside `range(99999)`) stop
  too; `CompiledTemplate` checks size and deadline between output chunks as well.

A refusal raises `RenderBoundError` (a jinja2 TemplateError), which `CompiledTemplate` turns into a
`TemplateRenderError` naming the node and the field. The deadline lives on the render's context
(`BoundedContext.deadline`), so one environment serves concurrent renders on many threads.
"""

from __future__ import annotations

import functools
import math
import re
import time
from collections.abc import Callable, Mapping
from string import Formatter
from typing import Any

from jinja2 import StrictUndefined, TemplateError, nodes
from jinja2.compiler import CodeGenerator, Frame
from jinja2.runtime import Context
from jinja2.sandbox import ImmutableSandboxedEnvironment
from jinja2.visitor import NodeTransformer

from halo.spec.limits import DEFAULT_LIMITS, Limits

_STR_GROWERS = frozenset({"center", "ljust", "rjust", "zfill", "expandtabs", "replace", "join"})
_WIDTH_FILTERS = {"center": 1, "indent": 1, "wordwrap": 1, "slice": 1}  # filter -> index of its size argument
_COPYING_FILTERS = frozenset({"join", "tojson", "pprint", "string", "list", "urlencode", "xmlattr", "replace"})
_NUMBER = re.compile(r"\d+")
_PERCENT_SPEC = re.compile(r"%(?:\([^)]*\))?[#0\- +]*(\*|\d*)(?:\.(\*|\d*))?[hlL]?[diouxXeEfFgGcrsa]")


class RenderBoundError(TemplateError):
    """A render went past one of its `Limits` (size or time)."""


class BoundedContext(Context):
    deadline: float = math.inf  # time.monotonic() past which this render stops; set per render


def measure(value: Any, budget: int) -> int:
    """About how many characters `value` renders to (strings and containers summed), counted up to `budget`."""
    if isinstance(value, str):
        return len(value)
    if isinstance(value, Mapping):
        value = [part for pair in value.items() for part in pair]
    if isinstance(value, list | tuple):
        total = len(value)
        for item in value:
            if total > budget:
                break
            total += measure(item, budget - total)
        return total
    return 1


class BoundedEnvironment(ImmutableSandboxedEnvironment):
    """The environment every workflow template compiles in (one per workflow: it caches templates)."""

    context_class = BoundedContext
    code_generator_class: type[CodeGenerator]  # _BoundedCodeGenerator, set below its definition
    intercepted_binops = frozenset({"*", "**", "+", "%"})

    def __init__(self, limits: Limits = DEFAULT_LIMITS) -> None:
        super().__init__(undefined=StrictUndefined, autoescape=False, keep_trailing_newline=True)
        self.limits = limits
        self.globals.pop("lipsum", None)  # lipsum(n=10**9) loops in Python; placeholder text has no use here
        self.filters = {name: self._bounded_filter(name, func) for name, func in self.filters.items()}

    # -- limits as used by CompiledTemplate ---------------------------------------------------------

    def start(self, context: BoundedContext) -> None:
        context.deadline = time.monotonic() + self.limits.max_render_seconds

    def check_deadline(self, context: Context) -> None:
        if time.monotonic() > getattr(context, "deadline", math.inf):
            raise RenderBoundError(
                f"rendering took longer than {self.limits.max_render_seconds} s (Limits.max_render_seconds)"
            )

    def check_size(self, size: int, what: str = "the result") -> None:
        if size > self.limits.max_render_chars:
            raise RenderBoundError(
                f"{what} would be {size} characters or more, above the limit of {self.limits.max_render_chars}"
                " (Limits.max_render_chars)"
            )

    # -- sandbox hooks ------------------------------------------------------------------------------

    def call_binop(self, context: Context, operator: str, left: Any, right: Any) -> Any:
        self.check_deadline(context)
        limit = self.limits.max_render_chars
        if operator == "*":
            sequence, count = (left, right) if _is_int(right) else (right, left)
            if isinstance(sequence, str | list | tuple) and _is_int(count) and count > 0:
                self.check_size(measure(sequence, limit // count + 1) * count, f"repeating a value {count} times")
            elif _is_int(left) and _is_int(right):
                self.check_size((abs(left).bit_length() + abs(right).bit_length()) // 3, "the product's digits")
        elif operator == "**" and _is_int(left) and _is_int(right) and right > 0 and abs(left) > 1:
            # A power's digits: about bit_length * exponent / 3.3; refuse before Python spends the time.
            self.check_size(abs(left).bit_length() * right // 3, "the power's digits")
        elif operator == "+" and isinstance(left, str | list | tuple) and isinstance(right, str | list | tuple):
            self.check_size(measure(left, limit) + measure(right, limit), "the concatenation")
        elif operator == "%" and isinstance(left, str):
            args = right if isinstance(right, tuple) else (right,)
            self._check_format(left, args, right if isinstance(right, Mapping) else {}, percent=True)
        return super().call_binop(context, operator, left, right)

    def call(__self, __context: Context, __obj: Any, *args: Any, **kwargs: Any) -> Any:  # noqa: N805 - Jinja's signature
        __self.check_deadline(__context)
        owner = getattr(__obj, "__self__", None)
        if isinstance(owner, str) and getattr(__obj, "__name__", None) in _STR_GROWERS:
            __self._check_str_method(owner, __obj.__name__, args, kwargs)
        result = super().call(__context, __obj, *args, **kwargs)
        if isinstance(result, str | list | tuple):
            __self.check_size(measure(result, __self.limits.max_render_chars), "a call's result")
        return result

    def wrap_str_format(self, value: Any) -> Callable[..., str] | None:
        wrapped = super().wrap_str_format(value)
        if wrapped is None:
            return None
        template: str = value.__self__

        def bounded_format(*args: Any, **kwargs: Any) -> str:
            mapping = args[0] if value.__name__ == "format_map" and args and isinstance(args[0], Mapping) else kwargs
            self._check_format(template, args, mapping, percent=False)
            return wrapped(*args, **kwargs)

        return bounded_format

    # -- callbacks the compiled templates call (see _Bounding) ---------------------------------------

    def bounded_iter(self, context: Context, iterable: Any) -> Any:
        """What every `{% for %}` iterates: the loop's items, checking the deadline before each."""
        deadline = getattr(context, "deadline", math.inf)
        for item in iterable:
            if time.monotonic() > deadline:
                self.check_deadline(context)
            yield item

    def bounded_concat(self, context: Context, *parts: Any) -> str:
        """`a ~ b ~ c`: Jinja's str_join, refused when the joined text would exceed the size bound."""
        limit = self.limits.max_render_chars
        size = 0
        for part in parts:
            size += len(part) if type(part) is str else measure(part, limit)
        if size > limit:
            self.check_size(size, "the concatenation")
        return "".join(map(str, parts))

    def _generate(
        self, source: nodes.Template, name: str | None, filename: str | None, defer_init: bool = False
    ) -> str:
        _Bounding().visit(source)
        source.set_environment(self)
        return super()._generate(source, name, filename, defer_init)

    # -- size estimates -----------------------------------------------------------------------------

    def _check_format(self, template: str, args: tuple[Any, ...], kwargs: Mapping[str, Any], percent: bool) -> None:
        """Refuse a format whose field widths or precisions (`%0999999999d`, `{:>{}}`) exceed the bound."""
        if percent:
            specs = [f"{width}.{precision}" for width, precision in _PERCENT_SPEC.findall(template)]
        else:
            specs = [spec for _, field, spec, _ in Formatter().parse(template) if field is not None and spec]
        widths = [int(digits) if len(digits) <= 12 else math.inf for spec in specs for digits in _NUMBER.findall(spec)]
        if any("*" in spec or "{" in spec for spec in specs):  # a width taken from the arguments
            widths += [abs(v) for v in (*args, *kwargs.values()) if _is_int(v)]
        budget = self.limits.max_render_chars
        values = sum(measure(v, budget) for v in (*args, *kwargs.values()))
        size = len(template) + values + (int(min(max(widths, default=0), budget + 1)) if widths else 0)
        self.check_size(size, "the formatted text")

    def _check_str_method(self, text: str, method: str, args: tuple[Any, ...], kwargs: Mapping[str, Any]) -> None:
        budget = self.limits.max_render_chars
        if method in ("center", "ljust", "rjust", "zfill"):
            width = args[0] if args else kwargs.get("width", 0)
            self.check_size(max(len(text), width if _is_int(width) else 0), f"str.{method}'s result")
        elif method == "expandtabs":
            size = args[0] if args else kwargs.get("tabsize", 8)
            self.check_size(len(text) + text.count("\t") * (size if _is_int(size) else 8), "str.expandtabs's result")
        elif method == "replace" and len(args) >= 2:
            self.check_size(_replaced_size(text, args[0], args[1]), "str.replace's result")
        elif method == "join" and args:
            items = args[0] if isinstance(args[0], list | tuple) else ()
            self.check_size(measure(list(items), budget) + len(text) * len(items), "str.join's result")

    def _bounded_filter(self, name: str, func: Callable[..., Any]) -> Callable[..., Any]:
        width_at = _WIDTH_FILTERS.get(name)
        offset = 1 if hasattr(func, "jinja_pass_arg") else 0  # the context, eval context or environment

        @functools.wraps(func)  # keeps jinja_pass_arg: pass_context / pass_eval_context filters stay so
        def bounded(*args: Any, **kwargs: Any) -> Any:
            values = args[offset:]
            budget = self.limits.max_render_chars
            if width_at is not None and len(values) > width_at and _is_int(values[width_at]):
                self.check_size(abs(values[width_at]), f"the '{name}' filter's width")
            if name in _COPYING_FILTERS and values:
                self.check_size(measure(values[0], budget), f"the '{name}' filter's result")
            if name == "replace" and len(values) >= 3 and isinstance(values[0], str):
                self.check_size(_replaced_size(values[0], values[1], values[2]), "the 'replace' filter's result")
            if name == "format" and values and isinstance(values[0], str):
                self._check_format(values[0], tuple(values[1:]), kwargs, percent=True)
            result = func(*args, **kwargs)
            if isinstance(result, str | list | tuple):
                self.check_size(measure(result, budget), f"the '{name}' filter's result")
            return result

        return bounded


_CALLBACKS = frozenset({"bounded_iter", "bounded_concat"})


class _BoundedCodeGenerator(CodeGenerator):
    """Compiles the callbacks _Bounding inserts as direct calls, not through the sandbox's `call`."""

    def visit_Call(self, node: nodes.Call, frame: Frame, forward_caller: bool = False) -> None:  # noqa: N802
        target = node.node
        if not (isinstance(target, nodes.EnvironmentAttribute) and target.name in _CALLBACKS):
            super().visit_Call(node, frame, forward_caller=forward_caller)
            return
        self.write(f"environment.{target.name}(context")  # the parser never makes an EnvironmentAttribute
        for arg in node.args:
            self.write(", ")
            self.visit(arg, frame)
        self.write(")")


BoundedEnvironment.code_generator_class = _BoundedCodeGenerator


class _Bounding(NodeTransformer):
    """Routes every `{% for %}` iterable and every `~` through the environment's bounded callbacks."""

    def visit_For(self, node: nodes.For) -> nodes.Node:  # noqa: N802 - NodeVisitor's naming
        self.generic_visit(node)
        node.iter = _callback("bounded_iter", [node.iter], node.lineno)
        return node

    def visit_Concat(self, node: nodes.Concat) -> nodes.Node:  # noqa: N802 - NodeVisitor's naming
        self.generic_visit(node)
        return _callback("bounded_concat", list(node.nodes), node.lineno)


def _callback(name: str, args: list[nodes.Expr], lineno: int) -> nodes.Call:
    target = nodes.EnvironmentAttribute(name, lineno=lineno)
    return nodes.Call(target, args, [], None, None, lineno=lineno)


def _replaced_size(text: str, old: Any, new: Any) -> int:
    if not isinstance(old, str) or not isinstance(new, str):
        return len(text)
    count = text.count(old) if old else len(text) + 1
    return len(text) + count * max(0, len(new) - len(old))


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)
