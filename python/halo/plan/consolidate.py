"""Consolidation: instantiate the workflow DAG per batch row and merge equal pure instances.

    graph = consolidate(workflow, rows, tokenizer)      # -> ConsolidatedGraph

Invariant of the main loop (`Consolidator._assign`): graph nodes are visited in topological order,
so when an instance is keyed every instance it waits for already has its physical id; an instance
joins an existing physical node only if it is pure and its key (static part, rendered request or
deferred payload, upstream physical ids) is equal — see `halo.plan.signature` for why equal keys
mean equal requests. Nothing is executed; templates that read only row inputs are rendered (once
per distinct input combination) and, for llm nodes, tokenized to build the per-model prefix index.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from halo.plan.chat_tokenizer import ChatTokenizer
from halo.plan.consolidated_graph import (
    ConsolidatedGraph,
    Instance,
    ModelPrefixes,
    NodeCounters,
    PhysicalNode,
)
from halo.plan.prefix_index import PrefixIndex
from halo.plan.signature import Frozen, digest, freeze, static_key
from halo.spec.batch_check import check_batch
from halo.spec.consistency import ITERATION
from halo.spec.errors import TemplateRenderError
from halo.spec.graph import GraphNode, WorkflowGraph
from halo.spec.nodes import LlmNode
from halo.spec.workflow import Workflow

_SENTINEL = "\u2063HALO\u2063"  # marks where a deferred prompt's known text ends


def consolidate(
    workflow: Workflow | WorkflowGraph,
    rows: Sequence[Mapping[str, Any]],
    tokenizer: ChatTokenizer | Mapping[str, ChatTokenizer] | None = None,
    *,
    check: bool = True,
    min_group_tokens: int = 1,
) -> ConsolidatedGraph:
    """Consolidate `rows` for `workflow`; `tokenizer` (one, or one per model source) enables prefixes."""
    return Consolidator(workflow, tokenizer, min_group_tokens).consolidate(rows, check=check)


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

    def consolidate(self, rows: Sequence[Mapping[str, Any]], *, check: bool = True) -> ConsolidatedGraph:
        if check:
            check_batch(rows, self.graph.spec.inputs)
        state = _State()
        assignment = {node.id: self._assign(node, rows, state) for node in self.graph.nodes}
        tokens, cached, prefixes = self._prefixes(state)
        physical = self._physical_nodes(state, tokens, cached)
        counters = self._counters(assignment, physical, len(rows))
        return ConsolidatedGraph(
            workflow=self.graph,
            rows=len(rows),
            physical=physical,
            assignment=assignment,
            counters=counters,
            prefixes=prefixes,
            tokenizer_name=type(self.tokenizer).__name__ if self.tokenizer is not None else None,
        )

    # -- instances -> physical ids ----------------------------------------------------------------

    def _assign(self, node: GraphNode, rows: Sequence[Mapping[str, Any]], state: _State) -> tuple[int, ...]:
        static = self._static_id[node.id]
        template = self.graph.template(node)
        inputs = node.inputs
        upstream = [state.columns[u] for u in node.upstream]
        renderable, pure = node.renderable, node.pure
        rendered: dict[Frozen, tuple[tuple[Any, ...], Frozen]] = {}
        table = state.table
        column = [0] * len(rows)
        for r, row in enumerate(rows):
            key_inputs = tuple([freeze(row[name]) for name in inputs])
            values: tuple[Any, ...] | None = None
            if renderable:
                hit = rendered.get(key_inputs)
                if hit is None:
                    values = self._render(node, template, row, r)
                    hit = rendered[key_inputs] = (values, freeze(values))
                values, payload = hit
            else:
                payload = key_inputs
            ups = tuple([col[r] for col in upstream])
            key = (static, payload, ups)
            pid = table.get(key) if pure else None
            if pid is None:
                pid = state.add(node.id, r, key, values)
                if pure:
                    table[key] = pid
            state.instances[pid].append((node.id, r))
            column[r] = pid
        result = tuple(column)
        state.columns[node.id] = result
        return result

    def _render(self, node: GraphNode, template: Any, row: Mapping[str, Any], r: int) -> tuple[Any, ...]:
        context = {name: row[name] for name in node.inputs}
        if node.reads_iteration:
            context[ITERATION] = node.iteration
        try:
            return template.render(context)
        except TemplateRenderError as exc:
            raise TemplateRenderError(node.id, exc.field, f"row {r}: {exc.detail}") from exc

    # -- tokens and prefixes ------------------------------------------------------------------------

    def _tokenizer_for(self, model: str) -> ChatTokenizer | None:
        if self.tokenizer is None or isinstance(self.tokenizer, ChatTokenizer):
            return self.tokenizer
        return self.tokenizer.get(model)

    def _prefixes(self, state: _State) -> tuple[dict[int, int], dict[int, int], dict[str, ModelPrefixes]]:
        by_model: dict[str, list[int]] = {}
        deferred: dict[str, int] = {}
        for pid, node_id in enumerate(state.node):
            node = self.graph.node(node_id)
            if not isinstance(node.spec, LlmNode):
                continue
            model = self.graph.model_source(node) or ""
            if state.values[pid] is None:
                deferred[model] = deferred.get(model, 0) + 1
            else:
                by_model.setdefault(model, []).append(pid)
        tokens: dict[int, int] = {}
        cached: dict[int, int] = {}
        prefixes: dict[str, ModelPrefixes] = {}
        for model in sorted(set(by_model) | set(deferred)):
            tokenizer = self._tokenizer_for(model)
            if tokenizer is None:
                continue
            ids = by_model.get(model, [])
            texts = [tokenizer.render_chat(self._messages(state, pid)) for pid in ids]
            sequences = tokenizer.encode_batch(texts) if texts else []
            index = PrefixIndex(ids, sequences, self.min_group_tokens)
            tokens.update(index.lengths)
            cached.update(index.cached)
            logical = sum(index.lengths[pid] * len(state.instances[pid]) for pid in ids)
            prefixes[model] = ModelPrefixes(
                model,
                len(ids),
                logical,
                index.total_tokens,
                index.unique_tokens,
                tuple(index.groups),
                deferred.get(model, 0),
            )
        return tokens, cached, prefixes

    def _messages(self, state: _State, pid: int) -> list[dict[str, str]]:
        node = self.graph.node(state.node[pid])
        values = state.values[pid]
        assert values is not None and isinstance(node.spec, LlmNode)
        if node.spec.system is None:
            return [{"role": "user", "content": values[0]}]
        return [{"role": "system", "content": values[0]}, {"role": "user", "content": values[1]}]

    def static_prefix_tokens(self, node: GraphNode) -> int | None:
        """Tokens every request of a deferred llm node starts with: its template text before the
        first tag, through the chat template (the last token is dropped: it may merge differently
        once the rest of the text follows)."""
        spec = node.spec
        tokenizer = self._tokenizer_for(self.graph.model_source(node) or "")
        if tokenizer is None or not isinstance(spec, LlmNode):
            return None
        if spec.system is not None and _head(spec.system) != spec.system:
            messages = [{"role": "system", "content": _head(spec.system) + _SENTINEL}]
        else:
            messages = [{"role": "user", "content": _head(spec.prompt) + _SENTINEL}]
            if spec.system is not None:
                messages.insert(0, {"role": "system", "content": spec.system})
        text = tokenizer.render_chat(messages)
        cut = text.find(_SENTINEL)
        if cut < 0:
            return None
        return max(0, len(tokenizer.encode_batch([text[:cut]])[0]) - 1)

    # -- results ----------------------------------------------------------------------------------

    def _physical_nodes(
        self, state: _State, tokens: dict[int, int], cached: dict[int, int]
    ) -> tuple[PhysicalNode, ...]:
        out: list[PhysicalNode] = []
        signatures: list[str] = []
        for pid, node_id in enumerate(state.node):
            node = self.graph.node(node_id)
            static, payload, ups = state.key[pid]
            instance = None if node.pure else f"{node_id}@{state.row[pid]}"
            signature = digest(
                self._static_text[node_id], payload, tuple(signatures[u] for u in ups), instance
            )
            signatures.append(signature)
            out.append(
                PhysicalNode(
                    pid,
                    node_id,
                    state.row[pid],
                    node.kind,
                    self.graph.model_source(node),
                    node.pure,
                    not node.renderable,
                    signature,
                    tuple(dict.fromkeys(ups)),
                    tuple(state.instances[pid]),
                    state.values[pid],
                    tokens.get(pid),
                    cached.get(pid, 0),
                )
            )
        return tuple(out)

    def _counters(
        self, assignment: Mapping[str, tuple[int, ...]], physical: tuple[PhysicalNode, ...], rows: int
    ) -> dict[str, NodeCounters]:
        counters: dict[str, NodeCounters] = {}
        for node in self.graph.nodes:
            column = assignment[node.id]
            used = set(column)
            owned = [physical[pid] for pid in used if physical[pid].node == node.id]
            logical_tokens = sum(physical[pid].prompt_tokens or 0 for pid in column)
            deferred_llm = isinstance(node.spec, LlmNode) and not node.renderable
            counters[node.id] = NodeCounters(
                node=node.id,
                kind=node.kind,
                model=self.graph.model_source(node),
                logical=rows,
                physical=len(used),
                owned=len(owned),
                deferred=not node.renderable,
                pure=node.pure,
                prompt_tokens=logical_tokens,
                physical_prompt_tokens=sum(p.prompt_tokens or 0 for p in owned),
                cached_prompt_tokens=sum(p.cached_tokens for p in owned),
                static_prefix_tokens=self.static_prefix_tokens(node) if deferred_llm else None,
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

    def add(self, node: str, row: int, key: tuple[int, Frozen, tuple[int, ...]], values: Any) -> int:
        self.node.append(node)
        self.row.append(row)
        self.key.append(key)
        self.values.append(values)
        self.instances.append([])
        return len(self.node) - 1


def _head(template: str) -> str:
    """The literal text of a template before its first tag."""
    cut = len(template)
    for tag in ("{{", "{%", "{#"):
        found = template.find(tag)
        if found >= 0:
            cut = min(cut, found)
    return template[:cut]
