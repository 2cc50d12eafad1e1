"""Checks of llm nodes that run on a remote (`source: openai`) model: what the OpenAI wire format carries.

The request a remote model gets has OpenAI's fields only (halo serve accepts exactly these, and refuses
others: serve/openai_schemas.py): sampling, `n`, `stop`, and for chat a JSON `response_format`. A
`choices` or `regex` format, scoring and per-token log-probabilities have no such field, so a node
asking for them on a remote model is a located error here rather than a silently unconstrained call.
"""

from __future__ import annotations

from collections.abc import Sequence

from halo.spec.catalog import DeclaredNode
from halo.spec.document import WorkflowHeader
from halo.spec.nodes import DEFAULT_MODEL, LlmNode
from halo.spec.problem import Problem


def check_remote_nodes(header: WorkflowHeader, declared: Sequence[DeclaredNode], out: list[Problem]) -> None:
    for node in declared:
        spec = node.spec
        if not isinstance(spec, LlmNode):
            continue
        name = spec.model or DEFAULT_MODEL
        model = header.models.get(name)
        if model is None or not model.remote:
            continue
        where = f"model '{name}' is remote (source: openai)"
        path = node.path
        for field in ("choices", "regex"):
            if getattr(spec, field) is not None:
                out.append(
                    Problem(
                        path + (field,),
                        f"{where}: OpenAI requests carry no '{field}' constraint; use json_schema, or a local model",
                        node.id,
                    )
                )
        if spec.logprobs:
            out.append(Problem(path + ("logprobs",), f"{where}: 'logprobs' needs a local model", node.id))
        if spec.json_schema is not None and model.api == "completions":
            out.append(
                Problem(
                    path + ("json_schema",),
                    f"{where} with api: completions, which takes no response_format; use api: chat",
                    node.id,
                )
            )
