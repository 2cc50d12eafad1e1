"""Where the native attention kernel's threads come from, measured in the engine: torch's OpenMP team
against parked threads of the kernel's own.

Run: ``.venv/bin/python bench/attention_threads.py [--batches 1,8,64] [--rounds 10] [--context 240]``.

The kernel (halo._core.CpuAttention) runs once per layer, right after the layer's projections, whose
OpenMP threads keep spinning for a while once a matmul ends. Threads of the kernel's own then wait
for a core those spinning threads hold; the OpenMP team that just ran the matmul does not
(csrc/worker_pool.h). For each batch size this alternates rounds of decode steps with each kind
(``threads="openmp"``, the default where the core is built with OpenMP, and ``"own"``), so load
changes hit both alike, and prints the best and median step, the kernel's own time per step inside
the engine, and the ratios. Both kinds compute the same bits (tests/test_cpu_attention_kernel.py).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
from halo.engine import LLMEngine, cpu_attention

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the checkout, for `bench.*` when run as a script
from bench.engine_throughput import _abort_all, seed_decoding  # noqa: E402


class TimedKernel:
    """A CpuAttention whose decode calls add up their wall time."""

    def __init__(self, kernel) -> None:  # noqa: ANN001
        self.kernel = kernel
        self.num_threads = kernel.num_threads
        self.seconds = 0.0

    def decode(self, *args) -> None:  # noqa: ANN002
        t0 = time.perf_counter()
        self.kernel.decode(*args)
        self.seconds += time.perf_counter() - t0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--batches", default="1,8,64")
    ap.add_argument("--rounds", type=int, default=10, help="rounds per kind and batch size (alternating)")
    ap.add_argument("--context", type=int, default=240)
    args = ap.parse_args(argv)
    from halo._core import CpuAttention

    threads = torch.get_num_threads()
    if CpuAttention(1).threads != "openmp":
        print("this build of halo._core has no OpenMP: nothing to compare")
        return 0
    kinds = {name: TimedKernel(CpuAttention(threads, "auto", name)) for name in ("openmp", "own")}
    engine = LLMEngine()
    original = cpu_attention.native_kernel
    d = engine.describe()
    print(f"machine: cpu={d['cpu']} threads={threads} dtype={d['dtype']} context={args.context}")
    print(f"{'batch':>5}  {'kind':<7} {'best ms/step':>12} {'median':>8} {'kernel ms/step':>15}")
    try:
        for batch in (int(b) for b in args.batches.split(",")):
            steps = 8 if batch <= 8 else 4
            seed_decoding(engine, batch, args.context, max_tokens=2 * args.rounds * steps + 8)
            engine.step()
            engine.step()
            step_ms: dict[str, list[float]] = {name: [] for name in kinds}
            for kind in kinds.values():
                kind.seconds = 0.0
            for r in range(args.rounds):
                order = list(kinds) if r % 2 == 0 else list(reversed(kinds))
                for name in order:
                    cpu_attention.native_kernel = lambda n, k=kinds[name]: k  # noqa: E731
                    t0 = time.perf_counter()
                    for _ in range(steps):
                        engine.step()
                    step_ms[name].append((time.perf_counter() - t0) / steps * 1e3)
            _abort_all(engine)
            for name, kind in kinds.items():
                kernel_ms = kind.seconds / (args.rounds * steps) * 1e3
                print(f"{batch:5d}  {name:<7} {min(step_ms[name]):12.2f} {statistics.median(step_ms[name]):8.2f} "
                      f"{kernel_ms:15.2f}")
            ratio = min(step_ms["own"]) / min(step_ms["openmp"])
            med = statistics.median(step_ms["own"]) / statistics.median(step_ms["openmp"])
            print(f"{batch:5d}  openmp speedup over own: best {ratio:.3f}x, median {med:.3f}x")
    finally:
        cpu_attention.native_kernel = original
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
