"""The static DAG a workflow runs as: tool calls decoupled, loops unrolled, references resolved.

Each `GraphNode` is one node of one iteration (`critique#2`), with the row inputs it reads, the
upstream nodes it reads (`Binding`s), the nodes it merely runs after, and the loop `Guard`s that
skip it once an earlier iteration's `until` held. A binding has several candidates when it reads a
loop member from outside the loop: the value is that of the latest iteration that ran.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from functools import cached_property
from typing import Any

from halo.spec.consistency import ITERATION
from halo.spec.document import ModelSpec, WorkflowSpec, remote_source
from halo.spec.errors import TemplateRenderError
from halo.spec.limits import DEFAULT_LIMITS, Limits
from halo.spec.nodes import DEFAULT_MODEL, AnyNode, LlmNode
from halo.spec.request_template import RequestTemplate, control_slots
from halo.spec.template import CompiledTemplate, make_environment


@dataclass(frozen=True)
class Binding:
    """A name a template reads, bound to the graph nodes that may supply it (latest first)."""

    name: str
    candidates: tuple[str, ...]


@dataclass(frozen=True)
class Guard:
    """Skip unless `until` was false after iteration `iteration` of loop `loop`."""

    loop: int
    iteration: int
    until: str
    inputs: tuple[str, ...]
    bindings: tuple[Binding, ...]


@dataclass(frozen=True)
class GraphNode:
    id: str  # "classify", or "critique#2" for iteration 2 of a loop member
    name: str  # the declared id
    iteration: int | None  # 1-based; None outside loops
    spec: AnyNode
    inputs: tuple[str, ...]  # row inputs the templates read
    bindings: tuple[Binding, ...]  # upstream results the templates read
    after: tuple[str, ...]  # graph nodes this one runs after without reading them
    guards: tuple[Guard, ...] = ()
    parent: str | None = None  # the llm node this tool call was extracted from
    reads_iteration: bool = False

    @property
    def kind(self) -> str:
        return self.spec.kind

    @property
    def pure(self) -> bool:
        return bool(self.spec.pure)

    @property
    def renderable(self) -> bool:
        """Its request depends on row inputs only, so it can be rendered before anything runs (a foreach
        node's requests read their element, known only once its list is)."""
        return not self.bindings and self.spec.foreach is None

    @cached_property
    def upstream(self) -> tuple[str, ...]:
        """Every graph node this one waits for: read, run after, or read by a guard."""
        found = [c for b in self.bindings for c in b.candidates] + list(self.after)
        found += [c for g in self.guards for b in g.bindings for c in b.candidates]
        return tuple(dict.fromkeys(found))


@dataclass(frozen=True)
class OutputBinding:
    """A workflow output: an input, or a node field (and a path inside it)."""

    name: str
    input: str | None
    binding: Binding | None
    path: tuple[str, ...]  # e.g. ("output",) or ("rows", "0", "n")
    alternatives: tuple[OutputBinding, ...] = ()  # a list output: the first of these that is not null


class WorkflowGraph:
    """The unrolled DAG of a validated workflow; built by `halo.spec.unrolling.build_graph`."""

    def __init__(
        self,
        spec: WorkflowSpec,
        nodes: tuple[GraphNode, ...],
        outputs: tuple[OutputBinding, ...],
        limits: Limits = DEFAULT_LIMITS,
    ):
        self.spec = spec
        self.nodes = nodes  # in a topological order
        self.outputs = outputs
        self._by_id = {node.id: node for node in nodes}
        env = make_environment(limits)
        self._templates = {node.name: RequestTemplate(env, node.name, node.spec) for node in nodes}
        # A node's `when` and `foreach` expressions, by declared name (shared by its iterations).
        self._control = {
            (node.name, slot[0]): CompiledTemplate(env, node.name, str(slot[0]), source)
            for node in nodes
            for slot, source in control_slots(node.spec)
        }
        self._until = [
            CompiledTemplate(env, f"loops[{i}]", "until", "{{ " + loop.until + " }}") if loop.until else None
            for i, loop in enumerate(spec.loops)
        ]

    def __eq__(self, other: object) -> bool:
        return isinstance(other, WorkflowGraph) and self.spec == other.spec and self.nodes == other.nodes

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"WorkflowGraph({self.spec.name!r}, {len(self.nodes)} nodes)"

    def node(self, node_id: str) -> GraphNode:
        return self._by_id[node_id]

    def template(self, node: GraphNode) -> RequestTemplate:
        return self._templates[node.name]

    def model_source(self, node: GraphNode) -> str | None:
        """What an llm node runs: the declared model's source, or DEFAULT_MODEL; None for tools."""
        if not isinstance(node.spec, LlmNode):
            return None
        name = node.spec.model or DEFAULT_MODEL
        declared = self.spec.models.get(name)
        if declared is not None and declared.remote:
            return remote_source(name)  # each declared endpoint is its own worker
        return declared.source if declared is not None else name

    def remote_models(self) -> dict[str, ModelSpec]:
        """The declared `source: openai` models by the source their llm nodes run (`remote_source`)."""
        return {remote_source(name): model for name, model in self.spec.models.items() if model.remote}

    def model_settings(self) -> dict[str, dict[str, str]]:
        """Per model source, the engine options its declaration sets (`dtype`, `weights`); a source
        declared twice with different settings is refused by validation (one engine per source)."""
        settings: dict[str, dict[str, str]] = {}
        for model in self.spec.models.values():
            if model.engine_settings() and not model.remote:
                settings.setdefault(model.source, {}).update(model.engine_settings())
        return settings

    def context(self, node: GraphNode, row: Mapping[str, Any], results: Mapping[str, Any]) -> dict[str, Any]:
        """The template context of one instance: its row inputs, iteration and upstream results.

        `results` maps graph node ids to results (mappings or objects with the kind's fields); for a
        binding with several candidates the first present one (the latest iteration that ran) is used.
        """
        context = {name: row[name] for name in node.inputs}
        if node.reads_iteration:
            context[ITERATION] = node.iteration
        for binding in node.bindings:
            for candidate in binding.candidates:
                if candidate in results:
                    context[binding.name] = results[candidate]
                    break
        return context

    def skipped(self, node: GraphNode, row: Mapping[str, Any], results: Mapping[str, Any]) -> bool:
        """True once one of the node's loop guards holds (an earlier iteration's `until` was true).

        `results` holds the results of the instances that ran, by graph node id.
        """
        for guard in node.guards:
            until = self._until[guard.loop]
            assert until is not None
            context: dict[str, Any] = {name: row[name] for name in guard.inputs}
            context[ITERATION] = guard.iteration
            for binding in guard.bindings:
                for candidate in binding.candidates:
                    if candidate in results:
                        context[binding.name] = results[candidate]
                        break
            # Guards are checked in iteration order, so guard m is read only when iteration m ran.
            if until.evaluate(context):
                return True
        return False

    def condition(self, node: GraphNode, row: Mapping[str, Any], results: Mapping[str, Any]) -> bool:
        """The node's `when` for one instance (True without one); raises TemplateRenderError naming the
        node when it fails or gives anything but a boolean."""
        when = self._control.get((node.name, "when"))
        if when is None:
            return True
        value = when.evaluate(self.context(node, row, results))
        if not isinstance(value, bool):
            raise TemplateRenderError(node.id, "when", f"gave {_shown(value)}, not a boolean (true or false)")
        return value

    def items(self, node: GraphNode, row: Mapping[str, Any], results: Mapping[str, Any]) -> list[Any]:
        """The list a foreach node maps over for one instance; raises TemplateRenderError naming the node
        when the expression fails or gives anything but a list."""
        foreach = self._control[(node.name, "foreach")]
        value = foreach.evaluate(self.context(node, row, results))
        if not isinstance(value, list | tuple):
            raise TemplateRenderError(node.id, "foreach", f"gave {_shown(value)}, not a list")
        return list(value)

    def render(
        self, node: GraphNode, row: Mapping[str, Any], results: Mapping[str, Any] | None = None
    ) -> dict[str, Any]:
        """The structured request of one instance (raises TemplateRenderError naming node and variable)."""
        template = self.template(node)
        try:
            values = template.render(self.context(node, row, results or {}))
        except TemplateRenderError as exc:
            if exc.node != node.id:
                raise TemplateRenderError(node.id, exc.field, exc.detail) from exc
            raise
        return template.request(values)


def _shown(value: Any) -> str:
    """A value as an error message shows it: its type and a short repr."""
    text = repr(value)
    return f"{type(value).__name__} {text if len(text) <= 60 else text[:57] + '...'}"
