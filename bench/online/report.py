"""The online report: online.json (every cell, latencies included), online.md and throughput.png."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import Any

from bench.online.load_generator import RateResult
from bench.online.online_result import Cell, OnlineResult

HALO, PER_CALL = "halo-serve", "per-call"


def write(result: Any, out: Path) -> dict[str, str]:
    files = {"json": out / "online.json", "markdown": out / "online.md", "plot": out / "throughput.png"}
    files["json"].write_text(json.dumps(as_json(result), indent=2, default=str) + "\n")
    files["markdown"].write_text(markdown(result))
    plot(result, files["plot"])
    return {kind: str(path) for kind, path in files.items()}


def saturation(result: Any) -> dict[str, dict[str, float]]:
    """workload -> target -> the highest achieved throughput (completed/s) over the sweep."""
    best: dict[str, dict[str, float]] = {}
    for cell in result.cells:
        row = best.setdefault(cell.workload, {})
        row[cell.target] = max(row.get(cell.target, 0.0), cell.result.achieved_rate)
    return best


def as_json(result: Any) -> dict[str, Any]:
    cells = []
    for cell in result.cells:
        measured = {k: v for k, v in asdict(cell.result).items() if k != "outputs"}
        measured.update({f"p{q}_s": cell.result.percentile(q) for q in (50, 95, 99)})
        cells.append({"workload": cell.workload, "target": cell.target, **measured})
    sat = saturation(result)
    return {
        "config": result.config,
        "environment": result.environment,
        "cells": cells,
        "saturation": {w: {**s, "ratio": _ratio(s)} for w, s in sat.items()},
        "output_check": result.output_check or "speed-only (outputs are checked against app.run in fp32 only)",
    }


def _rows_text(result: Any) -> str:
    mode = result.config.get("rows", "distinct")
    counts = ", ".join(f"{w} {n}" for w, n in result.environment.get("distinct_rows", {}).items())
    what = (
        "distinct (each query's text unique, see bench/online/distinct_rows.py)"
        if mode == "distinct"
        else "as the workload generator makes them, repeats included"
    )
    return f"{what}; distinct rows sent of rows prepared: {counts}" if counts else what


def markdown(result: Any) -> str:
    c = result.config
    dtypes = sorted({e["dtype"] for e in result.environment.get("engines", {}).values()})
    lines = [
        f"# Halo online benchmark ({result.environment['started']})",
        "",
        f"CPU `{result.environment['cpu']}`, dtype {c['dtype']} ({', '.join(dtypes)}); Poisson arrivals for "
        f"{c['duration_s']:g} s per offered rate (+ up to {c['drain_s']:g} s drain), seed {c['seed']}; server and load "
        f"generator in one process on loopback. Rows: {_rows_text(result)}. "
        "`halo-serve`: one row per POST /v1/workflows/{name}/runs, then "
        "GET ?wait=true. "
        "`per-call`: the client walks the DAG, one POST /v1/chat/completions per llm call on the same engine, "
        "tools client-side without cache or coalescing. Achieved throughput: completed queries / (last completion "
        "- first arrival), so at low rates it sits below the offered rate by about one latency over the window.",
        "",
        "## Saturation throughput (max achieved queries/s over the sweep)",
        "",
        "| workload | halo-serve | per-call | halo-serve / per-call |",
        "|---|---|---|---|",
    ]
    for workload, s in saturation(result).items():
        ratio = _ratio(s)
        lines.append(
            f"| {workload} | {s.get(HALO, 0):.2f} | {s.get(PER_CALL, 0):.2f} | "
            f"{'-' if ratio is None else f'{ratio:.2f}x'} |"
        )
    lines += [
        "",
        "## Per offered rate",
        "",
        "| workload | system | offered/s | sent | completed | achieved/s | p50 s | p95 s | p99 s | lost | 5xx "
        "| 4xx | row errors | HTTP requests |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for cell in result.cells:
        r = cell.result
        p = [_s(r.percentile(q)) for q in (50, 95, 99)]
        lines.append(
            f"| {cell.workload} | {cell.target} | {r.offered_rate:g} | {r.sent} | {r.completed} | "
            f"{r.achieved_rate:.2f} | {' | '.join(p)} | {r.lost} | {r.server_errors} | {r.client_errors} | "
            f"{r.row_errors} | {r.requests} |"
        )
    lines += ["", "## Outputs", ""]
    if result.output_check:
        lines.append(
            "Fraction of the lowest rate's answered queries whose outputs equal `app.run` on the same rows (fp32):"
        )
        lines.append("")
        for workload, check in result.output_check.items():
            lines.append(f"- {workload}: " + ", ".join(f"{t} {v:.0%}" for t, v in sorted(check.items())))
    else:
        lines.append("Speed-only: outputs are compared with `app.run` only in an fp32 run (`--dtype fp32`).")
    return "\n".join(lines) + "\n"


def plot(result: Any, path: Path) -> None:
    """Achieved vs offered throughput per workload, log axes; a cell that answered nothing is an x on the floor."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter, NullFormatter

    plain = FuncFormatter(lambda value, _: f"{value:g}")
    workloads = list(dict.fromkeys(c.workload for c in result.cells))
    fig, axes = plt.subplots(1, len(workloads), figsize=(4.4 * len(workloads), 3.8), squeeze=False)
    for ax, workload in zip(axes[0], workloads, strict=True):
        mine = [c for c in result.cells if c.workload == workload]
        rates = sorted({c.result.offered_rate for c in mine})
        answered = [c.result.achieved_rate for c in mine if c.result.achieved_rate > 0]
        floor = min(answered + rates) / 3
        ax.plot(rates, rates, ":", color="gray", label="offered")
        for target, style, color in ((HALO, "o-", "C0"), (PER_CALL, "s--", "C1")):
            cells = sorted((c for c in mine if c.target == target), key=lambda c: c.result.offered_rate)
            live = [c for c in cells if c.result.achieved_rate > 0]
            ax.plot(
                [c.result.offered_rate for c in live],
                [c.result.achieved_rate for c in live],
                style,
                color=color,
                label=target,
            )
            dead = [c.result.offered_rate for c in cells if c.result.achieved_rate <= 0]
            if dead:
                ax.plot(
                    dead,
                    [floor] * len(dead),
                    "x",
                    color=color,
                    markersize=9,
                    label=f"{target}: none answered in the window",
                )
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xticks(rates)
        for axis in (ax.xaxis, ax.yaxis):
            axis.set_major_formatter(plain)
            axis.set_minor_formatter(NullFormatter())
        ax.set_title(workload)
        ax.set_xlabel("offered rate (queries/s)")
        ax.set_ylabel("achieved throughput (completed/s)")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle(f"rows: {result.config.get('rows', 'distinct')}", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _ratio(s: dict[str, float]) -> float | None:
    return s[HALO] / s[PER_CALL] if s.get(PER_CALL) and HALO in s else None


def _s(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds:.2f}"


def load(paths: list[Path]) -> Any:
    """An OnlineResult from one or more online.json files (cells appended in order; the first's config), e.g. to
    rewrite the report or merge a follow-up sweep: `report.write(report.load([a, b]), out)`."""
    docs = [json.loads(Path(p).read_text()) for p in paths]
    merged = OnlineResult(config=docs[0]["config"], environment=docs[0]["environment"])
    fields = set(RateResult.__dataclass_fields__) - {"outputs"}
    for doc in docs:
        for cell in doc["cells"]:
            measured = RateResult(**{k: v for k, v in cell.items() if k in fields})
            merged.cells.append(Cell(cell["workload"], cell["target"], measured))
        if isinstance(doc.get("output_check"), dict):
            merged.output_check.update(doc["output_check"])
    order = {w: i for i, w in enumerate(dict.fromkeys(c.workload for c in merged.cells))}
    merged.cells.sort(key=lambda c: (order[c.workload], c.target, c.result.offered_rate))
    return merged
