"""EXPLAIN ANALYZE: a batch's plan printed beside what a run of that very plan measured.

`CompiledWorkflow.analyze(batch)` runs the batch (`CompiledWorkflow.run`, so the one planning
path) and wraps the result: the run keeps the `PlannedBatch` it executed (`RunResult.planned`), so
what is printed is the executed plan, never a second planning of the same batch. The text is
`PlannedBatch.explain(actual)`, the one EXPLAIN printer with the actual columns added to its lines;
`numbers()` is the same as JSON-ready values; `draw(path)` a PNG: a Gantt of the run's spans per
worker and the tool pool coloured by node, the per-node predicted against actual seconds, and the
same per epoch. Epochs overlap at run time (no barrier), so an epoch's actual seconds run from its
tasks' first start to their last end.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from halo.errors import HaloError, InvalidRequestError
from halo.plan import PlannedBatch, RunActuals
from halo.runtime.results import RunResult, RunStats, Span

MAX_LANE_ROWS = 12  # rows a lane of the Gantt stacks overlapping spans in; more overlap the last one


def run_actuals(stats: RunStats) -> RunActuals:
    """A planned run's counters in the shape the EXPLAIN printer reads."""
    return RunActuals(stats.nodes, [e.actual_s for e in stats.epochs], stats.wall_s - stats.plan_s, stats.plan_s)


@dataclass(frozen=True)
class AnalyzedRun:
    """A finished planned run with the plan it executed."""

    result: RunResult

    def __post_init__(self) -> None:
        if self.result.planned is None:
            raise InvalidRequestError("EXPLAIN ANALYZE needs a planned run (plan 'dp' or 'greedy'), not 'serial'")

    @property
    def planned(self) -> PlannedBatch:
        assert self.result.planned is not None
        return self.result.planned

    @property
    def actual(self) -> RunActuals:
        return run_actuals(self.result.stats)

    def text(self) -> str:
        return self.planned.explain(self.actual)

    def numbers(self) -> dict[str, Any]:
        numbers = self.planned.explain_numbers(self.actual)
        numbers["rows_failed"] = self.result.stats.rows_failed
        return numbers

    def draw(self, path: str | os.PathLike[str]) -> Path:
        """Write the PNG (needs matplotlib: `pip install 'halo[plot]'`)."""
        try:
            import matplotlib
        except ImportError:
            raise HaloError("--format png with --analyze draws with matplotlib: pip install 'halo[plot]'") from None
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        numbers = self.numbers()
        nodes = numbers["nodes"]
        names = sorted({n["name"] for n in nodes.values()})
        palette = plt.get_cmap("tab10" if len(names) <= 10 else "tab20")
        color = {name: palette(i % palette.N) for i, name in enumerate(names)}
        figure, (gantt, per_node, per_epoch) = plt.subplots(
            3, 1, figsize=(11, 4 + 0.45 * len(nodes)), gridspec_kw={"height_ratios": [3, 2, 1]}
        )
        _draw_gantt(gantt, self.result.timeline, {n: d["name"] for n, d in nodes.items()}, color)
        ids = list(nodes)
        ys = range(len(ids))
        predicted = [nodes[n]["estimate"]["seconds"] for n in ids]
        actual = [(nodes[n]["actual"] or {}).get("span_s", 0.0) for n in ids]
        per_node.barh([y - 0.2 for y in ys], predicted, 0.4, color="0.7", label="predicted")
        per_node.barh([y + 0.2 for y in ys], actual, 0.4, color=[color[nodes[n]["name"]] for n in ids], label="actual")
        per_node.set_yticks(list(ys), ids)
        per_node.invert_yaxis()
        per_node.set_xlabel("seconds per node (actual: first start to last end)")
        per_node.legend(loc="lower right")
        epochs = numbers["epochs"]
        xs = [e["epoch"] for e in epochs]
        per_epoch.bar([x - 0.2 for x in xs], [e["predicted_s"] for e in epochs], 0.4, color="0.7", label="predicted")
        per_epoch.bar([x + 0.2 for x in xs], [e["actual_s"] for e in epochs], 0.4, color="tab:blue", label="actual")
        per_epoch.set_xticks(xs)
        per_epoch.set_xlabel("epoch")
        per_epoch.set_ylabel("seconds")
        per_epoch.legend(loc="upper right")
        totals = numbers["totals"]["seconds"]
        figure.suptitle(
            f"EXPLAIN ANALYZE {numbers['workflow']}: {numbers['rows']} rows, planner {numbers['planner']},"
            f" predicted {totals[0]:.3f}s, actual {totals[1]:.3f}s"
        )
        figure.tight_layout()
        out = Path(path)
        figure.savefig(out, dpi=110)
        plt.close(figure)
        return out


def _draw_gantt(axes: Any, timeline: list[Span], name_of: dict[str, str], color: dict[str, Any]) -> None:
    """One lane per llm worker and one for the tool pool; overlapping spans stack into rows of the lane."""
    zero = min((s.start for s in timeline), default=0.0)
    lanes: dict[int, list[Span]] = {}
    for span in timeline:
        lanes.setdefault(span.worker, []).append(span)
    ticks: list[tuple[float, str]] = []
    base = 0.0
    for worker in sorted(lanes, key=lambda w: (w < 0, w)):  # workers first, then the tool pool
        ends: list[float] = []  # per row of this lane, where its last span ends
        for span in sorted(lanes[worker], key=lambda s: s.start):
            row = next((i for i, end in enumerate(ends) if end <= span.start), None)
            if row is None:
                if len(ends) < MAX_LANE_ROWS:
                    ends.append(0.0)
                    row = len(ends) - 1
                else:
                    row = min(range(len(ends)), key=ends.__getitem__)
            ends[row] = max(ends[row], span.end)
            axes.barh(
                base + row,
                max(span.end - span.start, 1e-4),
                left=span.start - zero,
                height=0.8,
                color=color.get(name_of.get(span.node, span.node), "0.5"),
                edgecolor="none" if span.ok else "red",
            )
        ticks.append((base + (len(ends) - 1) / 2, "tool pool" if worker < 0 else f"worker {worker}"))
        base += len(ends) + 1
    axes.set_yticks([y for y, _ in ticks], [label for _, label in ticks])
    axes.invert_yaxis()
    axes.set_xlabel("seconds from the run's first span")
    from matplotlib.patches import Patch

    handles = [Patch(color=c, label=name) for name, c in color.items()]
    axes.legend(handles=handles, loc="upper right", fontsize="small", ncol=max(1, len(handles) // 8))
