"""Who waits for whom among declared nodes: loop bodies, same- vs previous-iteration edges, cycles."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from halo.spec.catalog import DeclaredNode
from halo.spec.document import LoopSpec


@dataclass(frozen=True)
class Membership:
    loop: int  # index into the workflow's `loops`
    position: int  # place in the loop body


def loop_bodies(loops: Sequence[LoopSpec], declared: Sequence[DeclaredNode]) -> list[tuple[str, ...]]:
    """Each loop's members in body order; a member's extracted tool calls join the body before it."""
    extracted: dict[str, list[str]] = {}
    for node in declared:
        if node.parent is not None:
            extracted.setdefault(node.parent, []).append(node.id)
    return [tuple(m for name in loop.nodes for m in (*extracted.get(name, ()), name)) for loop in loops]


def memberships(bodies: Sequence[tuple[str, ...]]) -> dict[str, Membership]:
    """Node id -> its loop and body position (a node listed in two loops keeps the first)."""
    found: dict[str, Membership] = {}
    for loop, body in enumerate(bodies):
        for position, name in enumerate(body):
            found.setdefault(name, Membership(loop, position))
    return found


def upstream_names(node: DeclaredNode, node_ids: Iterable[str] | set[str]) -> list[str]:
    """Nodes `node` reads (template references) or runs after, in a stable order."""
    ids = node_ids if isinstance(node_ids, set) else set(node_ids)
    names = {ref.name for ref in node.references if ref.name in ids} | set(node.spec.after)
    return sorted(name for name in names if name in ids)


def carried(reader: str, read: str, members: Mapping[str, Membership]) -> bool:
    """True when `reader` reads `read` from the previous iteration of their shared loop."""
    a, b = members.get(reader), members.get(read)
    return a is not None and b is not None and a.loop == b.loop and b.position >= a.position


def declared_edges(declared: Sequence[DeclaredNode], members: Mapping[str, Membership]) -> dict[str, list[str]]:
    """node -> the nodes it waits for within one iteration (loop-carried reads excluded)."""
    ids = {node.id for node in declared}
    return {node.id: [up for up in upstream_names(node, ids) if not carried(node.id, up, members)] for node in declared}


def find_cycles(edges: Mapping[str, Sequence[str]]) -> list[list[str]]:
    """One cycle per strongly connected component that has one, as [a, b, ..., a]."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []
    for root in edges:
        if root in index:
            continue
        work = [(root, iter(edges.get(root, ())))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(edges.get(child, ()))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1 or node in edges.get(node, ()):
                    components.append(component)
    order = {name: i for i, name in enumerate(edges)}
    return [_cycle_in(sorted(c, key=order.__getitem__), edges) for c in components]


def _cycle_in(component: list[str], edges: Mapping[str, Sequence[str]]) -> list[str]:
    # Walk from the first-declared member, always to a member of the component, until a repeat.
    inside = set(component)
    path = [component[0]]
    seen = {component[0]: 0}
    while True:
        nxt = next(c for c in edges[path[-1]] if c in inside)
        if nxt in seen:
            return path[seen[nxt] :] + [nxt]
        seen[nxt] = len(path)
        path.append(nxt)
