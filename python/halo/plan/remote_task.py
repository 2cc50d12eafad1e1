"""How the plan prices an llm node whose model is remote (`source: openai`): as a task of the tool pool.

Why not an `LLMTask`: the plan-search workers are local engines (rule 2-4 of `plan/search/problem.py`:
one model per worker per epoch, load times, KV locality). A remote endpoint holds no local engine, has
no model to load or KV to move, and runs up to `max_concurrency` calls at once beside every local
worker. That is exactly a tool's semantics (rule 5-6: it runs off the engines in the first epoch its
inputs are complete, overlapped with the epoch's LLM work, and only time beyond that work costs), so
the node becomes a `ToolTask` whose seconds come from the endpoint's learned latency curve
(`plan/cost/remote_latency.py`): a call of the node's prompt and expected output size, in waves of
`max_concurrency` calls. Emit pins the node to its endpoint's worker (`ExecutionGraph.pinned`), and
every search (DP, greedy, MILP) plans it without knowing it is remote.

Prompt tokens are counted with the tokenizer the model declares (`tokenizer:`), else estimated by
`EstimateTokenizer`: one token per 4 UTF-8 bytes of the prompt text.
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Mapping

from halo.plan.consolidated_graph import ConsolidatedGraph
from halo.plan.cost import OutputLengthHistory, output_key
from halo.plan.cost.remote_latency import RemoteLatencyModel, endpoint_key
from halo.plan.search import ToolTask
from halo.spec.document import ModelSpec
from halo.spec.graph import GraphNode

BYTES_PER_TOKEN = 4  # the estimate without a tokenizer (English text runs 3.5-4.5 bytes per token)


class EstimateTokenizer:
    """A `ChatTokenizer` for counting only: the messages' text joined, a token per 4 UTF-8 bytes.

    Ids are checksums of the 4-byte pieces, so equal texts give equal ids and a shared text prefix a
    shared id prefix; they mean nothing to any model (a remote model is sent messages, never ids)."""

    def render_chat(self, messages: list[dict[str, str]]) -> str:
        return "\n".join(f"{m['role']}: {m['content']}" for m in messages) + "\nassistant:"

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        out = []
        for text in texts:
            data = text.encode()
            out.append([zlib.crc32(data[i : i + BYTES_PER_TOKEN]) for i in range(0, len(data), BYTES_PER_TOKEN)])
        return out


def model_endpoint(model: ModelSpec) -> str:
    """The endpoint identity of a declared remote model (`endpoint_key`)."""
    assert model.base_url is not None and model.model is not None
    return endpoint_key(model.api, model.base_url, model.model)


def remote_task(
    graph: ConsolidatedGraph,
    node: GraphNode,
    model: ModelSpec,
    latency: RemoteLatencyModel,
    history: OutputLengthHistory | None,
    fan: float,
    expected_out: Mapping[str, int],
) -> tuple[ToolTask, float, int, int]:
    """The node's task, the seconds of one call alone, its expected output tokens per request (all `n`
    samples) and its prompt tokens per request."""
    counters = graph.counters[node.id]
    source = graph.workflow.model_source(node)
    max_tokens = int(node.spec.max_tokens)
    out = history.expected(output_key(node, source), max_tokens) if history is not None else max_tokens
    samples = int(getattr(node.spec, "n", 1))
    if counters.deferred:  # rendered at run time: its static text plus what it reads from upstream
        prompt = (counters.static_prefix_tokens or 0) + sum(expected_out.get(d, 0) for d in node.upstream)
    else:
        prompt = counters.physical_prompt_tokens // max(counters.owned, 1)
    endpoint = model_endpoint(model)
    one_call = latency.call_s(endpoint, prompt, out * samples)
    calls = math.ceil(max(counters.owned, 0) * fan)
    seconds = one_call * math.ceil(calls / model.max_concurrency)
    return ToolTask(node.id, seconds, tuple(node.upstream)), one_call, out * samples, prompt
