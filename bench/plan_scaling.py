"""Planning time: by batch rows (10 / 1,000 / 10,000) and by graph size (5 / 15 / 30 nodes × 1-64 workers).

Run: ``.venv/bin/python bench/plan_scaling.py``. Rows only scale task times (each node batches its
rows), so planning time should not grow with them. The DP runs under a 1 s time limit in both
backends, the native one (halo._core) and the Python reference, side by side, and reports whether
each proved optimality; the greedy planner and the serial cost are printed beside them.
Target (issue 5): under 1 s for 30 nodes on 8 workers; (issue 20) under 1 s for 30 nodes on 64
simulated workers with data-parallel splits offered (rows marked `split`; the Python reference is
skipped past 8 workers, it only mirrors the native search). Last, the cost model's predicted makespan
of a distinct-rows chain workflow (classify -> reply, a few hundred rows) on 1, 2, 8 and 64 workers,
with and without splits.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "plan"))
from halo.engine.dtype_probe import cpu_capability  # noqa: E402
from halo.plan.search import plan_dp, plan_greedy  # noqa: E402
from halo.plan.search.baselines import operator_at_a_time, random_schedule, round_robin  # noqa: E402
from halo.plan.search.native import search_native  # noqa: E402
from plan_problems import workflow_problem  # noqa: E402  (the same synthetic workflows the tests plan)
from reference_dp import search_python  # noqa: E402  (the tests' Python reference of the native search)


def main() -> int:
    print(f"cpu={cpu_capability()}")
    backend = "{}_s optimal  states     cost"
    print(f"rows      nodes workers | {backend.format('native')} | {backend.format('python')} |  greedy  serial")
    for rows in (10, 1_000, 10_000):
        _row(rows, 12, 2)
    for nodes in (5, 15, 30):
        for workers in (1, 2, 4, 8):
            _row(100, nodes, workers)
    for nodes in (15, 30):
        for workers in (2, 8, 16, 64):
            _row(100, nodes, workers, splits=True)
    print()
    examples_table()
    print()
    split_table()
    return 0


CHAIN = """
name: chain
inputs: [text]
nodes:
  - id: classify
    kind: llm
    prompt: "Classify the sentiment of this message in one word: {{ text }}"
    max_tokens: 4
  - id: reply
    kind: llm
    prompt: >-
      Classify the sentiment of this message in one word: {{ text }}
      Label: {{ classify.output }}. Write a short reply:
    max_tokens: 48
"""


def split_table(rows: int = 400) -> None:
    """Predicted makespan of a distinct-rows chain workflow by worker count, whole nodes vs splits."""
    import dataclasses
    import warnings

    from halo.plan import consolidate
    from halo.plan.cost import ProfileMissingWarning, load_curves
    from halo.plan.plan_problem import build_plan_problem
    from halo.spec import Workflow

    graph = consolidate(
        Workflow.from_yaml(CHAIN), [{"text": f"message {i}: the parcel came {i % 7} days late"} for i in range(rows)]
    )
    print(f"distinct-rows chain (classify -> reply), {rows} rows: predicted makespan (s) and DP planning time")
    print("workers    whole    split  speedup  plan_s  split nodes")
    for workers in (1, 2, 8, 64):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ProfileMissingWarning)
            problem = build_plan_problem(graph, lambda m: load_curves(m), workers=workers)
        whole_problem = dataclasses.replace(
            problem, tasks=tuple(dataclasses.replace(t, splits=()) for t in problem.tasks)
        )
        whole = plan_dp(whole_problem, time_limit_s=1.0)
        t0 = time.perf_counter()
        split = plan_dp(problem, time_limit_s=1.0)
        elapsed = time.perf_counter() - t0
        where = "; ".join(f"{task}x{len(by)}" for task, by in split.shares().items()) or "-"
        print(
            f"{workers:7} {whole.makespan_s:8.2f} {split.makespan_s:8.2f} {whole.makespan_s / split.makespan_s:7.2f}x"
            f" {elapsed:7.3f}  {where}"
        )


def examples_table() -> None:
    """DP vs baseline schedules on the shipped example workflows, under the cost model (predicted s)."""
    import json
    import warnings

    from halo.plan import consolidate
    from halo.plan.cost import ProfileMissingWarning, load_curves
    from halo.plan.plan_problem import build_plan_problem
    from halo.spec import Workflow

    examples = Path(__file__).resolve().parents[1] / "examples"
    print("workflow        workers      dp   greedy  round_robin  random  op_at_a_time   serial")
    for yaml_path in sorted(examples.glob("*.yaml")):
        wf = Workflow.from_yaml(yaml_path)
        rows = [json.loads(x) for x in yaml_path.with_suffix(".jsonl").read_text().splitlines() if x.strip()]
        rows = rows * 50  # a batch of a few hundred rows, duplicates included as in real batches
        graph = consolidate(wf, rows)
        for workers in (1, 2, 4):
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", ProfileMissingWarning)
                problem = build_plan_problem(graph, lambda m: load_curves(m), workers=workers)
            costs = [
                plan_dp(problem, time_limit_s=1.0).cost,
                plan_greedy(problem).cost,
                round_robin(problem).cost,
                random_schedule(problem, seed=0).cost,
                operator_at_a_time(problem).cost,
            ]
            print(
                f"{wf.spec.name:15} {workers:7} "
                + " ".join(f"{c:8.2f}" for c in costs)
                + f" {plan_dp(problem, time_limit_s=1.0).serial_cost:8.2f}"
            )


def _row(rows: int, nodes: int, workers: int, splits: bool = False) -> None:
    problem = workflow_problem(nodes, workers, rows, splits=splits)
    cells = []
    for search in (search_native, search_python):
        if search is search_python and workers > 8:
            cells.append(f"{'-':>8} {'-':7} {'-':>7} {'-':>8}")
            continue
        t0 = time.perf_counter()
        plan = plan_dp(problem, time_limit_s=1.0, search=search)
        elapsed = time.perf_counter() - t0
        cells.append(f"{elapsed:8.3f} {plan.optimal!s:7} {plan.states:7d} {plan.cost:8.2f}")
    greedy = plan_greedy(problem)
    label = f"{rows} split" if splits else str(rows)
    print(f"{label:<9} {nodes:5} {workers:7} | " + " | ".join(cells) + f" | {greedy.cost:7.2f} {plan.serial_cost:7.2f}")


if __name__ == "__main__":
    sys.exit(main())
