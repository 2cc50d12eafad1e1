"""`ServeConfig`: every knob of `halo serve` in one place."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ServeConfig:
    """How the server batches, admits and protects. Times in seconds unless the name says otherwise."""

    epoch_ms: float = 50.0  # an open epoch closes this long after its first row arrived ...
    epoch_rows: int = 256  # ... or as soon as it holds this many rows
    queue_limit: int = 1024  # rows + chat requests admitted and not yet finished; beyond: 429
    max_body_bytes: int = 1 << 20  # larger request bodies: 413
    max_json_depth: int = 64  # bodies nested deeper (objects/arrays): 400 (see request_body)
    api_key: str | None = None  # when set, every route but /health needs `Authorization: Bearer <key>` (and
    # /health answers unauthenticated callers with liveness only)
    default_max_tokens: int = 512  # chat completions that name no max_tokens (clipped to the context)
    wait_timeout_s: float = 300.0  # the longest `GET /v1/runs/{id}?wait=true` holds a request
    max_finished_runs: int = 100_000  # finished run records kept for GET before the oldest are dropped
    max_active_epochs: int = 8  # epochs planned or running at once (they overlap on the one session loop)
    merge_rows: int = 64  # closed epochs waiting for a runner merge up to this many rows
    journal_dir: str | None = None  # when set, admitted runs and their ends are journaled there (see run_journal)
    shutdown_retry_after_s: int = 5  # the Retry-After of a 503 answered to new work while the server drains

    def __post_init__(self) -> None:
        for name in (
            "epoch_rows",
            "queue_limit",
            "max_body_bytes",
            "max_json_depth",
            "shutdown_retry_after_s",
            "default_max_tokens",
            "max_finished_runs",
            "max_active_epochs",
            "merge_rows",
        ):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if self.epoch_ms < 0:
            raise ValueError(f"epoch_ms must be >= 0, got {self.epoch_ms!r}")
