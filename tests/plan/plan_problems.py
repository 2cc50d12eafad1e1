"""Seeded random plan problems shared by the plan-search tests and bench/plan_scaling.py."""

from __future__ import annotations

import dataclasses
import random

from halo.plan.search import LLMTask, PlanProblem, Split, ToolTask, Worker


def random_problem(seed: int, max_tasks: int = 6, max_workers: int = 4, tools: bool = True) -> PlanProblem:
    """3..max_tasks LLM tasks over 1-3 models, optional tool nodes between them, 1..max_workers workers
    of two kinds, random resident models, KV parents, overheads and load weights."""
    rng = random.Random(seed)
    n = rng.randint(3, max_tasks)
    models = ["m0", "m1", "m2"][: rng.randint(1, 3)]
    tasks: list[LLMTask] = []
    tool_tasks: list[ToolTask] = []
    ids: list[str] = []
    for i in range(n):
        deps = tuple(d for d in ids if rng.random() < 0.3)
        model = rng.choice(models)
        prefill = round(rng.uniform(0.2, 3.0), 3)
        same = [d for d in deps if d.startswith("t") and tasks[int(d[1:])].model == model]
        parent = rng.choice(same) if same and rng.random() < 0.7 else None
        saving = round(rng.uniform(0, prefill), 3) if parent else 0.0
        move = round(rng.uniform(0, 2), 3) if parent else 0.0
        tasks.append(LLMTask(f"t{i}", model, prefill, round(rng.uniform(0.2, 4.0), 3), deps, parent, saving, move))
        ids.append(f"t{i}")
        if tools and rng.random() < 0.35:
            tool_deps = tuple(d for d in ids if rng.random() < 0.35)
            tool_tasks.append(ToolTask(f"x{len(tool_tasks)}", round(rng.uniform(0.05, 3.0), 3), tool_deps))
            ids.append(tool_tasks[-1].id)
    kinds = [("a", 1.0), ("a", 1.0), ("b", 1.5), ("a", 1.0)]
    workers = tuple(Worker(f"w{i}", *kinds[i % 4]) for i in range(rng.randint(1, max_workers)))
    return PlanProblem(
        tuple(tasks),
        workers,
        {m: round(rng.uniform(0.5, 4.0), 3) for m in models},
        {w.id: rng.choice([None, *models]) for w in workers},
        epoch_overhead_s=rng.choice([0.0, 0.05, 0.3]),
        load_weight=rng.choice([0.0, 0.0, 0.1, 0.5]),
        tools=tuple(tool_tasks),
    )


def workflow_problem(nodes: int, workers: int, rows: int, seed: int = 0, splits: bool = False) -> PlanProblem:
    """A layered workflow whose nodes each batch all `rows` (times scale with rows, node count does not).

    With `splits`, every node offers data-parallel splits over 2, 4, ... and all workers: a share's
    prefill scales with its rows plus a fixed prefix, its decode only partly (batched decode steps)."""
    rng = random.Random(seed)
    tasks: list[LLMTask] = []
    for i in range(nodes):
        deps = tuple(f"n{j}" for j in range(max(0, i - 4), i) if rng.random() < 0.35)
        model = f"m{i % 3}"
        same = [d for d in deps if tasks[int(d[1:])].model == model]
        prefill = 0.002 * rows * rng.uniform(0.5, 2)
        tasks.append(
            LLMTask(
                f"n{i}",
                model,
                prefill,
                0.004 * rows * rng.uniform(0.5, 2),
                deps,
                same[0] if same else None,
                prefill / 2 if same else 0.0,
                0.1 if same else 0.0,
                instances=rows,
            )
        )
        if splits:
            t = tasks[-1]
            tasks[-1] = dataclasses.replace(t, splits=tuple(_split_of(t, k) for k in _degrees(workers, rows)))
    pool = tuple(Worker(f"w{i}") for i in range(workers))
    return PlanProblem(tuple(tasks), pool, {"m0": 2.0, "m1": 3.0, "m2": 1.5}, epoch_overhead_s=0.01)


def _degrees(workers: int, rows: int) -> list[int]:
    top = min(workers, rows)
    ways = [1 << e for e in range(1, top.bit_length()) if 1 << e <= top]
    return ways + ([top] if top >= 2 and top not in ways else [])


def _split_of(t: LLMTask, k: int) -> Split:
    """One share of a k-way split: prefill by rows plus a prefix once per share, decode partly batched."""
    return Split(k, t.prefill_s / k + 0.01, t.decode_s * (0.3 + 0.7 / k), t.kv_saving_s / k, t.kv_move_s / k)
