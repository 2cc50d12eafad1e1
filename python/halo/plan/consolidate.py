"""Consolidation: instantiate the workflow DAG per batch row and merge equal pure instances.

    graph = consolidate(workflow, rows, tokenizer)      # -> ConsolidatedGraph

Invariant of the main loop (`Consolidator._assign`): graph nodes are visited in topological order,
so when an instance is keyed every instance it waits for already has its physical id; an instance
joins an existing physical node only if it is pure and its key (static part, rendered request or
deferred payload, upstream physical ids) is equal — see `halo.plan.signature` for why equal keys
mean equal requests. Nothing is executed; templates that read only row inputs are rendered (once
per distinct input combination) and, for llm nodes, tokenized to build the per-model prefix index
(on a worker thread, overlapping the remaining nodes: see `halo.plan.prompt_tokens`).

A template that fails on one row's data is that row's problem, never the batch's: the instance
becomes a physical node that carries its error (`ConsolidatedGraph.render_errors`), and the
Processor settles it as failed under the node's `on_error` policy when it is reached, so the rows
that rendered run as usual.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from halo.errors import HaloError
from halo.plan.chat_tokenizer import ChatTokenizer
from halo.plan.consolidated_graph import (
    ConsolidatedGraph,
    Instance,
    ModelPrefixes,
    NodeCounters,
    PhysicalTable,
)
from halo.plan.element_counts import element_counts, knows_elements
from halo.plan.prefix_index import PrefixIndex
from halo.plan.prompt_tokens import PromptTokens, chat_messages, static_prefix_tokens
from halo.plan.signature import Frozen, freeze, static_key
from halo.spec.batch_check import check_batch
from halo.spec.consistency import ITERATION
from halo.spec.graph import GraphNode, WorkflowGraph
from halo.spec.nodes import LlmNode
from halo.spec.workflow import Workflow

# (model source, prompts' token ids) -> tokens of each prompt an engine caches already
WarmPrefix = Callable[[str, list[list[int]]], list[int]]


def consolidate(
    workflow: Workflow | WorkflowGraph,
    rows: Sequence[Mapping[str, Any]],
    tokenizer: ChatTokenizer | Mapping[str, ChatTokenizer] | None = None,
    *,
    check: bool = True,
    min_group_tokens: int = 1,
    warm_prefix: WarmPrefix | None = None,
) -> ConsolidatedGraph:
    """Consolidate `rows` for `workflow`; `tokenizer` (one, or one per model source) enables prefixes.
    `warm_prefix(model, prompts)` says how many leading tokens of each prompt an engine already caches
    (earlier runs' KV): a request is priced as cached up to the longer of that and the batch's own sharing."""
    return Consolidator(workflow, tokenizer, min_group_tokens).consolidate(rows, check=check, warm_prefix=warm_prefix)


class Consolidator:
    """Consolidates batches for one workflow; per-node static signature parts are computed once."""

    def __init__(
        self,
        workflow: Workflow | WorkflowGraph,
        tokenizer: ChatTokenizer | Mapping[str, ChatTokenizer] | None = None,
        min_group_tokens: int = 1,
    ) -> None:
        self.graph = workflow.graph if isinstance(workflow, Workflow) else workflow
        self.tokenizer = tokenizer
        self.min_group_tokens = min_group_tokens
        statics: dict[str, int] = {}
        self._static_text: dict[str, str] = {}
        self._static_id: dict[str, int] = {}
        for node in self.graph.nodes:
            text = static_key(self.graph, node)
            self._static_text[node.id] = text
            self._static_id[node.id] = statics.setdefault(text, len(statics))

    def consolidate(
        self, rows: Sequence[Mapping[str, Any]], *, check: bool = True, warm_prefix: WarmPrefix | None = None
    ) -> ConsolidatedGraph:
        if check:
            check_batch(rows, self.graph.spec.inputs)
        state = _State()
        prompts = PromptTokens(self._tokenizer_for)
        clock = time.perf_counter()
        assignment: dict[str, tuple[int, ...]] = {}
        for node in self.graph.nodes:
            first = len(state.node)
            assignment[node.id] = self._assign(node, rows, state)
            if isinstance(node.spec, LlmNode) and node.renderable:
                # Hand this node's new requests to the tokenizer thread now, not at the end.
                ids = [phys for phys in range(first, len(state.node)) if phys not in state.errors]
                model = self.graph.model_source(node) or ""
                prompts.submit(model, ids, [self._messages(state, phys) for phys in ids])
        state.timings["instantiate"] = time.perf_counter() - clock
        tokens, cached, prefixes, prompt_ids = self._prefixes(state, prompts, warm_prefix)
        clock = time.perf_counter()
        physical = PhysicalTable(
            self.graph,
            self._static_text,
            state.node,
            state.row,
            state.key,
            state.values,
            state.instances,
            tokens,
            cached,
            prompt_ids,
        )
        counters = self._counters(assignment, physical, rows)
        state.timings["counters"] = time.perf_counter() - clock
        return ConsolidatedGraph(
            workflow=self.graph,
            rows=len(rows),
            physical=physical,
            assignment=assignment,
            counters=counters,
            prefixes=prefixes,
            tokenizer_name=type(self.tokenizer).__name__ if self.tokenizer is not None else None,
            tokenizers={model: t for model in prefixes if (t := self._tokenizer_for(model)) is not None},
            timings=dict(state.timings),
            render_errors=dict(state.errors),
        )

    # -- instances -> physical ids ----------------------------------------------------------------

    def _assign(self, node: GraphNode, rows: Sequence[Mapping[str, Any]], state: _State) -> tuple[int, ...]:
        static = self._static_id[node.id]
        template = self.graph.template(node)
        inputs = node.inputs
        upstream = [state.columns[u] for u in node.upstream]
        renderable, pure = node.renderable, node.pure
        # distinct row inputs -> (rendered values or None, payload, render error or None)
        rendered: dict[Frozen, tuple[tuple[Any, ...] | None, Frozen, str | None]] = {}
        table = state.table
        column = [0] * len(rows)
        for r, row in enumerate(rows):
            key_inputs = tuple([freeze(row[name]) for name in inputs])
            values: tuple[Any, ...] | None = None
            error = None
            if renderable:
                hit = rendered.get(key_inputs)
                if hit is None:
                    hit = rendered[key_inputs] = self._render(node, template, row)
                values, payload, error = hit
            else:
                payload = key_inputs
            ups = tuple([col[r] for col in upstream])
            key = (static, payload, ups)
            phys = table.get(key) if pure else None
            if phys is None:
                phys = state.add(node.id, r, key, values)
                if error is not None:
                    state.errors[phys] = error
                if pure:
                    table[key] = phys
            state.instances[phys].append((node.id, r))
            column[r] = phys
        result = tuple(column)
        state.columns[node.id] = result
        return result

    def _render(
        self, node: GraphNode, template: Any, row: Mapping[str, Any]
    ) -> tuple[tuple[Any, ...] | None, Frozen, str | None]:
        """(values, payload, None) for a request that renders; (None, payload, message) for one whose
        row data breaks its template (equal inputs fail equally, so they still share one node)."""
        context = {name: row[name] for name in node.inputs}
        if node.reads_iteration:
            context[ITERATION] = node.iteration
        try:
            values = template.render(context)
        except HaloError as exc:
            return None, ("$render_error", str(exc)), str(exc)
        except Exception as exc:  # noqa: BLE001 - whatever a row's data provokes stays that row's error
            message = f"node '{node.id}': rendering failed: {type(exc).__name__}: {exc}"
            return None, ("$render_error", message), message
        return values, freeze(values), None

    # -- tokens and prefixes ------------------------------------------------------------------------

    def _tokenizer_for(self, model: str) -> ChatTokenizer | None:
        if self.tokenizer is None or isinstance(self.tokenizer, ChatTokenizer):
            return self.tokenizer
        return self.tokenizer.get(model)

    def _prefixes(
        self, state: _State, prompts: PromptTokens, warm_prefix: WarmPrefix | None = None
    ) -> tuple[dict[int, int], dict[int, int], dict[str, ModelPrefixes], dict[int, list[int]]]:
        """Prompt lengths, cached tokens and prefixes per physical id; and the token ids themselves,
        which travel to the engine with the request (it does not encode the prompt again)."""
        encoded = prompts.collect()
        state.timings.update(prompts.timings)
        deferred: dict[str, int] = {}
        llm_model = {
            node.id: self.graph.model_source(node) or "" for node in self.graph.nodes if isinstance(node.spec, LlmNode)
        }
        for phys, node_id in enumerate(state.node):
            model = llm_model.get(node_id)
            if model is not None and state.values[phys] is None and phys not in state.errors:
                deferred[model] = deferred.get(model, 0) + 1
        tokens: dict[int, int] = {}
        cached: dict[int, int] = {}
        prefixes: dict[str, ModelPrefixes] = {}
        prompt_ids: dict[int, list[int]] = {}
        for model in sorted(set(encoded) | set(deferred)):
            if self._tokenizer_for(model) is None:
                continue
            ids, sequences = encoded.get(model, ([], []))
            prompt_ids.update(zip(ids, sequences, strict=True))
            clock = time.perf_counter()
            index = PrefixIndex(ids, sequences, self.min_group_tokens)
            state.lap("prefix_index", clock)
            tokens.update(index.lengths)
            cached.update(index.cached)
            if warm_prefix is not None and ids:
                for phys, warm in zip(ids, warm_prefix(model, sequences), strict=True):
                    cached[phys] = max(cached[phys], min(warm, index.lengths[phys]))
            logical = sum(index.lengths[phys] * len(state.instances[phys]) for phys in ids)
            prefixes[model] = ModelPrefixes(
                model,
                len(ids),
                logical,
                index.total_tokens,
                index.unique_tokens,
                tuple(index.groups),
                deferred.get(model, 0),
            )
        return tokens, cached, prefixes, prompt_ids

    def _messages(self, state: _State, phys: int) -> list[dict[str, str]]:
        spec = self.graph.node(state.node[phys]).spec
        values = state.values[phys]
        assert values is not None and isinstance(spec, LlmNode)
        return chat_messages(spec, values)

    def static_prefix_tokens(self, node: GraphNode) -> int | None:
        """Tokens every request of a deferred llm node starts with (None without a tokenizer)."""
        tokenizer = self._tokenizer_for(self.graph.model_source(node) or "")
        if tokenizer is None or not isinstance(node.spec, LlmNode):
            return None
        return static_prefix_tokens(node.spec, tokenizer)

    # -- results ----------------------------------------------------------------------------------

    def _counters(
        self, assignment: Mapping[str, tuple[int, ...]], physical: PhysicalTable, rows: Sequence[Mapping[str, Any]]
    ) -> dict[str, NodeCounters]:
        owned: dict[str, list[int]] = {}
        for phys, node_id in enumerate(physical.node):
            owned.setdefault(node_id, []).append(phys)
        tokens, cached = physical.tokens, physical.cached
        counters: dict[str, NodeCounters] = {}
        for node in self.graph.nodes:
            column = assignment[node.id]
            mine = owned.get(node.id, [])
            deferred_llm = isinstance(node.spec, LlmNode) and not node.renderable
            counters[node.id] = NodeCounters(
                node=node.id,
                kind=node.kind,
                model=self.graph.model_source(node),
                logical=len(rows),
                physical=len(set(column)),
                owned=len(mine),
                deferred=not node.renderable,
                pure=node.pure,
                prompt_tokens=sum(tokens.get(phys, 0) for phys in column) if tokens else 0,
                physical_prompt_tokens=sum(tokens.get(phys, 0) for phys in mine),
                cached_prompt_tokens=sum(cached.get(phys, 0) for phys in mine),
                static_prefix_tokens=self.static_prefix_tokens(node) if deferred_llm else None,
                elements=(
                    element_counts(self.graph, node, rows, [physical.row[p] for p in mine])
                    if knows_elements(node)
                    else None
                ),
            )
        return counters


class _State:
    """Column storage of the physical nodes being built (one list entry per physical id)."""

    def __init__(self) -> None:
        self.table: dict[tuple[int, Frozen, tuple[int, ...]], int] = {}
        self.columns: dict[str, tuple[int, ...]] = {}
        self.node: list[str] = []
        self.row: list[int] = []
        self.key: list[tuple[int, Frozen, tuple[int, ...]]] = []
        self.values: list[tuple[Any, ...] | None] = []
        self.instances: list[list[Instance]] = []
        self.errors: dict[int, str] = {}  # physical id -> why its request failed to render
        self.timings: dict[str, float] = {}

    def lap(self, phase: str, since: float) -> None:
        self.timings[phase] = self.timings.get(phase, 0.0) + time.perf_counter() - since

    def add(self, node: str, row: int, key: tuple[int, Frozen, tuple[int, ...]], values: Any) -> int:
        self.node.append(node)
        self.row.append(row)
        self.key.append(key)
        self.values.append(values)
        self.instances.append([])
        return len(self.node) - 1
