"""Tools overlap model work: 32 rows each wait 0.5 s on a loopback HTTP call, and the recorded
timeline shows those calls in flight together and alongside the llm requests (no serialisation)."""

from __future__ import annotations

import halo
import pytest
from halo.spec import Workflow

pytestmark = pytest.mark.slow

ROWS = 32
DELAY_S = 0.5


def _union(intervals: list[tuple[float, float]]) -> list[tuple[float, float]]:
    merged: list[tuple[float, float]] = []
    for start, end in sorted(intervals):
        if merged and start <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(merged[-1][1], end))
        else:
            merged.append((start, end))
    return merged


def _overlap(a: list[tuple[float, float]], b: list[tuple[float, float]]) -> float:
    return sum(max(0.0, min(e1, e2) - max(s1, s2)) for s1, e1 in a for s2, e2 in b)


def test_http_latency_is_hidden_behind_model_work(http_server):
    wf = (
        Workflow("pipelined")
        .inputs("i", "topic")
        .llm("draft", prompt="Write a short note about {{ topic }}.", max_tokens=8)
        .http("lookup", http_server.url + "/count/pipe{{ i }}?delay=" + str(DELAY_S), response_path="n")
        .llm("final", prompt="Note: {{ draft.output }} (lookup {{ lookup.output }}). Title:", max_tokens=4)
        .outputs(final="final.output", n="lookup.output")
    )
    rows = [{"i": i, "topic": f"topic {i}"} for i in range(ROWS)]
    with halo.compile(wf, dtype="fp32") as app:
        res = app.run(rows)
    assert res.errors == []
    assert [o["n"] for o in res.outputs] == [1] * ROWS  # each row's call ran exactly once
    http = [(s.start, s.end) for s in res.timeline if s.node == "lookup"]
    llm = [(s.start, s.end) for s in res.timeline if s.kind == "llm"]
    assert len(http) == ROWS and all(end - start >= DELAY_S * 0.9 for start, end in http)
    serial_http = sum(end - start for start, end in http)  # what one call at a time would wait
    http_wall = sum(end - start for start, end in _union(http))
    # Calls run side by side: the time some call is in flight is a fraction of their summed time ...
    assert http_wall < serial_http / 4, (http_wall, serial_http)
    # ... and that time is spent while the model works: llm requests were running through most of it.
    covered = _overlap(_union(http), _union(llm))
    assert covered > 0.5 * http_wall, (covered, http_wall)
    assert all(s.ok for s in res.timeline)
    # (Barrier-free promotion is timing-dependent end to end under load; tests/test_core_scheduler.py
    # checks it on the scheduler core itself.)
