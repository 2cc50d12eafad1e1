"""Target (a): `halo serve` takes one row per request and answers when its epoch is done."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import httpx

from bench.online.load_generator import QueryOutcome

NAME = "halo-serve"


class WorkflowTarget:
    """POST /v1/workflows/{name}/runs with the row, then GET /v1/runs/{id}?wait=true until it is done."""

    name = NAME

    def __init__(self, client: httpx.AsyncClient, workflow: str) -> None:
        self.client = client
        self.workflow = workflow

    async def send(self, row: Mapping[str, Any]) -> QueryOutcome:
        created = await self.client.post(f"/v1/workflows/{self.workflow}/runs", json=dict(row))
        if created.status_code != 202:
            return QueryOutcome(None, created.text[:200], status=created.status_code)
        run_id = created.json()["ids"][0]
        requests = 1
        while True:  # a wait answers at the server's wait timeout even if the run is not done yet
            got = await self.client.get(f"/v1/runs/{run_id}", params={"wait": "true"})
            requests += 1
            if got.status_code != 200:
                return QueryOutcome(None, got.text[:200], status=got.status_code, requests=requests)
            record = got.json()
            if record["status"] in ("succeeded", "failed", "cancelled"):
                break
        return QueryOutcome(record.get("output") or {}, _error_node(record.get("error")), requests=requests)


def _error_node(error: Any) -> str | None:
    if error is None:
        return None
    if isinstance(error, Mapping):
        return str(error.get("node") or error)
    return str(error)
