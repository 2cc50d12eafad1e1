"""The nine workloads: their YAML staged beside generated data, and their input rows by seed.

`stage(folder, ...)` copies each workload's YAML into `folder` with its database paths pointing at
the generated files (cached under `data_dir`) and, optionally, every llm node's `max_tokens` capped
(a `json_schema` node keeps its own: a JSON value cut short fails its node).
`rows(name, n, seed, api)` makes the batch of one workload.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import yaml

from bench.generators import corpus, passages
from bench.generators.tpch import tpch_database

WORKLOADS_DIR = Path(__file__).resolve().parents[1] / "workloads"
WORKLOADS = (
    "tpch-trident",
    "tpch-fanout",
    "multi-step-retrieval",
    "adversarial-reasoning",
    "multi-agent-voting",
    "multi-turn",
    "per-document-qa",
    "ticket-routing",
    "doc-passages",
)


def stage(
    folder: Path, names: list[str], data_dir: Path, *, scale_factor: float, seed: int, max_tokens: int | None = None
) -> dict[str, Path]:
    """Write each workload's YAML into `folder`, bound to its data; returns name -> staged YAML path."""
    folder.mkdir(parents=True, exist_ok=True)
    staged = {}
    for name in names:
        doc = yaml.safe_load((WORKLOADS_DIR / f"{name}.yaml").read_text())
        for database in (doc.get("databases") or {}).values():
            if database.get("path") == "tpch.duckdb":
                database["path"] = str(tpch_database(data_dir, scale_factor))
            elif database.get("path") == "docs.duckdb":
                database["path"] = str(corpus.documents_database(data_dir, seed))
        if max_tokens is not None:
            for node in doc["nodes"]:
                if node.get("kind") == "llm" and "json_schema" not in node:
                    node["max_tokens"] = min(int(node.get("max_tokens", max_tokens)), max_tokens)
        path = folder / f"{name}.yaml"
        path.write_text(yaml.safe_dump(doc, sort_keys=False, allow_unicode=True, width=1000))
        staged[name] = path
    return staged


def rows(name: str, n: int, seed: int, api: str) -> list[dict[str, Any]]:
    """`n` input rows of workload `name`; the same (name, n, seed) always gives the same rows."""
    rng = random.Random(f"{name}-{seed}")
    if name in ("tpch-trident", "tpch-fanout"):
        return [{"question": q, "api": api} for q in corpus.analytic_questions(rng, n)]
    if name in ("multi-step-retrieval", "per-document-qa"):
        return [{"question": q} for q in corpus.retrieval_questions(rng, n)]
    if name == "ticket-routing":
        return [{"ticket": t} for t in corpus.tickets(rng, n)]
    if name == "adversarial-reasoning":
        return [{"problem": p, "answer": a} for p, a in corpus.word_problems(rng, n)]
    if name == "multi-agent-voting":
        return [{"item": item} for item in corpus.review_items(rng, n)]
    if name == "multi-turn":
        return [{"turn1": a, "turn2": b, "turn3": c} for a, b, c in corpus.conversations(rng, n)]
    if name == "doc-passages":
        return [{"topic": t, "passage": p, "question": q} for t, p, q in passages.passages(rng, n)]
    raise ValueError(f"unknown workload {name!r} (known: {', '.join(WORKLOADS)})")
