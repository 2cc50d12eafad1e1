"""Target (b): the per-call pattern over an OpenAI-compatible endpoint on the same engine.

The client walks each query's DAG (bench/systems/per_call.py's `walk_row`): every llm call is its own
POST /v1/chat/completions, batched by the server's engine loop with whatever else is in flight; tools
run here on one shared runner without cache or coalescing. Nothing is consolidated across queries.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import httpx
from halo.engine import SamplingParams
from halo.runtime.compiled import CompiledWorkflow
from halo.runtime.tools.tool_runner import ToolRunner

from bench.online.load_generator import QueryOutcome
from bench.online.local_server import MODEL_NAME
from bench.systems.per_call import walk_row

NAME = "per-call"


class ChatFailed(Exception):
    """A chat completion answered with a non-200 status."""

    def __init__(self, status: int, text: str) -> None:
        super().__init__(f"HTTP {status}: {text[:200]}")
        self.status = status


class PerCallTarget:
    """One query = one DAG walk on the client; llm calls over HTTP, tools on `tools`."""

    name = NAME

    def __init__(self, client: httpx.AsyncClient, app: CompiledWorkflow, tools: ToolRunner) -> None:
        self.client = client
        self.app = app
        self.tools = tools

    async def send(self, row: Mapping[str, Any]) -> QueryOutcome:
        requests = 0

        async def generate(messages: list[dict[str, str]], params: SamplingParams) -> str:
            nonlocal requests
            requests += 1
            body: dict[str, Any] = {"model": MODEL_NAME, "messages": messages, "max_tokens": params.max_tokens,
                                    "temperature": params.temperature, "top_p": params.top_p}
            if params.seed is not None:
                body["seed"] = params.seed
            if params.stop:
                body["stop"] = list(params.stop)
            reply = await self.client.post("/v1/chat/completions", json=body)
            if reply.status_code != 200:
                raise ChatFailed(reply.status_code, reply.text)
            return reply.json()["choices"][0]["message"]["content"]

        try:
            outputs, failed = await walk_row(self.app, row, generate, self.tools)
        except ChatFailed as exc:
            return QueryOutcome(None, str(exc), status=exc.status, requests=requests)
        return QueryOutcome(outputs, failed, requests=requests)
