"""Rows for the online load with few duplicates, so halo-vs-per-call compares serving, not deduplication.

The workload generators draw from small vocabularies (multi-agent-voting: 144 distinct rows among 911),
so a halo epoch mostly deduplicates equal rows, which the per-call pattern cannot. Here each arrival's
main text gets one more sentence drawn from a large vocabulary plus a per-arrival number: every row is
distinct (duplicates only by a ~1e-6 chance), the prompt's shape and shared prefix (system prompt,
template) stay the workload's own, and answers that depend on the text (arithmetic problems) still hold.
"""

from __future__ import annotations

import random
from typing import Any

# The field each workload's first prompt renders from its row; workloads not listed keep their rows.
TEXT_FIELD = {
    "multi-agent-voting": "item",
    "multi-step-retrieval": "question",
    "multi-turn": "turn1",
    "adversarial-reasoning": "problem",
}
FIRST = ("Alex", "Bea", "Carlos", "Dana", "Eli", "Fatima", "Gus", "Hana", "Ivan", "Jo", "Kai", "Lena", "Mo", "Nia")
LAST = ("Park", "Quinn", "Reyes", "Singh", "Tanaka", "Ueda", "Vance", "Weber", "Xu", "Young", "Zhou", "Okafor")
CITY = ("Lyon", "Osaka", "Quito", "Perth", "Oslo", "Lagos", "Austin", "Porto", "Hanoi", "Cusco", "Leeds", "Graz")
WHEN = ("on Monday", "last week", "yesterday", "this morning", "in March", "after the holidays", "on payday")


def distinct_rows(workload: str, n: int, seed: int, api: str) -> list[dict[str, Any]]:
    """`n` rows of `workload` (the generator's rows, cycled) whose main text differs from row to row."""
    from bench.generators.workloads import rows as make_rows

    base = make_rows(workload, n, seed, api)
    field = TEXT_FIELD.get(workload)
    if field is None:
        return base
    rng = random.Random(f"distinct-{workload}-{seed}")
    out = []
    for i, row in enumerate(base):
        detail = (
            f"(Asked by {rng.choice(FIRST)} {rng.choice(LAST)} from {rng.choice(CITY)} {rng.choice(WHEN)},"
            f" ticket {rng.randrange(10_000, 100_000)}-{i}.)"
        )
        out.append({**row, field: f"{row[field]} {detail}"})
    return out
