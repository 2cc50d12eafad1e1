"""What one system's run of one batch returns, in the shape of `RunResult`, plus the shared node policy."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from halo.engine import LLMEngine
from halo.errors import HaloError
from halo.runtime.node_io import InstanceWork, fallback_result, map_result
from halo.runtime.results import RunResult
from halo.spec.graph import GraphNode


@dataclass
class SystemRun:
    """Outputs (one dict per row, input order), row errors, and the counters every system reports."""

    system: str
    outputs: list[dict[str, Any]]
    errors: dict[int, str] = field(default_factory=dict)  # row -> failing node
    wall_s: float = 0.0
    llm_calls_logical: int = 0
    llm_calls_executed: int = 0
    tool_calls_logical: int = 0
    tool_calls_executed: int = 0
    prompt_tokens: int = 0
    prefill_tokens: int = 0
    cached_tokens: int = 0
    decode_tokens: int = 0
    plan_s: float = 0.0  # consolidation + planning inside wall_s (halo only)
    # halo only: per graph node [instances, first start, last end] in seconds from the first span, in
    # start order; the llm nodes' chain is what bounds the run once distinct work is small
    node_spans: dict[str, list[float]] = field(default_factory=dict)

    @classmethod
    def from_result(cls, system: str, result: RunResult) -> SystemRun:
        s = result.stats
        return cls(
            system,
            result.outputs,
            {e.row: e.node for e in result.errors},
            s.wall_s,
            s.llm_calls_logical,
            s.llm_calls_executed,
            s.tool_calls_logical,
            s.tool_calls_executed,
            s.prompt_tokens,
            s.prefill_tokens,
            s.cached_tokens,
            s.decode_tokens,
            s.plan_s,
            _node_spans(result),
        )

    def counters(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if k not in ("outputs", "errors", "system")}


def _node_spans(result: RunResult) -> dict[str, list[float]]:
    if not result.timeline:
        return {}
    zero = min(span.start for span in result.timeline)
    spans: dict[str, list[float]] = {}
    for span in sorted(result.timeline, key=lambda s: s.start):
        entry = spans.setdefault(f"{span.kind}:{span.node}", [0, span.start - zero, 0.0])
        entry[0] += 1
        entry[2] = max(entry[2], span.end - zero)
    return {name: [int(n), round(a, 3), round(b, 3)] for name, (n, a, b) in spans.items()}


class EngineCounters:
    """Token counters of an engine over a span of time (its stats are cumulative)."""

    def __init__(self, engine: LLMEngine) -> None:
        self.engine = engine
        self.before = engine.stats()

    def into(self, run: SystemRun) -> None:
        after = self.engine.stats()
        run.prompt_tokens = after.prompt_tokens - self.before.prompt_tokens
        run.prefill_tokens = after.prefill_tokens - self.before.prefill_tokens
        run.cached_tokens = after.cached_tokens - self.before.cached_tokens
        run.decode_tokens = after.decode_tokens - self.before.decode_tokens


def attempts(node: GraphNode) -> int:
    """How many times a failing instance is tried (as the serial baseline does)."""
    return node.spec.retries + 1 if node.spec.on_error == "retry" else 1


def settle(node: GraphNode, error: str) -> tuple[Any, str | None]:
    """An instance that failed every attempt: its fallback under `on_error: default`, else the error."""
    if node.spec.on_error == "default":
        return fallback_result(node), None
    return None, error


async def with_policy(node: GraphNode, attempt: Callable[[], Awaitable[Any]]) -> tuple[Any, str | None]:
    """Run `attempt` under the node's `on_error` policy: (result, None) or (None, error message)."""
    error = ""
    for _ in range(attempts(node)):
        try:
            return await attempt(), None
        except (HaloError, ValueError) as exc:
            error = str(exc)
    return settle(node, error)


def element_results(
    node: GraphNode, work: InstanceWork, outcomes: Sequence[tuple[Any, str | None]]
) -> tuple[Any, str | None]:
    """An instance's result from its calls' (result, error) under the policy, as the Processor reads
    them: one call's as it is; a foreach node's elements as `map_result`, the first failed one failing it."""
    if not work.mapped:
        return outcomes[0]
    for index, (_, error) in enumerate(outcomes):
        if error is not None:
            return None, f"element {index + 1} of {len(outcomes)}: {error}"
    return map_result(node, [value for value, _ in outcomes]), None
