"""Scale-out on this machine: one worker with all the cores vs two Ray workers with half each.

Run: ``.venv/bin/python bench/ray_scaling.py [--rows 48] [--repeat 2]``. The workload is the
distinct-rows chain of `bench/plan_scaling.py` (classify -> reply, every row different, so nothing is
shared and only parallel hardware helps), on the default model. Each system is compiled once (models
loaded, one warm-up row) and timed `--repeat` times, alternating A B A B so drift in the machine's
load hits both; the best run of each is compared, with the plan each run followed (how many workers
its nodes were split over, and the cost model's predicted makespan) and whether the outputs are equal
(fp32 greedy: they must be). On a 2-core machine two 1-thread workers cannot beat one 2-thread
worker by much (a matmul already uses both cores); what they show is the overhead of Ray. The cost
model's predicted makespans for 2, 8 and 64 workers follow (`plan_scaling.split_table`, built-in
latency curves unless `halo profile` ran).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from halo.engine.dtype_probe import cpu_capability  # noqa: E402

from bench.plan_scaling import CHAIN, split_table  # noqa: E402


def _rows(n: int) -> list[dict[str, Any]]:
    moods = ("late and broken", "early, thank you", "fine I guess", "lost twice", "wrong colour", "perfect")
    return [{"text": f"order {1000 + i}: the parcel was {moods[i % 6]} (ticket {7 * i + 3})"} for i in range(n)]


def _timed(app: Any, rows: list[dict[str, Any]]) -> tuple[float, Any]:
    clock = time.perf_counter()
    result = app.run(rows)
    return time.perf_counter() - clock, result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=48)
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--dtype", default="fp32", choices=["auto", "bf16", "fp32"])
    args = parser.parse_args()
    import halo
    from halo.spec import Workflow

    cores = os.cpu_count() or 2
    print(f"cpu={cpu_capability()} cores={cores} dtype={args.dtype} rows={args.rows} load={os.getloadavg()[0]:.2f}")
    wf = Workflow.from_yaml(CHAIN)
    rows = _rows(args.rows)
    systems = {
        f"1 worker x {cores} threads": {"workers": 1},
        f"2 workers x {max(1, cores // 2)} thread(s) (Ray)": {"workers": 2},
    }
    best: dict[str, tuple[float, Any]] = {}
    one_opts, two_opts = systems.values()
    with (
        halo.compile(wf, dtype=args.dtype, cache=False, **one_opts) as one,
        halo.compile(wf, dtype=args.dtype, cache=False, **two_opts) as two,
    ):
        apps = dict(zip(systems, (one, two), strict=True))
        for app in apps.values():
            app.run(rows[:2])  # warm: kernels, actors, the first plan
        for _ in range(args.repeat):
            for name, app in apps.items():
                wall, result = _timed(app, rows)
                if name not in best or wall < best[name][0]:
                    best[name] = (wall, result)
    base_name = next(iter(best))
    base_wall, base = best[base_name]
    print("system                               wall s   vs 1 worker  predicted s  splits              outputs")
    for name, (wall, result) in best.items():
        plan = result.planned.plan
        splits = "; ".join(f"{task}x{len(by)}" for task, by in plan.shares().items()) or "-"
        same = "equal" if result.outputs == base.outputs else "DIFFER"
        print(f"{name:36} {wall:7.2f} {base_wall / wall:10.2f}x {plan.makespan_s:11.2f}  {splits:18}  {same}")
    print()
    split_table()
    return 0


if __name__ == "__main__":
    sys.exit(main())
