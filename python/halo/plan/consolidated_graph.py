"""The batch as one graph of physical executions: what runs once, who it fans out to, what it shares."""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, overload

from halo.plan.chat_tokenizer import ChatTokenizer
from halo.plan.element_counts import ElementCounts
from halo.plan.prefix_index import PrefixGroup
from halo.plan.signature import Frozen, digest
from halo.spec.graph import GraphNode, WorkflowGraph

Instance = tuple[str, int]  # (graph node id, batch row)


@dataclass(frozen=True, slots=True)
class PhysicalNode:
    """One execution: a request sent once, its result fanned out to every instance it serves."""

    id: int
    node: str  # graph node id of the first instance served (the one whose context renders it)
    row: int  # that instance's row
    kind: str
    model: str | None  # resolved model source for llm nodes
    pure: bool
    deferred: bool  # request known only at run time (reads upstream results)
    signature: str
    upstream: tuple[int, ...]  # physical nodes this one waits for
    instances: tuple[Instance, ...]  # fan-out: every (node, row) that receives the result
    values: tuple[Any, ...] | None  # rendered slot values when not deferred
    prompt_tokens: int | None = None  # llm, rendered, with a tokenizer: chat prompt length
    cached_tokens: int = 0  # of those, tokens a prefix cache already holds in prefill order

    @property
    def fan_out(self) -> int:
        return len(self.instances)


class PhysicalTable(Sequence[PhysicalNode]):
    """The physical nodes of a batch, stored as columns; `PhysicalNode` views are built on access.

    A 10,000-row batch has tens of thousands of executions: building one object per execution (and
    hashing its signature) up front would cost more than consolidating, so both happen lazily.
    Physical ids are dense and topologically ordered: an execution's upstream ids are smaller.
    `prompt_ids` keeps the token ids consolidation encoded for each rendered llm request, so the
    Processor hands them to the engine instead of encoding the prompt a second time.
    """

    def __init__(
        self,
        graph: WorkflowGraph,
        static_text: Mapping[str, str],
        node: list[str],
        row: list[int],
        key: list[tuple[int, Frozen, tuple[int, ...]]],
        values: list[tuple[Any, ...] | None],
        instances: list[list[Instance]],
        tokens: Mapping[int, int],
        cached: Mapping[int, int],
        prompt_ids: Mapping[int, list[int]] | None = None,
    ) -> None:
        self._graph = graph
        self._static_text = static_text
        self.node = node
        self.row = row
        self.key = key
        self.values = values
        self.instances = instances
        self.tokens = tokens
        self.cached = cached
        self.prompt_ids: Mapping[int, list[int]] = prompt_ids or {}  # rendered llm request -> its prompt's ids
        self._signatures: list[str] = []

    def __len__(self) -> int:
        return len(self.node)

    @overload
    def __getitem__(self, index: int) -> PhysicalNode: ...
    @overload
    def __getitem__(self, index: slice) -> Sequence[PhysicalNode]: ...
    def __getitem__(self, index: int | slice) -> PhysicalNode | Sequence[PhysicalNode]:
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(len(self)))]
        if index < 0:
            index += len(self)
        graph_node = self._graph.node(self.node[index])
        _, _, upstream = self.key[index]
        return PhysicalNode(
            id=index,
            node=graph_node.id,
            row=self.row[index],
            kind=graph_node.kind,
            model=self._graph.model_source(graph_node),
            pure=graph_node.pure,
            deferred=not graph_node.renderable,
            signature=self.signature(index),
            upstream=tuple(dict.fromkeys(upstream)),
            instances=tuple(self.instances[index]),
            values=self.values[index],
            prompt_tokens=self.tokens.get(index),
            cached_tokens=self.cached.get(index, 0),
        )

    def __iter__(self) -> Iterator[PhysicalNode]:
        return (self[i] for i in range(len(self)))

    def signature(self, index: int) -> str:
        """The printable signature of execution `index` (and, on the way, of everything before it)."""
        signatures = self._signatures
        while len(signatures) <= index:
            phys = len(signatures)
            node: GraphNode = self._graph.node(self.node[phys])
            _, payload, upstream = self.key[phys]
            instance = None if node.pure else f"{node.id}@{self.row[phys]}"
            ups = tuple(signatures[u] for u in upstream)
            signatures.append(digest(self._static_text[node.id], payload, ups, instance))
        return signatures[index]


@dataclass(frozen=True, slots=True)
class NodeCounters:
    """Logical vs physical work for one graph node (e.g. `critique#2`)."""

    node: str
    kind: str
    model: str | None
    logical: int  # instances: one per row
    physical: int  # distinct executions its instances map to (shared ones included)
    owned: int  # executions this node is the first user of (sums to the graph's physical total)
    deferred: bool
    pure: bool
    prompt_tokens: int = 0  # llm, rendered: tokens if every instance prefilled alone
    physical_prompt_tokens: int = 0  # owned executions' tokens, after merging equal requests
    cached_prompt_tokens: int = 0  # of those, shared with an earlier request's prefix
    static_prefix_tokens: int | None = None  # deferred llm: tokens every request starts with
    elements: ElementCounts | None = None  # foreach over row inputs: its element calls (see element_counts)


@dataclass(frozen=True, slots=True)
class ModelPrefixes:
    """Prompt tokens of one model's rendered requests, and how they share prefixes."""

    model: str
    requests: int  # physical rendered llm requests
    logical_tokens: int  # what the batch would prefill with no sharing at all
    physical_tokens: int  # after merging equal requests
    unique_tokens: int  # after also sharing prefixes (distinct trie nodes)
    groups: tuple[PrefixGroup, ...]
    deferred_requests: int  # physical llm requests not renderable before run time


@dataclass(frozen=True)
class ConsolidatedGraph:
    """A workflow graph instantiated for a batch, with equal pure instances merged."""

    workflow: WorkflowGraph
    rows: int
    physical: PhysicalTable  # indexed by physical id, in a topological order
    assignment: Mapping[str, tuple[int, ...]]  # graph node id -> physical id per row
    counters: Mapping[str, NodeCounters]
    prefixes: Mapping[str, ModelPrefixes] = field(default_factory=dict)
    tokenizer_name: str | None = None
    # model source -> the tokenizer `physical.prompt_ids` of its requests were encoded with
    tokenizers: Mapping[str, ChatTokenizer] = field(default_factory=dict)
    timings: Mapping[str, float] = field(default_factory=dict)  # seconds per consolidation phase
    # physical id -> the error of a request one row's data failed to render; such a node never runs
    render_errors: Mapping[int, str] = field(default_factory=dict)

    @property
    def logical_calls(self) -> int:
        return sum(c.logical for c in self.counters.values())

    @property
    def physical_calls(self) -> int:
        return len(self.physical)

    @property
    def prompt_tokens_total(self) -> int:
        return sum(p.logical_tokens for p in self.prefixes.values())

    @property
    def prompt_tokens_unique(self) -> int:
        return sum(p.unique_tokens for p in self.prefixes.values())

    def failed_rows(self) -> dict[int, str]:
        """Row -> the first (topological) render error among its instances."""
        failed: dict[int, str] = {}
        for phys in sorted(self.render_errors):
            for _, row in self.physical.instances[phys]:
                failed.setdefault(row, self.render_errors[phys])
        return failed

    def physical_of(self, node: str, row: int) -> PhysicalNode:
        return self.physical[self.assignment[node][row]]

    def request(self, physical: PhysicalNode) -> dict[str, Any] | None:
        """The structured request of a rendered physical node (None when deferred)."""
        if physical.values is None:
            return None
        graph_node = self.workflow.node(physical.node)
        return self.workflow.template(graph_node).request(physical.values)
