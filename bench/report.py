"""The suite's report: a JSON of every measurement, a Markdown table and PNG plots, in one folder."""

from __future__ import annotations

import json
import math
from collections import defaultdict
from pathlib import Path
from typing import Any

from bench.suite_result import Measurement, SuiteResult

BASELINES = ("serial", "per-call", "opwise", "vllm-per-call")


def write(result: Any, out: Path) -> dict[str, str]:
    """Write results.json, results.md and the plots into `out`; returns kind -> path."""
    files = {"json": out / "results.json", "markdown": out / "results.md"}
    files["json"].write_text(json.dumps(result.as_dict(), indent=2, default=str) + "\n")
    files["markdown"].write_text(markdown(result))
    files.update(plots(result, out))
    return {kind: str(path) for kind, path in files.items()}


def load(paths: list[Path]) -> Any:
    """A SuiteResult from one or more results.json files (measurements appended in order; the first's config
    and environment, every file's engines), e.g. to merge per-workload runs: `write(load([a, b]), out)`."""
    docs = [json.loads(Path(p).read_text()) for p in paths]
    merged = SuiteResult(config=docs[0]["config"], environment=dict(docs[0]["environment"]))
    for doc in docs:
        merged.engines.update(doc.get("engines", {}))
        merged.measurements += [Measurement(**m) for m in doc["measurements"]]
    merged.environment["finished"] = docs[-1]["environment"].get("finished")
    return merged


def _wall(result: Any) -> dict[tuple[str, int], dict[str, float]]:
    walls: dict[tuple[str, int], dict[str, float]] = defaultdict(dict)
    for m in result.measurements:
        walls[(m.workload, m.rows)][m.system] = m.wall_s
    return walls


def speedups(result: Any) -> dict[tuple[str, int], dict[str, float]]:
    """(workload, rows) -> baseline -> wall time of the baseline / wall time of halo."""
    out: dict[tuple[str, int], dict[str, float]] = {}
    for key, walls in _wall(result).items():
        if "halo" in walls and walls["halo"] > 0:
            out[key] = {b: walls[b] / walls["halo"] for b in BASELINES if b in walls}
    return out


def geometric_mean(values: list[float]) -> float:
    return math.exp(sum(math.log(v) for v in values) / len(values)) if values else float("nan")


def markdown(result: Any) -> str:
    systems = list(dict.fromkeys(m.system for m in result.measurements))
    engines = result.engines.values()
    describe = next(iter(engines), {})
    probe = ", ".join(f"{k} {v:.0f} GFLOP/s" for k, v in (describe.get("probe_gflops") or {}).items())
    lines = [
        f"# Halo workload benchmark ({result.environment.get('started', '')})",
        "",
        f"CPU `{result.environment.get('cpu')}`, dtype {describe.get('dtype')} ({describe.get('dtype_reason')}"
        f"{'; probe ' + probe if probe else ''}), {describe.get('threads')} threads; "
        f"TPC-H sf {result.config.get('scale_factor')}, report API mean latency {result.config.get('api_latency_s')} s"
        f", max_tokens cap {result.config.get('max_tokens')}, seed {result.config.get('seed')}"
        f", deterministic {_engine_default(result.config.get('deterministic'))}"
        f", speculative {_engine_default(result.config.get('speculative'))}.",
        "",
        "## Wall time (s) and speedup of halo",
        "",
    ]
    ups = speedups(result)
    walls = _wall(result)
    baselines = [b for b in BASELINES if b in systems]
    head = ["workload", "rows", *systems, *(f"halo vs {b}" for b in baselines if "halo" in systems)]
    lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for (workload, rows), by_system in walls.items():
        cells = [workload, str(rows), *(f"{by_system[s]:.2f}" if s in by_system else "" for s in systems)]
        if "halo" in systems:
            cells += [
                f"{ups[(workload, rows)][b]:.2f}x" if b in ups.get((workload, rows), {}) else "" for b in baselines
            ]
        lines.append("| " + " | ".join(cells) + " |")
    if "halo" in systems and baselines:
        lines += ["", "Geometric mean of halo's speedup over the workloads:", ""]
        lines += ["| rows | " + " | ".join(f"vs {b}" for b in baselines) + " |", "|---|" + "---|" * len(baselines)]
        for rows in sorted({r for _, r in ups}):
            means = [geometric_mean([u[b] for (_, r), u in ups.items() if r == rows and b in u]) for b in baselines]
            lines.append(f"| {rows} | " + " | ".join(f"{v:.2f}x" for v in means) + " |")
    # drafts only where some system drafted (--speculative): accepted of proposed, the acceptance rate
    drafted = any(m.counters.get("speculative_proposed", 0) for m in result.measurements)
    lines += [
        "",
        "## Fidelity and counters",
        "",
        "Fidelity: fraction of rows identical to `serial` (every call alone, same dtype and engine mode) / to "
        "`per-call`.",
        "",
        "| workload | rows | system | fidelity vs serial | vs per-call | llm calls executed/logical "
        "| tool calls executed/logical | prefill tokens | cached tokens | decode tokens | row errors |"
        + (" drafts accepted/proposed |" if drafted else ""),
        "|---|---|---|---|---|---|---|---|---|---|---|" + ("---|" if drafted else ""),
    ]
    for m in result.measurements:
        c = m.counters
        proposed, accepted = c.get("speculative_proposed", 0), c.get("speculative_accepted", 0)
        draft_cell = f" {accepted}/{proposed} ({accepted / proposed:.0%}) |" if proposed else " - |"
        lines.append(
            f"| {m.workload} | {m.rows} | {m.system} | {_pct(m.fidelity_vs_serial)} | {_pct(m.fidelity_vs_per_call)} "
            f"| {c['llm_calls_executed']}/{c['llm_calls_logical']} "
            f"| {c['tool_calls_executed']}/{c['tool_calls_logical']} "
            f"| {c['prefill_tokens']} | {c['cached_tokens']} | {c['decode_tokens']} | {m.row_errors} |"
            + (draft_cell if drafted else "")
        )
    lines += _timelines(result)
    return "\n".join(lines) + "\n"


def _timelines(result: Any) -> list[str]:
    """Where halo's time went at each workload's largest batch: its llm nodes in start order with the
    span from the first instance's start to the last one's end, and the decode tokens per llm call."""
    largest: dict[str, Any] = {}
    for m in result.measurements:
        if m.system != "halo" or not m.counters.get("node_spans"):
            continue
        if m.rows >= getattr(largest.get(m.workload), "rows", 0):
            largest[m.workload] = m
    if not largest:
        return []
    lines = [
        "",
        "## Where halo's time goes",
        "",
        "Each llm node of the workflow as `node [instances] start-end s` from the first span, at the largest batch;"
        " nodes that overlap ran together. Once the distinct work is small, this chain of dependent decodes is the"
        " wall time (tools and planning are shown for scale).",
        "",
        "| workload | rows | wall s | plan s | tools first-last s | decode tokens / llm call | llm chain |",
        "|---|---|---|---|---|---|---|",
    ]
    for workload, m in largest.items():
        c = m.counters
        spans = c["node_spans"]
        llm = [(k.split(":", 1)[1], v) for k, v in spans.items() if k.startswith("llm:")]
        tools = [v for k, v in spans.items() if not k.startswith("llm:")]
        tool_span = max((v[2] for v in tools), default=0.0) - min((v[1] for v in tools), default=0.0)
        chain = ", ".join(f"{name} [{n}] {a:.1f}-{b:.1f}" for name, (n, a, b) in llm)
        per_call = c["decode_tokens"] / max(1, c["llm_calls_executed"])
        lines.append(
            f"| {workload} | {m.rows} | {m.wall_s:.2f} | {c.get('plan_s', 0.0):.2f} | {tool_span:.2f} "
            f"| {per_call:.1f} | {chain} |"
        )
    return lines


def _engine_default(value: Any) -> str:
    """A suite option as the header prints it: None is the engine's default."""
    return "(engine default)" if value is None else str(value).lower()


def _pct(value: float | None) -> str:
    return "" if value is None else f"{100 * value:.0f}%"


def plots(result: Any, out: Path) -> dict[str, Path]:
    """Wall time vs rows (log scale, a panel per workload); token and tool-call savings at the largest batch."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    workloads = list(dict.fromkeys(m.workload for m in result.measurements))
    systems = list(dict.fromkeys(m.system for m in result.measurements))
    if not workloads:
        return {}
    files = {}
    cols = min(3, len(workloads))
    nrows = math.ceil(len(workloads) / cols)
    fig, axes = plt.subplots(nrows, cols, figsize=(4.2 * cols, 3.4 * nrows), squeeze=False)
    for ax, workload in zip(axes.flat, workloads, strict=False):
        for system in systems:
            points = sorted(
                (m.rows, m.wall_s) for m in result.measurements if m.workload == workload and m.system == system
            )
            ax.plot([p[0] for p in points], [p[1] for p in points], marker="o", label=system)
        ax.set_title(workload)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("rows")
        ax.set_ylabel("wall time (s)")
    for ax in list(axes.flat)[len(workloads) :]:
        ax.axis("off")
    axes.flat[0].legend(fontsize="small")
    fig.tight_layout()
    files["plot_wall"] = out / "wall_time.png"
    fig.savefig(files["plot_wall"], dpi=110)
    plt.close(fig)

    largest = max(m.rows for m in result.measurements)
    at = [m for m in result.measurements if m.rows == largest]
    fig, axes = plt.subplots(1, 2, figsize=(12, 4))
    width = 0.8 / max(1, len(systems))
    for panel, (counter, title) in enumerate(
        (("prefill_tokens", "prompt tokens prefilled"), ("tool_calls_executed", "tool calls executed"))
    ):
        ax = axes[panel]
        for i, system in enumerate(systems):
            values = [
                next((m.counters[counter] for m in at if m.workload == w and m.system == system), 0) for w in workloads
            ]
            ax.bar([x + i * width for x in range(len(workloads))], values, width, label=system)
        ax.set_xticks([x + width * (len(systems) - 1) / 2 for x in range(len(workloads))])
        ax.set_xticklabels(workloads, rotation=20, ha="right", fontsize="small")
        ax.set_title(f"{title} ({largest} rows)")
    axes[0].legend(fontsize="small")
    fig.tight_layout()
    files["plot_savings"] = out / "savings.png"
    fig.savefig(files["plot_savings"], dpi=110)
    plt.close(fig)
    return files
