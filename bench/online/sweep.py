"""The online sweep: for each workload, one compiled app behind one in-process `halo serve`, both targets
driven at every offered rate in turn, then (fp32 only) their outputs checked against `app.run`.

    .venv/bin/halo bench --online --workloads multi-agent-voting,multi-step-retrieval,multi-turn \\
        --rates 0.5,1,2,4,8 --duration 20

Rows are distinct by default (`--online-rows distinct`, see `distinct_rows.py`): no two queries share work
beyond prompt prefixes, so the comparison measures serving alone. `--online-rows workload` sends the
generators' rows as they come: they repeat (multi-agent-voting: 144 distinct in 911), and what halo
serve then gains over per-call is the work shared between queries that arrive close together.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import platform
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from bench.online import report
from bench.online.load_generator import drive
from bench.online.online_result import Cell, OnlineResult

REPO = Path(__file__).resolve().parents[2]
DEFAULT_WORKLOADS = ("multi-agent-voting", "multi-step-retrieval", "multi-turn")
DEFAULT_RATES = (0.5, 1.0, 2.0, 4.0, 8.0)
TARGETS = ("halo-serve", "per-call")
IDLE_WAIT_S = 180.0  # the longest a cell waits for the previous cell's leftover work to end


@dataclass
class OnlineConfig:
    workloads: list[str]
    rates: list[float] = field(default_factory=lambda: list(DEFAULT_RATES))
    duration_s: float = 20.0  # arrivals are sent for this long at each rate ...
    drain_s: float = 60.0  # ... then queries in flight get this long to finish (later ones count as lost)
    targets: list[str] = field(default_factory=lambda: list(TARGETS))
    dtype: str = "auto"
    out: Path | None = None
    seed: int = 0
    scale_factor: float = 0.1
    max_tokens: int | None = None
    api_latency_s: float = 0.1
    data_dir: Path | None = None
    rows: str = "distinct"  # "distinct": few duplicate rows (bench/online/distinct_rows.py); "workload": as generated


def run_online(config: OnlineConfig) -> OnlineResult:
    import halo
    from halo.engine.dtype_probe import cpu_capability
    from halo.engine.model_source import default_cache_dir

    from bench.generators.report_api import ReportApi
    from bench.generators.workloads import rows as make_rows
    from bench.generators.workloads import stage
    from bench.online.distinct_rows import distinct_rows

    out = config.out or REPO / "bench" / "results" / (dt.date.today().isoformat() + "-online")
    out.mkdir(parents=True, exist_ok=True)
    staged = stage(
        out / "workloads",
        config.workloads,
        config.data_dir or default_cache_dir() / "bench",
        scale_factor=config.scale_factor,
        seed=config.seed,
        max_tokens=config.max_tokens,
    )
    result = OnlineResult(
        config={k: str(v) if isinstance(v, Path) else v for k, v in asdict(config).items()},
        environment={"cpu": cpu_capability(), "python": platform.python_version(), "started": _now()},
    )
    most = max(1, int(max(config.rates) * config.duration_s * 2) + 8)
    with ReportApi(config.api_latency_s, seed=config.seed) as api:
        for workload in config.workloads:
            with halo.compile(staged[workload], dtype=config.dtype, cache=False) as app:
                result.environment.setdefault("engines", {})[workload] = app.engine().describe()
                if config.rows == "distinct":
                    rows = distinct_rows(workload, most, config.seed, api.url)
                else:
                    rows = make_rows(workload, most, config.seed, api.url)
                result.environment.setdefault("distinct_rows", {})[workload] = (
                    f"{len({json.dumps(r, sort_keys=True) for r in rows})} of {len(rows)}"
                )
                app.run(make_rows(workload, 1, config.seed + 1, api.url))  # warm kernels, pages and connections
                cells = asyncio.run(_sweep_workload(config, workload, app, rows))
                result.cells += cells
                if config.dtype == "fp32":
                    result.output_check[workload] = _check_outputs(app, rows, cells)
    result.environment["finished"] = _now()
    result.files = report.write(result, out)
    _log("wrote " + ", ".join(result.files.values()))
    return result


async def _sweep_workload(config: OnlineConfig, workload: str, app: Any, rows: list[dict[str, Any]]) -> list[Cell]:
    import httpx
    from halo.runtime.tools.tool_runner import ToolRunner

    from bench.online.local_server import LocalServer
    from bench.online.per_call_target import PerCallTarget
    from bench.online.workflow_target import WorkflowTarget

    cells: list[Cell] = []
    limits = httpx.Limits(max_connections=4096, max_keepalive_connections=512)
    timeout = httpx.Timeout(config.duration_s + config.drain_s + 60.0)
    with (
        LocalServer({workload: app}, app.engine()) as server,
        ToolRunner(app.workflow, cache=False, coalesce=False) as tools,
    ):
        async with httpx.AsyncClient(base_url=server.url, limits=limits, timeout=timeout) as client:
            targets = {"halo-serve": WorkflowTarget(client, workload), "per-call": PerCallTarget(client, app, tools)}
            for name in config.targets:
                for rate in config.rates:
                    if not cells or cells[-1].result.lost == 0:  # nothing in flight: every cell starts cold
                        app.engine().reset_prefix_cache()
                    measured = await drive(
                        targets[name].send, rows, rate, config.duration_s, seed=config.seed, drain_s=config.drain_s
                    )
                    cells.append(Cell(workload, name, measured))
                    idle_after = await _wait_idle(client, IDLE_WAIT_S)
                    _log(
                        f"{workload} {name} offered {rate:g}/s: sent {measured.sent}, completed {measured.completed}"
                        f" ({measured.achieved_rate:.2f}/s), p50 {_ms(measured.percentile(50))}"
                        f" p99 {_ms(measured.percentile(99))}, lost {measured.lost}, 5xx {measured.server_errors};"
                        f" server idle {'after ' + _ms(idle_after) if idle_after is not None else 'NOT reached'}"
                    )
    return cells


async def _wait_idle(client: Any, limit_s: float) -> float | None:
    """Wait until the server holds no admitted work (lost queries of an overloaded cell still run there),
    so the next cell starts on an idle server; seconds waited, or None if `limit_s` passed first."""
    clock = time.perf_counter()
    while time.perf_counter() - clock < limit_s:
        health = await client.get("/health")
        if health.status_code == 200 and health.json().get("queue_depth", 0) == 0:
            return time.perf_counter() - clock
        await asyncio.sleep(0.2)
    return None


def _check_outputs(app: Any, rows: list[dict[str, Any]], cells: list[Cell]) -> dict[str, float]:
    """Per target: the fraction of answered queries (of its lowest-rate cell) equal to `app.run` on those rows."""
    check: dict[str, float] = {}
    for target in {c.target for c in cells}:
        cell = min((c for c in cells if c.target == target), key=lambda c: c.result.offered_rate)
        answered = [(i, o) for i, o in enumerate(cell.result.outputs) if o is not None]
        if not answered:
            continue
        offline = app.run([rows[i % len(rows)] for i, _ in answered]).outputs
        check[target] = sum(o == ref for (_, o), ref in zip(answered, offline, strict=True)) / len(answered)
        _log(f"{cell.workload} {target}: {check[target]:.0%} of {len(answered)} outputs equal app.run's (fp32)")
    return check


def _ms(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds * 1000:.0f} ms"


def _now() -> str:
    return dt.datetime.now().isoformat(timespec="seconds")


def _log(message: str) -> None:
    print(f"[bench online {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)
