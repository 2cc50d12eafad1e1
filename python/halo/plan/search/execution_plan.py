"""`ExecutionPlan` and `evaluate`, the reference pricing of a schedule under `problem.py`'s semantics.

Every planner produces plain epochs of (LLM task id, worker id) pairs and calls `evaluate`, so a
plan's reported cost always comes from this one function. A task named on k workers of one epoch is
split data-parallel k ways (rule 3b): each of its placements carries its share of the task's
instances (`Placement.share`, the first `instances % k` shares one larger). Tools are never in a schedule: `evaluate`
places each in its epoch (rule 5), adding a tool-only epoch where an LLM task would otherwise read a
tool that has not run, and one at the end for tools after the last LLM task. An empty epoch in a
schedule is a tool-only epoch if tools are pending, else it is skipped. (The native search prices
epochs inside its own loop, csrc/plan_cost.h, but every plan it returns is priced here again.)
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from halo.plan.search.cost_table import CostTable
from halo.plan.search.problem import PlanProblem

Schedule = Sequence[Sequence[tuple[str, str]]]


@dataclass(frozen=True)
class Placement:
    task: str
    worker: str
    time_s: float
    kv: str  # "-" (no parent), "local", "move" or "recompute"
    ways: int = 1  # workers the task is split over in its epoch (1: it runs whole here)
    share: int = 0  # instances of the task this placement runs (0: not known to the plan)


@dataclass(frozen=True)
class Epoch:
    placements: tuple[Placement, ...]
    loads: tuple[tuple[str, str], ...]  # (worker, model) switched in at the start of the epoch
    busy_s: tuple[tuple[str, float], ...]  # per worker with work
    time_s: float  # max(max busy, tool_s) + epoch overhead
    tools: tuple[str, ...] = ()  # tools prepared ahead on the CPU pool during this epoch
    tool_s: float = 0.0  # their CPU time (overlapped with the LLM work; only the excess costs)


@dataclass(frozen=True)
class ExecutionPlan:
    epochs: tuple[Epoch, ...]
    makespan_s: float
    summed_load_s: float
    cost: float
    planner: str
    serial_cost: float  # the unoptimized per-call serial schedule under the same cost
    optimal: bool = False  # proven optimal by the planner that made it
    states: int = 0  # search states expanded (DP)
    backend: str = "python"  # which implementation searched ("native" = halo._core)
    per_call_s: float = 0.0  # the plain per-call execution's predicted seconds (`PlanProblem.per_call_s`)

    @property
    def saving(self) -> float:
        """Fraction of the serial schedule's cost this plan saves."""
        return 1.0 - self.cost / self.serial_cost if self.serial_cost > 0 else 0.0

    def _proof(self) -> str:
        if self.optimal:
            return " (proven optimal)"
        return " (best found, not proven optimal)" if self.planner == "dp" else ""

    def schedule(self) -> list[list[tuple[str, str]]]:
        return [[(p.task, p.worker) for p in e.placements] for e in self.epochs]

    def shares(self) -> dict[str, dict[str, int]]:
        """The split tasks: task -> {worker: instances of its share}, in placement order."""
        out: dict[str, dict[str, int]] = {}
        for e in self.epochs:
            for p in e.placements:
                if p.ways > 1:
                    out.setdefault(p.task, {})[p.worker] = p.share
        return out

    def explain(self, actual_s: Sequence[float] | None = None) -> str:
        """One line per epoch, EXPLAIN-style: workers, loads, tasks with KV handling, predicted time,
        and with `actual_s` (EXPLAIN ANALYZE: per epoch, what a run of this plan took) the actual one."""
        lines = [
            f"EXECUTION PLAN  planner={self.planner}{self._proof()}"
            f"  epochs={len(self.epochs)}  predicted={self.makespan_s:.3f}s  cost={self.cost:.3f}"
            f"  serial={self.serial_cost:.3f}  saving={self.saving:.1%}"
        ]
        if self.per_call_s > 0 and self.makespan_s > 0:
            lines.append(
                f"per-call execution (every call of every row alone): {self.per_call_s:.3f}s predicted; "
                f"this plan {self.makespan_s:.3f}s, {self.per_call_s / self.makespan_s:.1f}x faster"
            )
        for i, e in enumerate(self.epochs, 1):
            loads = dict(e.loads)
            whole = {p.task: 0 for p in e.placements}
            for p in e.placements:
                whole[p.task] += p.share
            parts = []
            for worker, busy in e.busy_s:
                tasks = ", ".join(
                    p.task
                    + ("" if p.ways == 1 else f"[{p.share}/{whole[p.task]}]")
                    + ("" if p.kv == "-" else f"(kv {p.kv})")
                    for p in e.placements
                    if p.worker == worker
                )
                load = f"load {loads[worker]}; " if worker in loads else ""
                parts.append(f"{worker}[{busy:.3f}s]: {load}{tasks}")
            if e.tools:
                parts.append(f"cpu[{e.tool_s:.3f}s]: {', '.join(e.tools)}")
            actual = "" if actual_s is None else f"actual={actual_s[i - 1]:.3f}s  "
            lines.append(f"epoch {i:>2}  time={e.time_s:.3f}s  {actual}" + "  | ".join(parts))
            split: dict[str, list[str]] = {}
            for p in e.placements:
                if p.ways > 1:
                    split.setdefault(p.task, []).append(f"{p.worker}={p.share}")
            for task, where in split.items():
                lines.append(f"          split {task} over {len(where)} workers: {', '.join(where)} instances")
        return "\n".join(lines)


def evaluate(
    problem: PlanProblem,
    schedule: Schedule,
    planner: str,
    *,
    optimal: bool = False,
    states: int = 0,
    table: CostTable | None = None,
    serial_cost: float | None = None,
    backend: str = "python",
) -> ExecutionPlan:
    """Price `schedule` (epochs of (task, worker)); raise ValueError if it breaks the plan rules."""
    tb = table or CostTable(problem)
    windex = {w: i for i, w in enumerate(tb.worker_ids)}
    model = list(tb.initial_model)
    ran_on: dict[int, set[int]] = {}  # task -> workers that ran it (or a share of it)
    done = tools_done = 0
    epochs: list[Epoch] = []
    totals = [0.0, 0.0, 0.0]  # makespan, summed load, cost

    def tool_only(wave: int) -> None:
        tool_s = tb.wave_s(wave)
        totals[0] += tool_s + tb.overhead_s
        totals[2] += tb.epoch_cost([], tool_s)
        epochs.append(Epoch((), (), (), tool_s + tb.overhead_s, _tool_names(tb, wave), tool_s))

    for raw in schedule:
        wave = tb.available_tools(done) & ~tools_done
        need = 0
        for tid, _ in raw:
            need |= tb.tool_dep_mask[tb.task_index[tid]]
        if not raw or need & ~tools_done:
            if need & ~tools_done & ~wave:
                raise ValueError("a task runs before its tool inputs")
            if wave:
                tool_only(wave)
                tools_done |= wave
                wave = 0
            if not raw:
                continue
        epoch_model: dict[int, int] = {}
        busy: dict[int, float] = {}
        loads: list[tuple[str, str]] = []
        placements: list[Placement] = []
        ways: dict[str, int] = {}
        for tid, _ in raw:
            ways[tid] = ways.get(tid, 0) + 1
        if len(set(raw)) != len(raw):
            raise ValueError("a task is placed twice on one worker in one epoch")
        position: dict[str, int] = {}
        for tid, wid in raw:
            t, w = tb.task_index[tid], windex[wid]
            if t in ran_on:
                raise ValueError(f"task {tid} scheduled twice")
            k = ways[tid]
            s = tb.split_index(t, k) if k > 1 else -1
            if k > 1 and s < 0:
                raise ValueError(f"task {tid} is split {k} ways, which it does not offer")
            if any(d not in ran_on for d in tb.deps[t]):
                raise ValueError(f"task {tid} runs before its dependencies")
            m = tb.model_of[t]
            if epoch_model.setdefault(w, m) != m:
                raise ValueError(f"worker {wid} runs two models in one epoch")
            if w not in busy:
                busy[w] = 0.0
                if model[w] != m:
                    busy[w] += tb.load_s[m]
                    loads.append((wid, tb.models[m]))
            p = tb.parent[t]
            local = p >= 0 and w in ran_on[p]
            time_s = tb.task_time(t, tb.speed[w], local) if s < 0 else tb.share_time(t, s, tb.speed[w], local)
            busy[w] += time_s
            kv = "-" if p < 0 else "local" if local else _kv_transfer(problem, tid)
            x = position[tid] = position.get(tid, -1) + 1
            n_inst = tb.instances[t]
            share = n_inst // k + (1 if x < n_inst % k else 0)
            placements.append(Placement(tid, wid, time_s, kv, k, share))
        for tid, wid in raw:
            ran_on.setdefault(tb.task_index[tid], set()).add(windex[wid])
            done |= 1 << tb.task_index[tid]
        for w, m in epoch_model.items():
            model[w] = m
        values = list(busy.values())
        tool_s = tb.wave_s(wave)
        tools_done |= wave
        totals[2] += tb.epoch_cost(values, tool_s)
        time_s = max(max(values), tool_s) + tb.overhead_s
        totals[0] += time_s
        totals[1] += sum(values)
        epochs.append(
            Epoch(
                tuple(placements),
                tuple(loads),
                tuple((tb.worker_ids[w], b) for w, b in sorted(busy.items())),
                time_s,
                _tool_names(tb, wave),
                tool_s,
            )
        )
    if len(ran_on) != tb.n:
        raise ValueError("schedule leaves tasks unscheduled")
    if tools_done != tb.all_tools:
        tool_only(tb.all_tools & ~tools_done)  # tools after the last LLM task
    makespan, summed, cost = totals
    if serial_cost is None:
        serial = [[(tid, tb.worker_ids[0])] for tid in tb.task_ids]
        serial_cost = cost if planner == "serial" else evaluate(problem, serial, "serial", table=tb, serial_cost=0).cost
    return ExecutionPlan(
        tuple(epochs), makespan, summed, cost, planner, serial_cost, optimal, states, backend, problem.per_call_s
    )


def _tool_names(tb: CostTable, wave: int) -> tuple[str, ...]:
    return tuple(tb.tool_ids[a] for a in range(tb.n_tools) if wave >> a & 1)


def _kv_transfer(problem: PlanProblem, task_id: str) -> str:
    task = problem.task(task_id)
    return "move" if task.kv_move_s <= task.kv_saving_s else "recompute"
