"""Canonical signatures of node instances, computed before anything runs.

The signature of an instance says *what request it will send*. Two kinds:

* **Rendered** — the node reads row inputs only, so its request can be rendered now. Signature =
  (static part, rendered slot values, upstream ids). The static part is the node's kind, its model's
  resolved source (or the database's resolved target) and every request field that is not a template
  (sampling params, max_tokens, stop, json_schema, query, method, ...). Template sources are left
  out: two nodes whose templates render the same request share a signature.

* **Deferred** — the node reads another node's result, unknown until run time. Signature = (static
  part *with* template sources, binding names, the row inputs it reads, upstream ids). This is still
  exact: rendering is a deterministic function of (templates, context), the context is made of the
  row inputs it reads plus the results of its bindings, and equal upstream ids mean the same upstream
  execution, hence the same result. So equal deferred signatures imply equal rendered requests.
  The converse does not hold (different upstream executions may return equal text); the runtime can
  still coalesce those when they happen, consolidation does not guess.

Upstream ids are the *physical* ids of the instances this one reads, runs after, or whose loop guard
it waits on. An impure instance (sampled llm, POST http, python not marked pure) never shares its
physical id, so everything downstream of it stays per row. Guards enter through the same upstream ids
(plus the `until` text in the static part), so merged instances are skipped or run together.

Keys are plain tuples compared by value (exact, no hash-collision risk); `digest` turns a physical
node's key into a short printable signature.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from typing import Any

from halo.spec.graph import GraphNode, WorkflowGraph
from halo.spec.nodes import EXECUTION_FIELDS, SqlNode
from halo.spec.request_template import template_slots

Frozen = Any  # a hashable, type-tagged image of a value: see `freeze`


def freeze(value: Any) -> Frozen:
    """A hashable image of `value` that is equal only for values that render identically.

    Plain `==` would merge 1, 1.0 and True (and 0.0 with -0.0); tags keep their types apart.
    """
    kind = type(value)
    if kind is str:
        return value
    if value is None or kind is bool or kind is int:
        return (kind.__name__, value)
    if kind is float:
        return ("float", repr(value))
    if kind is list or kind is tuple:
        return ("list", tuple(freeze(item) for item in value))
    if isinstance(value, Mapping):
        return ("dict", tuple(sorted((str(k), freeze(v)) for k, v in value.items())))
    return ("repr", kind.__name__, repr(value))


def static_key(graph: WorkflowGraph, node: GraphNode) -> str:
    """The part of a node's signature shared by all its instances (canonical JSON)."""
    fields = node.spec.model_dump(
        mode="json", by_alias=True, exclude={"id", "after", "description", "sql", "http", *EXECUTION_FIELDS}
    )
    if node.renderable:
        for path, _, _ in template_slots(node.spec):
            _blank(fields, path)
    else:
        fields["$bindings"] = [binding.name for binding in node.bindings]
    if "model" in fields:
        fields["model"] = graph.model_source(node)
    if isinstance(node.spec, SqlNode):
        database = graph.spec.databases.get(node.spec.db) if node.spec.db else None
        fields["db"] = database.model_dump(mode="json") if database else {"kind": "duckdb", "path": None}
    if node.reads_iteration:
        fields["$iteration"] = node.iteration
    if node.guards:
        fields["$guards"] = [[guard.until, guard.iteration] for guard in node.guards]
    return json.dumps(fields, sort_keys=True, separators=(",", ":"), default=repr)


def _blank(fields: dict[str, Any], path: tuple[str | int, ...]) -> None:
    target: Any = fields
    for part in path[:-1]:
        target = target[part]
    target[path[-1]] = None


def digest(static: str, payload: Frozen, upstream: tuple[str, ...], instance: str | None) -> str:
    """A 16-hex-digit printable signature; `upstream` are the upstream physical nodes' digests."""
    h = hashlib.blake2b(digest_size=8)
    h.update(static.encode())
    h.update(repr(payload).encode())
    for up in upstream:
        h.update(up.encode())
    if instance is not None:
        h.update(instance.encode())
    return h.hexdigest()
