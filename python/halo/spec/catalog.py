"""The declared nodes after dependency decoupling, with the references their templates make.

Dependency decoupling: a `sql:` or `http:` call written inside an llm node becomes a node of its own,
listed just before the llm node, which then runs `after` it. The tool call no longer waits for
anything the llm node waits for, so it can run early and be shared across rows, and the llm prompt
reads its result by id (`{{ orders.rows }}`) like any other node's.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from jinja2 import TemplateSyntaxError
from jinja2.sandbox import ImmutableSandboxedEnvironment

from halo.spec.nodes import AnyNode, HttpNode, LlmNode, SqlNode
from halo.spec.request_template import control_slots, template_slots
from halo.spec.source_map import DocPath
from halo.spec.template import Reference, template_references


@dataclass(frozen=True)
class DeclaredNode:
    """One node of the workflow after decoupling, with where it was written."""

    spec: AnyNode
    path: DocPath  # ("nodes", i) or, for an extracted call, ("nodes", i, "sql", j)
    parent: str | None = None  # the llm node an extracted call came from
    slot_references: tuple[tuple[DocPath, frozenset[Reference]], ...] = ()  # per template slot

    @property
    def id(self) -> str:
        return self.spec.id

    @property
    def references(self) -> frozenset[Reference]:
        """Everything the node's templates read."""
        return frozenset().union(*(refs for _, refs in self.slot_references))


@dataclass(frozen=True)
class TemplateProblem:
    path: DocPath  # the slot's path in the document
    node: str
    message: str
    template_line: int | None = None  # line inside the template, for block scalars


def build_catalog(
    nodes: Sequence[tuple[AnyNode, DocPath]], env: ImmutableSandboxedEnvironment
) -> tuple[list[DeclaredNode], list[TemplateProblem]]:
    """Decouple embedded tool calls and parse every template; syntax errors are returned, not raised."""
    declared: list[DeclaredNode] = []
    problems: list[TemplateProblem] = []
    for spec, path in nodes:
        extracted: list[DeclaredNode] = []
        if isinstance(spec, LlmNode):
            for index, call in enumerate(spec.sql):
                fields = call.model_dump(by_alias=True, exclude={"id"})
                tool = SqlNode(id=call.id or f"{spec.id}_sql{index + 1}", **fields)
                extracted.append(DeclaredNode(tool, path + ("sql", index), spec.id))
            for index, call in enumerate(spec.http):
                fields = call.model_dump(by_alias=True, exclude={"id"})
                tool = HttpNode(id=call.id or f"{spec.id}_http{index + 1}", **fields)
                extracted.append(DeclaredNode(tool, path + ("http", index), spec.id))
            if extracted:
                after = spec.after + tuple(t.id for t in extracted if t.id not in spec.after)
                spec = spec.model_copy(update={"sql": (), "http": (), "after": after})
        for item in [*extracted, DeclaredNode(spec, path)]:
            references, found = _references(item, env)
            problems.extend(found)
            declared.append(DeclaredNode(item.spec, item.path, item.parent, references))
    return declared, problems


def _references(
    node: DeclaredNode, env: ImmutableSandboxedEnvironment
) -> tuple[tuple[tuple[DocPath, frozenset[Reference]], ...], list[TemplateProblem]]:
    found: list[tuple[DocPath, frozenset[Reference]]] = []
    problems: list[TemplateProblem] = []
    slots = [(slot, source) for slot, source, _ in template_slots(node.spec)] + control_slots(node.spec)
    for slot, source in slots:
        try:
            found.append((slot, template_references(env, source)))
        except TemplateSyntaxError as exc:
            where = ".".join(map(str, slot))
            problems.append(
                TemplateProblem(
                    node.path + slot,
                    node.id,
                    f"template syntax error in '{where}': {exc.message}",
                    exc.lineno,
                )
            )
    return tuple(found), problems
