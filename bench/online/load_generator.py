"""Open-loop Poisson load: queries arrive at exponential gaps whatever the server's state, each timed to its end.

Invariant: the arrival schedule depends only on (rate, duration, seed), never on how fast the target
answers, so both targets see the same offered load and the same rows in the same order.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class QueryOutcome:
    """What a target returns for one query: outputs, first failing node, and the worst HTTP status seen."""

    outputs: dict[str, Any] | None
    error: str | None = None
    status: int = 200
    requests: int = 1


@dataclass
class RateResult:
    """One (workload, target, offered rate) cell: every query's latency and how it ended."""

    offered_rate: float
    duration_s: float
    sent: int
    completed: int
    lost: int  # not answered before the drain ended, or the connection failed
    server_errors: int  # queries that saw an HTTP 5xx
    client_errors: int  # queries that saw an HTTP 4xx
    row_errors: int  # answered, with a failing node
    requests: int  # HTTP requests the target made
    achieved_rate: float  # completed / (last completion - first arrival)
    latencies_s: list[float] = field(default_factory=list)
    outputs: list[dict[str, Any] | None] = field(default_factory=list)  # by arrival index; None if lost

    def percentile(self, q: float) -> float | None:
        if not self.latencies_s:
            return None
        ordered = sorted(self.latencies_s)
        return ordered[min(len(ordered) - 1, max(0, round(q / 100 * len(ordered) + 0.5) - 1))]


Send = Callable[[Mapping[str, Any]], Awaitable[QueryOutcome]]


def arrival_times(rate: float, duration_s: float, seed: int) -> list[float]:
    """Offsets (s) of Poisson arrivals at `rate` per second within [0, duration_s); at least one."""
    rng = random.Random(f"arrivals-{rate}-{seed}")
    times, t = [], rng.expovariate(rate)
    while t < duration_s:
        times.append(t)
        t += rng.expovariate(rate)
    return times or [0.0]


async def drive(send: Send, rows: Sequence[Mapping[str, Any]], rate: float, duration_s: float, *, seed: int,
                drain_s: float) -> RateResult:
    """Send `rows[i]` at the i-th arrival (rows cycle if there are fewer); wait up to `drain_s` after the last."""
    schedule = arrival_times(rate, duration_s, seed)
    start = time.perf_counter()
    finished: list[float | None] = [None] * len(schedule)
    outcomes: list[QueryOutcome | None] = [None] * len(schedule)

    async def one(i: int) -> None:
        sent_at = time.perf_counter()
        try:
            outcomes[i] = await send(rows[i % len(rows)])
        except Exception as exc:  # a refused or dropped connection: the query is lost
            outcomes[i] = QueryOutcome(None, f"{type(exc).__name__}: {exc}", status=0)
            return
        finished[i] = time.perf_counter() - sent_at

    tasks = []
    for i, at in enumerate(schedule):
        await asyncio.sleep(max(0.0, start + at - time.perf_counter()))
        tasks.append(asyncio.create_task(one(i)))
    _, pending = await asyncio.wait(tasks, timeout=max(0.0, start + duration_s + drain_s - time.perf_counter()))
    for task in pending:
        task.cancel()
    await asyncio.gather(*pending, return_exceptions=True)
    ends = [start + schedule[i] + f for i, f in enumerate(finished) if f is not None]
    done = [o for o in outcomes if o is not None and o.status == 200 and o.outputs is not None]
    span = (max(ends) - (start + schedule[0])) if ends else 0.0
    return RateResult(
        offered_rate=rate,
        duration_s=duration_s,
        sent=len(schedule),
        completed=len(done),
        lost=sum(1 for o in outcomes if o is None or o.status == 0),
        server_errors=sum(1 for o in outcomes if o is not None and o.status >= 500),
        client_errors=sum(1 for o in outcomes if o is not None and 400 <= o.status < 500),
        row_errors=sum(1 for o in done if o.error is not None),
        requests=sum(o.requests for o in outcomes if o is not None),
        achieved_rate=len(done) / span if span > 0 else 0.0,
        latencies_s=[f for f, o in zip(finished, outcomes, strict=True) if f is not None and o in done],
        outputs=[o.outputs if o is not None and o in done else None for o in outcomes],
    )
