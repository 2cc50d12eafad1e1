"""Start-up benchmark: whole-process timings of loading the engine, `halo run` and `halo --help`.

Each case runs in fresh subprocesses (no state shared with this one), after one untimed warm-up run
that fills the conversion cache and the probe results (``<cache dir>/checkpoints``, ``/probe``): the
figures are the warm ones a user sees from the second run on. Best of ``--repeat`` runs each.

- ``LLMEngine()``: the constructor of the default engine, timed inside the process after
  ``import torch, halo.engine`` (reported on its own row); the engine then generates 8 greedy tokens
  (untimed) so the timing is of a real, usable engine.
- ``halo run``: the README example (examples/invoice_audit.yaml over its 6 rows), whole process, with
  ``--no-cache`` where ``halo run --help`` offers it (a persistent result cache would answer every
  warm rerun from disk: the figure is of starting up and running, not of a cache hit).
- ``halo --help``: whole process.

    .venv/bin/python bench/startup.py [--repeat 5] [--json]

Targets are issue 17's; the table prints each best time, its target and best/target (<= 1 meets it).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
HALO = Path(sys.executable).with_name("halo")

ENGINE_SCRIPT = """
import json, time
t0 = time.perf_counter()
import torch
from halo.engine import LLMEngine, SamplingParams
t1 = time.perf_counter()
engine = LLMEngine()
t2 = time.perf_counter()
out = engine.generate(["The capital of France is"], SamplingParams(max_tokens=8, ignore_eos=True))[0]
assert len(out.token_ids) == 8
d = engine.describe()
print(json.dumps({"imports_s": t1 - t0, "engine_s": t2 - t1, "dtype": d["dtype"], "packed": d["packed_weights"]}))
"""


@dataclass(frozen=True)
class Case:
    name: str
    target_s: float | None  # None: reported, no target
    times_s: list[float]
    note: str = ""

    @property
    def best_s(self) -> float:
        return min(self.times_s)

    @property
    def ratio(self) -> float | None:
        return None if self.target_s is None else self.best_s / self.target_s


def wall(cmd: list[str], cwd: Path) -> float:
    t0 = time.perf_counter()
    subprocess.run(cmd, cwd=cwd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - t0


def no_cache_flag(halo: list[str]) -> list[str]:
    """``["--no-cache"]`` when this Halo's ``halo run`` has a result cache to turn off, else ``[]``."""
    shown = subprocess.run([*halo, "run", "--help"], cwd=REPO, capture_output=True, text=True).stdout
    return ["--no-cache"] if "--no-cache" in shown else []


def engine_runs(repeat: int) -> tuple[list[float], list[float], dict]:
    imports, engines, facts = [], [], {}
    for _ in range(repeat + 1):  # the first is the warm-up
        done = subprocess.run([sys.executable, "-c", ENGINE_SCRIPT], check=True, capture_output=True, text=True)
        facts = json.loads(done.stdout.strip().splitlines()[-1])
        imports.append(facts["imports_s"])
        engines.append(facts["engine_s"])
    return imports[1:], engines[1:], facts


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--repeat", type=int, default=5, help="timed runs per case (best is reported)")
    parser.add_argument("--json", action="store_true", help="print the cases as JSON instead of a table")
    args = parser.parse_args()
    halo = [str(HALO)] if HALO.is_file() else [sys.executable, "-m", "halo.cli"]

    imports, engines, facts = engine_runs(args.repeat)
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "invoice_audit.jsonl"
        run_cmd = [*halo, "run", "examples/invoice_audit.yaml", "--input", "examples/invoice_audit.jsonl"]
        run_cmd += ["--output", str(out), *no_cache_flag(halo)]
        runs = [wall(run_cmd, REPO) for _ in range(args.repeat + 1)][1:]
    helps = [wall([*halo, "--help"], REPO) for _ in range(args.repeat + 1)][1:]
    cases = [
        Case("LLMEngine() of the default, warm", 0.5, engines, f"{facts['dtype']}, packed={facts['packed']}"),
        Case("  (import torch, halo.engine before it)", None, imports),
        Case("halo run (README example), whole process", 2.5, runs),
        Case("halo --help, whole process", 0.3, helps),
    ]
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    if args.json:
        rows = [asdict(c) | {"best_s": c.best_s, "ratio": c.ratio} for c in cases]
        print(json.dumps({"cases": rows, "load_avg_1m": load, "cpus": os.cpu_count()}, indent=2))
        return 0
    print(f"start-up, best of {args.repeat} warm runs each (load average {load:.2f} on {os.cpu_count()} CPUs)")
    print(f"{'case':44} {'best s':>8} {'target s':>9} {'ratio':>6}  met")
    for c in cases:
        target = f"{c.target_s:.2f}" if c.target_s is not None else "-"
        ratio = f"{c.ratio:.2f}" if c.ratio is not None else "-"
        met = "-" if c.ratio is None else ("yes" if c.ratio <= 1 else "no")
        note = f"  ({c.note})" if c.note else ""
        print(f"{c.name:44} {c.best_s:8.3f} {target:>9} {ratio:>6}  {met}{note}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
