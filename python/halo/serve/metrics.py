"""Server counters and their Prometheus text rendering, plus the middleware that times every request."""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any

TOKEN_RATE_WINDOW_S = 10.0


class Metrics:
    """Counters updated from the event loop, the epoch runner and the engine loop (under one lock)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.started = time.monotonic()
        self.epochs = 0
        self.epoch_seconds = 0.0
        self.rows = {"succeeded": 0, "failed": 0}
        self.rejected: dict[str, int] = {}
        self.chat_requests = 0
        self.tokens = {"workflow": 0, "chat": 0}  # generated
        self.prompt_tokens = {"workflow": 0, "chat": 0}
        self.cached_tokens = {"workflow": 0, "chat": 0}
        self.busy_seconds: dict[str, float] = {}  # per node kind, summed over epochs
        self.latency: dict[tuple[str, str], list[float]] = {}  # (route, method) -> [sum, count]
        self.statuses: dict[tuple[str, int], int] = {}
        self._recent_tokens: deque[tuple[float, int]] = deque()
        self.gauges: dict[str, Callable[[], float]] = {}  # name -> live reading (queue depth, ...)

    def observe_epoch(self, seconds: float, succeeded: int, failed: int, stats: Any | None) -> None:
        with self._lock:
            self.epochs += 1
            self.epoch_seconds += seconds
            self.rows["succeeded"] += succeeded
            self.rows["failed"] += failed
            if stats is not None:
                self._add_tokens("workflow", stats.decode_tokens, stats.prompt_tokens, stats.cached_tokens)
                for kind, busy in stats.seconds_by_kind.items():
                    self.busy_seconds[kind] = self.busy_seconds.get(kind, 0.0) + busy

    def observe_chat(self, generated: int, prompt: int, cached: int) -> None:
        with self._lock:
            self.chat_requests += 1
            self._add_tokens("chat", generated, prompt, cached)

    def _add_tokens(self, source: str, generated: int, prompt: int, cached: int) -> None:
        self.tokens[source] += generated
        self.prompt_tokens[source] += prompt
        self.cached_tokens[source] += cached
        now = time.monotonic()
        self._recent_tokens.append((now, generated))
        while self._recent_tokens and self._recent_tokens[0][0] < now - TOKEN_RATE_WINDOW_S:
            self._recent_tokens.popleft()

    def reject(self, reason: str) -> None:
        with self._lock:
            self.rejected[reason] = self.rejected.get(reason, 0) + 1

    def observe_request(self, route: str, method: str, status: int, seconds: float) -> None:
        with self._lock:
            entry = self.latency.setdefault((route, method), [0.0, 0])
            entry[0] += seconds
            entry[1] += 1
            self.statuses[(route, status)] = self.statuses.get((route, status), 0) + 1

    def mean_epoch_s(self) -> float:
        with self._lock:
            return self.epoch_seconds / self.epochs if self.epochs else 1.0

    def tokens_per_second(self) -> float:
        with self._lock:
            now = time.monotonic()
            window = min(TOKEN_RATE_WINDOW_S, max(now - self.started, 1e-3))
            return sum(n for t, n in self._recent_tokens if t >= now - window) / window

    def render(self) -> str:
        """Prometheus text exposition format (version 0.0.4)."""
        rate = self.tokens_per_second()
        out: list[str] = []

        def metric(name: str, kind: str, help_: str, samples: list[tuple[dict[str, Any], float]]) -> None:
            out.append(f"# HELP {name} {help_}")
            out.append(f"# TYPE {name} {kind}")
            for labels, value in samples:
                text = ",".join(f'{k}="{_escape(str(v))}"' for k, v in labels.items())
                out.append(f"{name}{{{text}}} {value:g}" if text else f"{name} {value:g}")

        gauges = {name: read() for name, read in self.gauges.items()}
        with self._lock:
            for name, value in sorted(gauges.items()):
                metric(f"halo_{name}", "gauge", name.replace("_", " "), [({}, value)])
            metric("halo_epochs_total", "counter", "workflow epochs run", [({}, self.epochs)])
            metric("halo_epoch_seconds_total", "counter", "seconds spent running epochs", [({}, self.epoch_seconds)])
            metric("halo_rows_total", "counter", "workflow rows finished, by status",
                   [({"status": s}, n) for s, n in self.rows.items()])
            metric("halo_chat_completions_total", "counter", "chat completions finished", [({}, self.chat_requests)])
            metric("halo_rejected_total", "counter", "requests refused, by reason",
                   [({"reason": r}, n) for r, n in sorted(self.rejected.items())])
            metric("halo_generated_tokens_total", "counter", "tokens generated, by source",
                   [({"source": s}, n) for s, n in self.tokens.items()])
            metric("halo_prompt_tokens_total", "counter", "prompt tokens of finished llm requests, by source",
                   [({"source": s}, n) for s, n in self.prompt_tokens.items()])
            metric("halo_cached_prompt_tokens_total", "counter", "prompt tokens served from the prefix cache",
                   [({"source": s}, n) for s, n in self.cached_tokens.items()])
            prompt = sum(self.prompt_tokens.values())
            metric("halo_prefix_cache_hit_rate", "gauge", "cached / prompt tokens since start",
                   [({}, sum(self.cached_tokens.values()) / prompt if prompt else 0.0)])
            metric("halo_tokens_per_second", "gauge", f"generated tokens per second over the last "
                   f"{TOKEN_RATE_WINDOW_S:g} s", [({}, rate)])
            metric("halo_busy_seconds_total", "counter", "busy seconds of workflow nodes, by node kind (tool latency)",
                   [({"kind": k}, v) for k, v in sorted(self.busy_seconds.items())])
            metric("halo_request_latency_seconds_sum", "counter", "request latency, by route",
                   [({"route": r, "method": m}, s) for (r, m), (s, _) in sorted(self.latency.items())])
            metric("halo_request_latency_seconds_count", "counter", "requests, by route",
                   [({"route": r, "method": m}, c) for (r, m), (_, c) in sorted(self.latency.items())])
            metric("halo_responses_total", "counter", "responses, by route and status",
                   [({"route": r, "status": s}, n) for (r, s), n in sorted(self.statuses.items())])
        return "\n".join(out) + "\n"


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def route_of(path: str) -> str:
    """The route template of a path, so latency labels stay few (run ids are not labels)."""
    parts = path.rstrip("/").split("/")
    if path.startswith("/v1/runs/"):
        return "/v1/runs/{id}/events" if path.endswith("/events") else "/v1/runs/{id}"
    if path.startswith("/v1/workflows/") and len(parts) == 5 and parts[4] == "runs":
        return "/v1/workflows/{name}/runs"
    known = {"/health", "/metrics", "/v1/models", "/v1/chat/completions", "/v1/workflows"}
    return path if path in known else "other"


class LatencyMiddleware:
    """ASGI middleware: time from request to the last body byte (streams included), per route."""

    def __init__(self, app: Any, *, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        clock = time.perf_counter()
        status = 500

        async def timed_send(message: dict[str, Any]) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, timed_send)
        finally:
            self.metrics.observe_request(route_of(scope["path"]), scope["method"], status,
                                         time.perf_counter() - clock)
