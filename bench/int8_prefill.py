"""Prefill's weight products as int8 activations x int8 weights against the bf16 path the engine runs.

Run: ``.venv/bin/python bench/int8_prefill.py [--rows 128,512] [--repeats 5] [--json out.json]``.

Issue 21 asks whether, where the CPU has int8 dot-product instructions (AVX-512 VNNI, AMX), a w8a8
product beats bf16 for prefill-bound steps. This measures it on the default model's shapes (one layer's
four projections and the head, SmolLM2-135M): the bf16 product as the engine runs it
(`halo.engine.linear.Linear`, oneDNN pre-packed, AMX-bf16 where present) against dynamic per-row
activation quantization (absmax / 127), ``torch._int_mm`` (int8 x int8 -> int32, oneDNN) on weights
quantized per output channel at load, and the rescale to bf16 — everything the int8 path would do per
call (and ``_int_mm`` alone, the bound on what quantizing faster could give). Each shape is timed bf16
then int8 alternately, ``--repeats`` times, best of each; the agreement is the int8 output's relative
error against the bf16 output (max-abs error over the output's max-abs). Prints the CPU capability:
AMX-int8 and VNNI machines differ from AVX2 ones, where ``_int_mm`` has no fast kernel.
"""

from __future__ import annotations

import argparse
import json
import time

import torch
from halo.engine.dtype_probe import cpu_capability
from halo.engine.linear import Linear, packing_available

HIDDEN = 576
SHAPES = {"wqkv": (960, HIDDEN), "wo": (576, HIDDEN), "w_gate_up": (3072, HIDDEN), "w_down": (576, 1536),
          "head": (49152, HIDDEN)}
LAYERS = 30  # the head runs once per forward, each projection once per layer


class Int8Linear:
    """w8a8: weights int8 per output channel (at load), activations int8 per row (per call), int32 sums."""

    def __init__(self, weight: torch.Tensor) -> None:
        w = weight.float()
        self.w_scale = (w.abs().amax(dim=1).clamp(min=1e-8) / 127.0)  # [N]
        self.qweight_t = (w / self.w_scale[:, None]).round().clamp(-127, 127).to(torch.int8).t().contiguous()  # [K, N]

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        xf = x.float()
        x_scale = xf.abs().amax(dim=1, keepdim=True).clamp(min=1e-8) / 127.0  # [M, 1]
        qx = (xf / x_scale).round().clamp(-127, 127).to(torch.int8)
        acc = torch._int_mm(qx, self.qweight_t)  # [M, N] int32
        return (acc.float() * x_scale * self.w_scale).to(x.dtype)


def _seconds(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def measure(rows: list[int], repeats: int) -> list[dict]:
    g = torch.Generator().manual_seed(0)
    out = []
    for name, (n, k) in SHAPES.items():
        weight = (torch.randn(n, k, generator=g) * 0.02).bfloat16()
        bf16 = Linear(weight, pack=packing_available(torch.device("cpu"), torch.bfloat16))
        int8 = Int8Linear(weight)
        for m in rows:
            x = torch.randn(m, k, generator=g).bfloat16()
            qx = torch.randint(-127, 128, (m, k), dtype=torch.int8, generator=g)
            calls = {"bf16": lambda x=x, f=bf16: f(x), "int8": lambda x=x, f=int8: f(x),
                     "int_mm": lambda q=qx, w=int8.qweight_t: torch._int_mm(q, w)}
            for call in calls.values():  # warm: oneDNN builds its kernel for a shape on the first call
                call()
            times = dict.fromkeys(calls, float("inf"))
            for _ in range(repeats):  # alternate, so load from other work hits all alike
                for key, call in calls.items():
                    times[key] = min(times[key], _seconds(call))
            ref, got = bf16(x).float(), int8(x).float()
            flop = 2 * m * n * k
            out.append({"op": name, "rows": m, "bf16_s": times["bf16"], "int8_s": times["int8"],
                        "int_mm_s": times["int_mm"], "rel_err": float((got - ref).abs().max() / ref.abs().max()),
                        "gflops_bf16": flop / times["bf16"] / 1e9, "gflops_int8": flop / times["int8"] / 1e9})
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", default="128,512")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    rows = [int(r) for r in args.rows.split(",")]
    print(f"CPU {cpu_capability()}, {torch.get_num_threads()} threads, torch {torch.__version__}")
    results = measure(rows, args.repeats)
    print("| op | rows | bf16 ms | int8 ms (int8 matmul alone) | int8 / bf16 speed | bf16 GFLOP/s | int8 GFLOP/s "
          "| int8 rel. error |")
    print("|---|---|---|---|---|---|---|---|")
    for r in results:
        print(f"| {r['op']} | {r['rows']} | {r['bf16_s'] * 1e3:.2f} | {r['int8_s'] * 1e3:.2f} "
              f"({r['int_mm_s'] * 1e3:.2f}) | {r['bf16_s'] / r['int8_s']:.2f}x | {r['gflops_bf16']:.0f} "
              f"| {r['gflops_int8']:.0f} | {r['rel_err']:.2e} |")
    for m in rows:  # one forward's products: each projection per layer, the head once
        per = [r for r in results if r["rows"] == m]
        bf16 = sum(r["bf16_s"] * (1 if r["op"] == "head" else LAYERS) for r in per)
        int8 = sum(r["int8_s"] * (1 if r["op"] == "head" else LAYERS) for r in per)
        print(f"one {m}-token forward's weight products: bf16 {bf16 * 1e3:.1f} ms, int8 {int8 * 1e3:.1f} ms "
              f"({bf16 / int8:.2f}x)")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump({"cpu": cpu_capability(), "threads": torch.get_num_threads(), "results": results}, f, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
