"""From a consolidated batch and measured latency curves to the plan-search problem.

One task per node of the workflow graph (all of its rows run inside it as one batch), so the
problem's size depends on the graph, never on the batch. Every task depends on the graph nodes it
waits for (llm tasks and tool tasks alike).

LLM tasks: times come from the model's latency curves: prefill of the node's owned executions
(prompt tokens after merging equal requests, minus those a shared prefix already covers) and decode
steps at that batch size. Decode runs for the expected output length: the observed mean in an
`OutputLengthHistory` when one is given and has seen the node, else ``max_tokens``. Where the node's
model drafts speculatively (``speculative``: model source -> the engine's mode, absent or ``off``: no
drafting), a decode step appends more than one token and computes more than one row per sequence: the
node's decode steps are its output tokens over its observed tokens per step, each step priced at its
batch times the observed rows per step (`OutputLengthHistory.decode_rate`, measured per node and mode
by earlier runs; 1 and 1 until then). Requests
rendered only at run time (deferred) are estimated from their static prefix plus the expected output
of the llm results they read. A scored choice node (``choices`` with ``choice_mode: score``) decodes
nothing: it is priced as the prefill of its prompt plus one batched prefill of its options after the
shared prompt (`LatencyCurves.score_s`), with option tokens counted by the model's tokenizer (without
one: a token per 4 UTF-8 bytes), and its expected output is its longest option. A node of ``n``
samples decodes ``n`` sequences per call (``n`` times the batch at each decode step) after one
prefill of the prompt (the samples share it through the prefix cache), and a request reading it reads
``n`` outputs. Model load time:
``model_load_s`` if given, else the profile's measured load time, else `DEFAULT_MODEL_LOAD_S`.

KV parents (the rule): a deferred llm node N shares its parent P's prefix when P is an llm node N
waits for directly, with the same model, the same system prompt, and N's prompt template begins with
P's whole prompt template, so every row's request to N starts with that row's request to P (loop
iterations of one node qualify: their templates are equal and the iteration-only part comes after
the shared text). The shared tokens per request are P's prompt tokens; `kv_saving_s` is the prefill
they would cost N, `kv_move_s` the time to copy their KV for N's batch at the profiled bandwidth
(unmeasured: as dear as recomputing).

Remote llm nodes (a `source: openai` model): a `ToolTask`, not an `LLMTask` -- see `plan/remote_task.py`.

Data-parallel splits: with several workers, an llm task offers splits of its instances over 2, 4,
8, ... and all workers (at most one instance per share): a share is priced like the whole node at the
share's batch size (ceil of the calls over the ways), and each share pays the node's shared prompt
prefix (the tokens the prefix cache covers) once more, prefilled or moved, whichever the curves say
is cheaper, since each worker that runs a share needs it (`split_degrees`, `_split`).

Tool tasks: ``tool_cost_s(node, physical_calls)`` gives a tool node's seconds on the CPU tool pool
(the Processor plugs in its measured tool cost model). By default every call takes the node's
``expected_latency_s`` (or `DEFAULT_TOOL_CALL_S`) and the calls run `TOOL_POOL_WIDTH` at a time.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping

from halo.plan.consolidated_graph import ConsolidatedGraph
from halo.plan.cost import (
    FOREACH_GUESS,
    PLAIN_DECODE,
    DecodeRate,
    LatencyCurves,
    OutputLengthHistory,
    calls_key,
    decode_key,
    output_key,
)
from halo.plan.cost.remote_latency import RemoteLatencyModel
from halo.plan.remote_task import remote_task
from halo.plan.search import LLMTask, PlanProblem, Split, ToolTask, Worker
from halo.spec.graph import GraphNode

DEFAULT_MODEL_LOAD_S = 4.0  # reading and converting the default GGUF on 2 cores (measured ~3.5-4.7 s)
DEFAULT_TOOL_CALL_S = 0.05  # one tool call before anything was observed or declared
TOOL_POOL_WIDTH = 16  # tool calls the CPU pool runs at once

ToolCost = Callable[[GraphNode, int], float]


def default_tool_cost_s(node: GraphNode, physical_calls: int) -> float:
    """Seconds a tool node's calls occupy the pool: waves of `TOOL_POOL_WIDTH` calls of the declared latency."""
    per_call = node.spec.expected_latency_s
    per_call = DEFAULT_TOOL_CALL_S if per_call is None else float(per_call)
    return per_call * math.ceil(max(physical_calls, 0) / TOOL_POOL_WIDTH)


def build_plan_problem(
    graph: ConsolidatedGraph,
    curves_for: Callable[[str], LatencyCurves],
    workers: int = 1,
    model_load_s: Mapping[str, float] | None = None,
    epoch_overhead_s: float = 0.005,
    *,
    tool_cost_s: ToolCost | None = None,
    output_history: OutputLengthHistory | None = None,
    remote_latency: RemoteLatencyModel | None = None,
    makespan_weight: float = 1.0,
    load_weight: float = 0.0,
    speculative: Mapping[str, str] | None = None,
) -> PlanProblem:
    wf = graph.workflow
    speculative = speculative or {}
    tool_cost = tool_cost_s or default_tool_cost_s
    remote_models = wf.remote_models()
    remote_latency = remote_latency or RemoteLatencyModel()
    tasks: list[LLMTask] = []
    tools: list[ToolTask] = []
    loads: dict[str, float] = {}
    expected_out: dict[str, int] = {}  # llm node -> expected output tokens per call
    prompt_of: dict[str, int] = {}  # llm node -> estimated prompt tokens per request
    per_call = 0.0  # every logical call alone, plus model loads: the plain way of running the batch
    for node in wf.nodes:  # topological order
        deps = tuple(node.upstream)
        counters = graph.counters[node.id]
        fan, alone = calls_per_instance(node, wf.model_source(node), output_history), 1.0
        if counters.elements is not None:  # a map over row inputs: its element calls are counted, not guessed
            fan = counters.elements.distinct / max(counters.owned, 1)
            alone = counters.elements.elements / max(counters.elements.distinct, 1)  # per-call runs repeats too
        if node.kind != "llm":
            tools.append(ToolTask(node.id, float(tool_cost(node, math.ceil(max(counters.owned, 0) * fan))), deps))
            per_call += counters.logical * fan * alone * float(tool_cost(node, 1))
            continue
        model = wf.model_source(node) or "default"
        remote = remote_models.get(model)
        if remote is not None:  # runs elsewhere, concurrently: priced like a tool (see remote_task)
            task, one_call, expected_out[node.id], prompt_of[node.id] = remote_task(
                graph, node, remote, remote_latency, output_history, fan, expected_out
            )
            tools.append(task)
            per_call += counters.logical * fan * alone * one_call
            continue
        curves = curves_for(model)
        if model not in loads:
            measured = curves.model_load_s
            loads[model] = DEFAULT_MODEL_LOAD_S if measured is None else float(measured)
        batch = math.ceil(max(counters.owned, 0) * fan)  # calls: a map's elements, a conditional's that run
        options = scored_option_tokens(graph, node)
        max_tokens = int(node.spec.max_tokens)
        if options is not None:
            out = max(options)
        else:
            out = output_history.expected(output_key(node, model), max_tokens) if output_history else max_tokens
        samples = int(getattr(node.spec, "n", 1))
        expected_out[node.id] = out * samples  # what a request reading this node's output reads
        parent = _kv_parent(graph, node, model) if counters.deferred else None
        if counters.deferred:
            upstream_out = sum(expected_out.get(d, 0) for d in deps)
            shared = prompt_of[parent] if parent else 0
            prompt = max((counters.static_prefix_tokens or 0) + upstream_out, shared + upstream_out)
            cached = 0
        else:
            shared = 0
            prompt = counters.physical_prompt_tokens // max(counters.owned, 1)
            cached = counters.cached_prompt_tokens // max(counters.owned, 1)
        prompt_of[node.id] = prompt
        prompt_prefill = curves.prefill_s(prompt - cached, cached, batch)
        rate = decode_rate(node, model, speculative, output_history) if options is None else PLAIN_DECODE
        if options is not None:
            prefill, decode = curves.score_s(prompt, cached, options, batch), 0.0
            one_call = curves.score_s(prompt, 0, options, 1)
        else:
            prefill = prompt_prefill
            decode = decode_s(curves, rate, batch * samples, prompt, out)  # n samples: n sequences per step
            one_call = curves.prefill_s(prompt, 0, 1) + decode_s(curves, rate, samples, prompt, out)
        per_call += counters.logical * fan * alone * one_call
        saving = move = 0.0
        if parent and shared > 0:
            saving = min(prefill, max(0.0, prompt_prefill - curves.prefill_s(prompt - shared, shared, batch)))
            measured_move = curves.kv_move_s(shared, batch)
            move = saving if measured_move is None else measured_move
        kv_shared = shared if parent and saving > 0 else 0
        splits = tuple(
            _split(curves, k, batch, prompt, cached, kv_shared, samples, out, options, rate)
            for k in split_degrees(workers, counters.owned)
        )
        tasks.append(
            LLMTask(
                node.id,
                model,
                prefill,
                decode,
                depends_on=deps,
                kv_parent=parent if saving > 0 else None,
                kv_saving_s=saving,
                kv_move_s=move,
                # as the engines count them: each of n samples is a request of the whole prompt
                prompt_tokens=(prompt * batch if counters.deferred else counters.physical_prompt_tokens) * samples,
                output_tokens=0 if options is not None else out * samples * batch,  # scoring generates nothing
                instances=counters.owned,
                splits=splits,
            )
        )
    loads |= dict(model_load_s or {})
    per_call += sum(loads.values())  # the plain way loads every model once too (none is resident yet)
    return PlanProblem(
        tasks=tuple(tasks),
        workers=tuple(Worker(f"w{i}") for i in range(workers)),
        model_load_s=loads,
        epoch_overhead_s=epoch_overhead_s,
        makespan_weight=makespan_weight,
        load_weight=load_weight,
        tools=tuple(tools),
        per_call_s=per_call,
    )


def decode_rate(
    node: GraphNode, model: str, speculative: Mapping[str, str], history: OutputLengthHistory | None
) -> DecodeRate:
    """What a decode step of `node`'s sequences does: `PLAIN_DECODE` unless its model drafts and an
    earlier run measured the node under that mode."""
    mode = speculative.get(model, "off")
    if mode == "off" or history is None:
        return PLAIN_DECODE
    return history.decode_rate(decode_key(node, model, mode))


def decode_s(curves: LatencyCurves, rate: DecodeRate, sequences: int, prompt: int, out: int) -> float:
    """Seconds `sequences` sequences take to decode `out` tokens each after a `prompt`-token prompt (the
    first token comes from the prefill): out - 1 tokens over `rate`'s tokens per step, each step
    computing `rate`'s rows per sequence, attending on average over the prompt and half the output."""
    tokens = max(0, out - 1)
    if not sequences or not tokens:
        return 0.0
    steps = tokens / rate.tokens_per_step
    return steps * curves.decode_step_s(sequences * rate.rows_per_step, prompt + (tokens + 1) / 2)


def split_degrees(workers: int, instances: int) -> list[int]:
    """The split degrees a node of `instances` executions offers on `workers`: 2, 4, 8, ... and the
    largest, never more ways than instances (identical workers make other degrees rarely worth the
    search's branches)."""
    top = min(workers, instances)
    ways = [1 << e for e in range(1, top.bit_length()) if 1 << e <= top]
    if top >= 2 and top not in ways:
        ways.append(top)
    return ways


def _split(
    curves: LatencyCurves,
    ways: int,
    batch: int,
    prompt: int,
    cached: int,
    shared: int,
    samples: int,
    out: int,
    options: list[int] | None,
    rate: DecodeRate = PLAIN_DECODE,
) -> Split:
    """One share of a `ways`-way split, priced as the module docstring says."""
    share = math.ceil(batch / ways)
    prefix = 0.0
    if cached > 0:  # each share's worker computes (or receives) the shared prefix once more
        recompute = curves.prefill_s(cached, 0, 1)
        moved = curves.kv_move_s(cached, 1)
        prefix = recompute if moved is None else min(recompute, moved)
    prompt_prefill = curves.prefill_s(prompt - cached, cached, share)
    if options is not None:
        prefill, decode = curves.score_s(prompt, cached, options, share), 0.0
    else:
        prefill = prompt_prefill
        decode = decode_s(curves, rate, share * samples, prompt, out)
    saving = move = 0.0
    if shared > 0:
        saving = min(prefill, max(0.0, prompt_prefill - curves.prefill_s(prompt - shared, shared, share)))
        measured_move = curves.kv_move_s(shared, share)
        move = saving if measured_move is None else measured_move
    return Split(ways, prefill + prefix, decode, min(saving, prefill + prefix), move)


def calls_per_instance(node: GraphNode, model: str | None, history: OutputLengthHistory | None) -> float:
    """Calls one instance of `node` is expected to make: 1 for a plain node; for a conditional one the
    observed share that ran (1.0 until seen), for a map the observed mean elements (`FOREACH_GUESS`,
    at most `max_items`, until seen)."""
    spec = node.spec
    if spec.when is None and spec.foreach is None:
        return 1.0
    default = float(min(spec.max_items, FOREACH_GUESS)) if spec.foreach is not None else 1.0
    return history.expected_calls(calls_key(node, model), default) if history is not None else default


def scored_option_tokens(graph: ConsolidatedGraph, node: GraphNode) -> list[int] | None:
    """Token counts of a scored choice node's options (None for any other node), as the engine
    tokenizes them: each option's text on its own, without BOS."""
    spec = node.spec
    if node.kind != "llm" or getattr(spec, "choice_mode", "greedy") != "score" or not spec.choices:
        return None
    tokenizer = graph.tokenizers.get(graph.workflow.model_source(node) or "")
    if tokenizer is None:
        return [max(1, math.ceil(len(c.encode()) / 4)) for c in spec.choices]
    return [max(1, len(ids)) for ids in tokenizer.encode_batch(list(spec.choices))]


def _kv_parent(graph: ConsolidatedGraph, node: GraphNode, model: str) -> str | None:
    """The llm node whose requests every request of `node` starts with (the module docstring's rule)."""
    wf = graph.workflow
    order = {n.id: i for i, n in enumerate(wf.nodes)}
    best: tuple[int, int, str] | None = None  # longest shared template, then the latest (nearest) node
    for up in node.upstream:
        parent = wf.node(up)
        if parent.kind != "llm" or (wf.model_source(parent) or "default") != model:
            continue
        if parent.spec.system != node.spec.system or not node.spec.prompt.startswith(parent.spec.prompt):
            continue
        candidate = (len(parent.spec.prompt), order[up], up)
        if best is None or candidate > best:
            best = candidate
    return None if best is None else best[2]
