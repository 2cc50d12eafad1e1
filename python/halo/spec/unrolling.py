"""Build the static `WorkflowGraph` from a validated spec: decouple tool calls, unroll loops.

A loop of k iterations becomes k copies of its body, `name#1` .. `name#k`. A member reading an
earlier member reads the same iteration; reading itself or a later member reads the previous
iteration (nothing in iteration 1). Iteration i > 1 carries one guard per earlier iteration m: the
loop's `until` evaluated on iteration m; once one holds the instance is skipped.
"""

from __future__ import annotations

import heapq
from collections.abc import Mapping

from halo.spec.catalog import DeclaredNode, build_catalog
from halo.spec.consistency import ITERATION
from halo.spec.dependencies import Membership, carried, loop_bodies, memberships
from halo.spec.document import WorkflowSpec
from halo.spec.graph import Binding, GraphNode, Guard, OutputBinding, WorkflowGraph
from halo.spec.limits import DEFAULT_LIMITS, Limits
from halo.spec.template import Reference, expression_references, make_environment


def build_graph(spec: WorkflowSpec, limits: Limits = DEFAULT_LIMITS) -> WorkflowGraph:
    env = make_environment(limits)
    declared, _ = build_catalog([(node, ("nodes", i)) for i, node in enumerate(spec.nodes)], env)
    members = memberships(loop_bodies(spec.loops, declared))
    resolver = _Resolver(spec, declared, members)
    until_refs = [expression_references(env, loop.until) if loop.until else frozenset() for loop in spec.loops]
    nodes: list[GraphNode] = []
    for node in declared:
        membership = members.get(node.id)
        if membership is None:
            nodes.append(resolver.instance(node, None, ()))
            continue
        loop = spec.loops[membership.loop]
        for iteration in range(1, loop.max_iterations + 1):
            guards = tuple(
                Guard(
                    membership.loop,
                    m,
                    loop.until,
                    resolver.inputs_of(until_refs[membership.loop]),
                    resolver.guard_bindings(until_refs[membership.loop], membership.loop, m),
                )
                for m in range(1, iteration)
                if loop.until
            )
            nodes.append(resolver.instance(node, iteration, guards))
    return WorkflowGraph(spec, _topological(nodes), resolver.outputs(), limits)


class _Resolver:
    def __init__(self, spec: WorkflowSpec, declared: list[DeclaredNode], members: Mapping[str, Membership]):
        self.spec = spec
        self.members = members
        self.ids = {node.id for node in declared}
        self.input_names = set(spec.inputs)

    def instance_id(self, name: str, iteration: int) -> str:
        return f"{name}#{iteration}"

    def resolve(self, reader: str | None, iteration: int | None, target: str) -> Binding | None:
        membership = self.members.get(target)
        if membership is None:
            return Binding(target, (target,))
        reader_membership = self.members.get(reader) if reader is not None else None
        if iteration is not None and reader_membership is not None and reader_membership.loop == membership.loop:
            assert reader is not None
            k = iteration - 1 if carried(reader, target, self.members) else iteration
            return Binding(target, (self.instance_id(target, k),)) if k >= 1 else None
        last = self.spec.loops[membership.loop].max_iterations
        return Binding(target, tuple(self.instance_id(target, k) for k in range(last, 0, -1)))

    def inputs_of(self, refs: frozenset[Reference]) -> tuple[str, ...]:
        return tuple(sorted({r.name for r in refs if r.name in self.input_names}))

    def bindings_of(self, refs: frozenset[Reference], reader: str, iteration: int | None) -> tuple[Binding, ...]:
        names = sorted({r.name for r in refs if r.name in self.ids})
        found = (self.resolve(reader, iteration, name) for name in names)
        return tuple(b for b in found if b is not None)

    def guard_bindings(self, refs: frozenset[Reference], loop: int, iteration: int) -> tuple[Binding, ...]:
        # `until` reads the loop's members as they are at the end of `iteration`.
        out = []
        for name in sorted({r.name for r in refs if r.name in self.ids}):
            membership = self.members.get(name)
            if membership is not None and membership.loop == loop:
                out.append(Binding(name, (self.instance_id(name, iteration),)))
            else:
                resolved = self.resolve(None, None, name)
                assert resolved is not None
                out.append(resolved)
        return tuple(out)

    def instance(self, node: DeclaredNode, iteration: int | None, guards: tuple[Guard, ...]) -> GraphNode:
        after: list[str] = []
        for name in node.spec.after:
            binding = self.resolve(node.id, iteration, name)
            if binding is not None:
                after.extend(binding.candidates)
        return GraphNode(
            id=node.id if iteration is None else self.instance_id(node.id, iteration),
            name=node.id,
            iteration=iteration,
            spec=node.spec,
            inputs=self.inputs_of(node.references),
            bindings=self.bindings_of(node.references, node.id, iteration),
            after=tuple(dict.fromkeys(after)),
            guards=guards,
            parent=node.parent,
            reads_iteration=any(r.name == ITERATION for r in node.references),
        )

    def outputs(self) -> tuple[OutputBinding, ...]:
        out = []
        for name, target in self.spec.outputs.items():
            if isinstance(target, str):
                out.append(self.output(name, target))
            else:
                out.append(OutputBinding(name, None, None, (), tuple(self.output(name, t) for t in target)))
        return tuple(out)

    def output(self, name: str, target: str) -> OutputBinding:
        head, _, rest = target.partition(".")
        path = tuple(p for p in rest.replace("[", ".").replace("]", "").split(".") if p)
        if head in self.ids:
            return OutputBinding(name, None, self.resolve(None, None, head), path)
        return OutputBinding(name, head, None, path)


def _topological(nodes: list[GraphNode]) -> tuple[GraphNode, ...]:
    # Kahn's algorithm, keeping declaration order among ready nodes so the result is deterministic.
    by_id = {node.id: node for node in nodes}
    waiting = {node.id: {u for u in node.upstream if u in by_id} for node in nodes}
    readers: dict[str, list[str]] = {}
    for node in nodes:
        for up in waiting[node.id]:
            readers.setdefault(up, []).append(node.id)
    position = {node.id: i for i, node in enumerate(nodes)}
    heap = [i for i, node in enumerate(nodes) if not waiting[node.id]]
    heapq.heapify(heap)
    order: list[GraphNode] = []
    while heap:
        node = nodes[heapq.heappop(heap)]
        order.append(node)
        for reader in readers.get(node.id, ()):
            waiting[reader].discard(node.id)
            if not waiting[reader]:
                heapq.heappush(heap, position[reader])
    if len(order) != len(nodes):
        raise AssertionError("validated workflow graph has a cycle")  # validation rejects cycles first
    return tuple(order)
