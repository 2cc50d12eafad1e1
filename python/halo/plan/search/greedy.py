"""Greedy epoch list scheduling: fast (O(tasks x workers) per epoch), for graphs too big for the DP.

Each epoch takes the ready tasks by critical-path priority and puts each on the compatible worker
(free, or already running that model this epoch) where it would finish first, counting model loads
and KV locality. Two variants are built and the cheaper kept: `fill` places every ready task;
`pack` places a task only if it does not lengthen the epoch beyond its LLM work or its tool wave
(the first task always goes). When every pending LLM task waits for a tool, the epoch is tool-only.
Each variant is built once whole-task only and once with data-parallel splits (rule 3b): a task
that offers splits is split k ways over the k compatible workers where its share finishes first,
when that finishes before its best single worker does, k at most its fair part of the workers still
free (free workers over the ready tasks not yet placed). The cheapest of the four is kept, so splits
never make the greedy plan worse.
"""

from __future__ import annotations

from halo.plan.search.cost_table import CostTable
from halo.plan.search.execution_plan import ExecutionPlan, evaluate
from halo.plan.search.problem import PlanProblem


def plan_greedy(problem: PlanProblem, table: CostTable | None = None) -> ExecutionPlan:
    tb = table or CostTable(problem)
    plans = [
        evaluate(problem, _schedule(tb, pack, split), "greedy", table=tb)
        for split in (False, True)
        for pack in (False, True)
        if split is False or any(tb.split_ways)
    ]
    return min(plans, key=lambda p: p.cost)


def _schedule(tb: CostTable, pack: bool, split: bool = False) -> list[list[tuple[str, str]]]:
    priority = tb.bottom_levels()
    model = list(tb.initial_model)
    ran_on: dict[int, set[int]] = {}
    done = tools_done = 0
    epochs: list[list[tuple[str, str]]] = []
    while done != tb.all_mask:
        ready = tb.ready(done, tools_done)
        wave = tb.available_tools(done) & ~tools_done
        wave_s = tb.wave_s(wave)
        tools_done |= wave
        ready.sort(key=lambda t: -priority[t])
        epoch_model: dict[int, int] = {}
        busy = [0.0] * tb.W
        placed: list[tuple[int, int]] = []
        for idx, t in enumerate(ready):
            m = tb.model_of[t]
            best_w, best_finish = -1, float("inf")
            for w in range(tb.W):
                if epoch_model.get(w, m) != m:
                    continue
                load = tb.load_s[m] if w not in epoch_model and model[w] != m else 0.0
                p = tb.parent[t]
                finish = busy[w] + load + tb.task_time(t, tb.speed[w], p >= 0 and w in ran_on[p])
                if finish < best_finish - 1e-12:
                    best_w, best_finish = w, finish
            if best_w < 0:
                continue
            group, group_finish = [(best_w, best_finish)], best_finish
            if split:
                # at most a fair part of the workers still free: the ready tasks after it need some too
                fair = max(1, (tb.W - len(epoch_model)) // (len(ready) - idx))
                for s in range(len(tb.split_ways[t])):
                    shares = _share_finishes(tb, t, s, busy, epoch_model, model, ran_on)
                    k = tb.split_ways[t][s]
                    if k <= fair and len(shares) >= k and shares[k - 1][0] < group_finish - 1e-12:
                        group_finish = shares[k - 1][0]
                        group = [(w, f) for f, w in shares[:k]]
            if pack and placed and group_finish > max(max(busy), wave_s) + 1e-12:
                continue
            for w, finish in group:
                epoch_model[w] = m
                busy[w] = finish
                placed.append((t, w))
        for t, w in placed:
            ran_on.setdefault(t, set()).add(w)
            done |= 1 << t
        for w, m in epoch_model.items():
            model[w] = m
        epochs.append([(tb.task_ids[t], tb.worker_ids[w]) for t, w in placed])
    return epochs


def _share_finishes(
    tb: CostTable, t: int, s: int, busy: list[float], epoch_model: dict[int, int], model: list[int], ran_on
) -> list[tuple[float, int]]:
    """(finish time, worker) of one share of task `t`'s split `s` on each compatible worker, soonest first."""
    m, p = tb.model_of[t], tb.parent[t]
    out = []
    for w in range(tb.W):
        if epoch_model.get(w, m) != m:
            continue
        load = tb.load_s[m] if w not in epoch_model and model[w] != m else 0.0
        out.append((busy[w] + load + tb.share_time(t, s, tb.speed[w], p >= 0 and w in ran_on[p]), w))
    out.sort()
    return out
