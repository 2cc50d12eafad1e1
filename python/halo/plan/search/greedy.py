"""Greedy epoch list scheduling: fast (O(tasks x workers) per epoch), for graphs too big for the DP.

Each epoch takes the ready tasks by critical-path priority and puts each on the compatible worker
(free, or already running that model this epoch) where it would finish first, counting model loads
and KV locality. Two variants are built and the cheaper kept: `fill` places every ready task;
`pack` places a task only if it does not lengthen the epoch beyond its LLM work or its tool wave
(the first task always goes). When every pending LLM task waits for a tool, the epoch is tool-only.
"""

from __future__ import annotations

from halo.plan.search.cost_table import CostTable
from halo.plan.search.execution_plan import ExecutionPlan, evaluate
from halo.plan.search.problem import PlanProblem


def plan_greedy(problem: PlanProblem, table: CostTable | None = None) -> ExecutionPlan:
    tb = table or CostTable(problem)
    plans = [evaluate(problem, _schedule(tb, pack), "greedy", table=tb) for pack in (False, True)]
    return min(plans, key=lambda p: p.cost)


def _schedule(tb: CostTable, pack: bool) -> list[list[tuple[str, str]]]:
    priority = tb.bottom_levels()
    model = list(tb.initial_model)
    ran_on: dict[int, int] = {}
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
        for t in ready:
            m = tb.model_of[t]
            best_w, best_finish = -1, float("inf")
            for w in range(tb.W):
                if epoch_model.get(w, m) != m:
                    continue
                load = tb.load_s[m] if w not in epoch_model and model[w] != m else 0.0
                p = tb.parent[t]
                finish = busy[w] + load + tb.task_time(t, tb.speed[w], p >= 0 and ran_on[p] == w)
                if finish < best_finish - 1e-12:
                    best_w, best_finish = w, finish
            if best_w < 0 or (pack and placed and best_finish > max(max(busy), wave_s) + 1e-12):
                continue
            epoch_model[best_w] = m
            busy[best_w] = best_finish
            placed.append((t, best_w))
        for t, w in placed:
            ran_on[t] = w
            done |= 1 << t
        for w, m in epoch_model.items():
            model[w] = m
        epochs.append([(tb.task_ids[t], tb.worker_ids[w]) for t, w in placed])
    return epochs
