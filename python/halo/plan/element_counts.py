"""Per-element instances of a foreach node whose list is known before the run (`element_counts`).

A foreach node that reads only row inputs (no upstream result, no loop guard) maps over a list that
consolidation can evaluate already: each of its distinct instances gives its elements, and each
element's request renders from the row and the element. Counting them, with equal element requests
across rows and within a row counted once (the Processor runs equal pure element calls once), lets
`explain` show the per-element instances and the planner price the node's real number of calls
instead of a guess. Nothing is kept but the counts: the Processor renders the elements again when
the instance runs (`runtime.node_io.instance_work`), so plan and run cannot disagree on a request.
A foreach node whose list comes from an upstream node's result has its elements known at run time
only (`explain --analyze` counts them).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from halo.errors import HaloError
from halo.plan.signature import Frozen, freeze
from halo.spec.graph import GraphNode, WorkflowGraph


@dataclass(frozen=True, slots=True)
class ElementCounts:
    """The element calls of one foreach node over a batch."""

    instances: int  # distinct instances that map (after merging equal ones), `when` true
    elements: int  # element calls if every distinct instance ran each of its elements
    distinct: int  # distinct element requests: what actually runs when equal ones run once
    largest: int  # most elements in one instance
    skipped: int = 0  # instances whose `when` is false
    failed: int = 0  # instances whose list or an element fails to render (a row error at run time)

    @property
    def per_instance(self) -> float:
        """Calls one distinct instance makes on average once equal elements are merged."""
        return self.distinct / self.instances if self.instances else 0.0


def knows_elements(node: GraphNode) -> bool:
    """Whether `node` maps over a list consolidation can evaluate (it reads row inputs only)."""
    return node.spec.foreach is not None and not node.bindings and not node.guards


def element_counts(
    wf: WorkflowGraph, node: GraphNode, rows: Sequence[Mapping[str, Any]], owners: Sequence[int]
) -> ElementCounts:
    """Counts for `node` (`knows_elements` must hold), whose distinct instances are rows `owners`."""
    limit, truncate, name = node.spec.max_items, node.spec.truncate, node.spec.as_
    template = wf.template(node)
    seen: set[Frozen] = set()
    pure = node.pure  # only equal pure element calls run once
    instances = elements = largest = skipped = failed = 0
    for r in owners:
        row = rows[r]
        try:
            if not wf.condition(node, row, {}):
                skipped += 1
                continue
            items = wf.items(node, row, {})
            if len(items) > limit and not truncate:
                failed += 1
                continue
            items = items[:limit]
            context = wf.context(node, row, {})
            keys = [freeze(template.render({**context, name: item})) for item in items]
        except HaloError:  # the Processor reports it as the row's error when the instance runs
            failed += 1
            continue
        instances += 1
        elements += len(keys)
        largest = max(largest, len(keys))
        seen.update(keys)
    return ElementCounts(instances, elements, len(seen) if pure else elements, largest, skipped, failed)
