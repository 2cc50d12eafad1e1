"""Unoptimized schedules to compare plans against, priced by the same `evaluate`.

- `serial`: one call per epoch on the first worker, in dependency order (what `saving` is against).
- `round_robin`: dependency order, workers taken in turn, epochs packed as early as allowed.
- `random_schedule`: a random dependency order and random workers, packed the same way.
- `operator_at_a_time`: one node per epoch, on a worker that already holds its model if any.
"""

from __future__ import annotations

import random

from halo.plan.search.cost_table import CostTable
from halo.plan.search.execution_plan import ExecutionPlan, evaluate
from halo.plan.search.problem import PlanProblem


def serial(problem: PlanProblem) -> ExecutionPlan:
    tb = CostTable(problem)
    return evaluate(problem, [[(t, tb.worker_ids[0])] for t in tb.task_ids], "serial", table=tb)


def round_robin(problem: PlanProblem) -> ExecutionPlan:
    tb = CostTable(problem)
    order = [(t, i % tb.W) for i, t in enumerate(range(tb.n))]
    return evaluate(problem, _pack(tb, order), "round-robin", table=tb)


def random_schedule(problem: PlanProblem, seed: int = 0) -> ExecutionPlan:
    tb = CostTable(problem)
    rng = random.Random(seed)
    done, order = 0, []
    while done != tb.all_mask:
        ready = [t for t in range(tb.n) if not done >> t & 1 and tb.before_mask[t] & done == tb.before_mask[t]]
        t = rng.choice(ready)
        order.append((t, rng.randrange(tb.W)))
        done |= 1 << t
    return evaluate(problem, _pack(tb, order), "random", table=tb)


def operator_at_a_time(problem: PlanProblem) -> ExecutionPlan:
    tb = CostTable(problem)
    model = list(tb.initial_model)
    epochs = []
    for t in range(tb.n):
        m = tb.model_of[t]
        w = model.index(m) if m in model else t % tb.W
        model[w] = m
        epochs.append([(tb.task_ids[t], tb.worker_ids[w])])
    return evaluate(problem, epochs, "operator-at-a-time", table=tb)


def _pack(tb: CostTable, order: list[tuple[int, int]]) -> list[list[tuple[str, str]]]:
    """Place (task, worker) pairs in order, each in the earliest epoch its dependencies and worker allow
    (`evaluate` adds the tool-only epochs that tool inputs need)."""
    epoch_of: dict[int, int] = {}
    last: dict[int, tuple[int, int]] = {}  # worker -> (epoch, model) of its latest work
    epochs: list[list[tuple[str, str]]] = []
    for t, w in order:
        e = max((epoch_of[d] + 1 for d in range(tb.n) if tb.before_mask[t] >> d & 1), default=0)
        if w in last:
            le, lm = last[w]
            e = max(e, le if lm == tb.model_of[t] else le + 1)
        epoch_of[t] = e
        last[w] = (e, tb.model_of[t])
        while len(epochs) <= e:
            epochs.append([])
        epochs[e].append((tb.task_ids[t], tb.worker_ids[w]))
    return epochs
