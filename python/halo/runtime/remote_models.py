"""An app's remote (`source: openai`) models: their workers, the tokenizers planning counts with, their
identities in the result cache, and what their calls teach the latency model.

`compile` starts one `RemoteWorker` per declared remote model, after the local workers (its index is its
place in the app's worker list and its ready queue in the scheduler core); an `api_key_env` naming an
unset variable fails compile with the declaration's location. A remote model's identity (what its
results are cached under, `result_keys.py`) is its endpoint: api + base URL + model name, not a weights
hash; Halo cannot see the server's weights, so a server that swaps them under the same name keeps
the old results until the cache is cleared (docs/result_cache.md).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from halo.engine.checkpoint import load_tokenizer
from halo.plan.chat_tokenizer import ChatTokenizer
from halo.plan.cost.remote_latency import RemoteLatencyModel
from halo.plan.remote_task import EstimateTokenizer, model_endpoint
from halo.runtime.remote_worker import RemoteWorker
from halo.spec.document import ModelSpec, remote_source
from halo.spec.errors import SpecError, SpecIssue
from halo.spec.workflow import Workflow

IDENTITY_KIND = "openai-endpoint"


def remote_models(workflow: Workflow) -> dict[str, tuple[str, ModelSpec]]:
    """Model source -> (declared name, declaration) of every remote model the workflow's llm nodes use."""
    graph = workflow.graph
    used = {graph.model_source(n) for n in graph.nodes if n.kind == "llm"}
    declared = ((remote_source(name), name, spec) for name, spec in workflow.spec.models.items() if spec.remote)
    return {source: (name, spec) for source, name, spec in declared if source in used}


def api_key(workflow: Workflow, name: str, spec: ModelSpec) -> str | None:
    """The API key of remote model `name` from its `api_key_env`; SpecError (located) when unset."""
    if spec.api_key_env is None:
        return None
    value = os.environ.get(spec.api_key_env)
    if value:
        return value
    where = workflow._locations.get(("models", name, "api_key_env")) or workflow._locations.get(("models", name))
    raise SpecError(
        [
            SpecIssue(
                f"model '{name}': api_key_env names {spec.api_key_env}, which is not set in the environment "
                f"(export {spec.api_key_env}=<key>, or drop api_key_env for a server without keys)",
                line=None if where is None else where.line,
                file=None if where is None else where.file,
            )
        ],
        title="cannot start remote model",
    )


def counting_tokenizers(workflow: Workflow) -> dict[str, ChatTokenizer]:
    """Per remote model source, what planning counts its prompt tokens with: the declared `tokenizer`,
    else the 4-bytes-per-token estimate."""
    out: dict[str, ChatTokenizer] = {}
    for source, (_, spec) in remote_models(workflow).items():
        out[source] = load_tokenizer(spec.tokenizer) if spec.tokenizer else EstimateTokenizer()
    return out


def start_remote_workers(workflow: Workflow, first_index: int) -> list[RemoteWorker]:
    """One worker per remote model, indices from `first_index` (every key is checked before any starts)."""
    models = remote_models(workflow)
    keys = {source: api_key(workflow, name, spec) for source, (name, spec) in models.items()}
    workers = []
    for index, (source, (name, spec)) in enumerate(sorted(models.items()), start=first_index):
        template = load_tokenizer(spec.tokenizer) if spec.tokenizer and spec.api == "completions" else None
        workers.append(RemoteWorker(index, source, name, spec, keys[source], template))
    return workers


def remote_identities(workflow: Workflow) -> dict[str, dict[str, Any]]:
    """Per remote model source, its identity in result-cache keys: the endpoint, never its weights."""
    return {
        source: {"kind": IDENTITY_KIND, "endpoint": model_endpoint(spec)}
        for source, (_, spec) in remote_models(workflow).items()
    }


def learn_latencies(model: RemoteLatencyModel, workers: Mapping[str, RemoteWorker]) -> None:
    """Feed the calls the workers observed since last time into `model`'s curves."""
    for worker in workers.values():
        endpoint = model_endpoint(worker.spec)
        observed, worker.observed = worker.observed, []
        for prompt_tokens, output_tokens, seconds in observed:
            model.observe(endpoint, prompt_tokens, output_tokens, seconds)
