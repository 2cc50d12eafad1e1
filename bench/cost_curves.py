"""Cost-curve accuracy: profile the engine, then time step shapes the profile grid does not contain.

Run: ``.venv/bin/python bench/cost_curves.py [--model NAME] [--dtype auto] [--threads N] [--attempts 1]
[--check] [--json bench/results/<date>-cost-curves.json]``.

`halo.runtime.engine_profiler.profile_engine` measures the engine over its default grid (what
``halo profile`` runs) and fits `LatencyCurves`; then each held-out shape — other prompt lengths,
cached prefixes, batches and contexts, and one whole ``engine.generate()`` — is measured (best of 3)
and set against the curves' prediction. The table prints predicted and measured seconds and the
relative error per shape, then the worst error against issue 5's target (within 25%).

A contended machine reads slow, so the figures are only meaningful on a quiet one: the load average
is printed beside them. ``--attempts N`` repeats profile + measurement until one attempt is within
the target and reports the best (the former test's check was ``--attempts 2 --check``). The exit
code is 0 whatever the errors unless ``--check`` is given, then 1 when the worst is over the target.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import asdict, dataclass
from typing import Any

# Shapes the default ProfileGrid does not contain: other prompt lengths, cached prefixes, batches, contexts.
HELD_OUT_PREFILL = [(192, 0, 1), (96, 384, 1), (160, 0, 3), (48, 128, 5)]  # (new, cached, batch)
HELD_OUT_DECODE = [(16, 192), (48, 384), (4, 320)]  # (batch, context)
HELD_OUT_GENERATE = (6, 144, 12)  # batch, prompt tokens, output tokens: one whole engine.generate()
TARGET = 0.25  # issue 5: predictions within 25% of measured engine times


@dataclass(frozen=True)
class Shape:
    """One held-out shape: what the curves predict for it and what the engine took (best of 3)."""

    name: str
    predicted_s: float
    measured_s: float

    @property
    def error(self) -> float:
        """Relative error of the prediction: positive when the curves predict too slow."""
        return self.predicted_s / self.measured_s - 1


@dataclass(frozen=True)
class Summary:
    worst: Shape
    target: float

    @property
    def within(self) -> bool:
        return abs(self.worst.error) <= self.target


def summarize(shapes: list[Shape], target: float = TARGET) -> Summary:
    if not shapes:
        raise ValueError("no held-out shapes were measured")
    return Summary(max(shapes, key=lambda s: abs(s.error)), target)


def held_out_shapes(engine: Any, curves: Any) -> list[Shape]:
    """Measure every held-out shape on ``engine`` (idle) and pair it with ``curves``' prediction."""
    from halo.engine import SamplingParams
    from halo.runtime.engine_profiler import EngineTimer

    timer = EngineTimer(engine, seed=99)
    shapes = []
    for new, cached, batch in HELD_OUT_PREFILL:
        measured = timer.prefill(new, cached, batch).seconds
        predicted = curves.prefill_s(new, cached, batch)
        shapes.append(Shape(f"prefill new={new} cached={cached} batch={batch}", predicted, measured))
    for batch, context in HELD_OUT_DECODE:
        s = timer.decode(batch, context)
        shapes.append(
            Shape(f"decode batch={batch} context={context}", curves.decode_step_s(batch, s.context), s.seconds)
        )
    batch, prompt, out = HELD_OUT_GENERATE
    best = float("inf")
    for _ in range(3):
        prompts = [timer.tokens(prompt) for _ in range(batch)]
        t0 = time.perf_counter()
        engine.generate(prompts, SamplingParams(max_tokens=out, ignore_eos=True))
        best = min(best, time.perf_counter() - t0)
    predicted = curves.generate_s(prompt, 0, out, batch)
    shapes.append(Shape(f"generate batch={batch} prompt={prompt} output={out}", predicted, best))
    return shapes


def table(shapes: list[Shape], target: float = TARGET) -> str:
    """The per-shape table, then the worst error and whether it meets the target."""
    lines = [f"{'held-out shape':44} {'predicted s':>12} {'measured s':>11} {'error':>8}"]
    lines += [f"{s.name:44} {s.predicted_s:12.4f} {s.measured_s:11.4f} {s.error:+8.1%}" for s in shapes]
    summary = summarize(shapes, target)
    verdict = "yes" if summary.within else "no"
    lines.append(f"worst error {summary.worst.error:+.1%} ({summary.worst.name}); within {target:.0%}: {verdict}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=None, help="registered name or path (default: the default model)")
    ap.add_argument("--dtype", default="auto", choices=["auto", "bf16", "fp32"])
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--attempts", type=int, default=1, help="profile + measure up to N times; the best is reported")
    ap.add_argument("--check", action="store_true", help="exit 1 when the worst error is over the target")
    ap.add_argument("--json", help="also write the shapes, curves and machine facts here (e.g. under bench/results/)")
    args = ap.parse_args(argv)

    import torch
    from halo.engine import LLMEngine
    from halo.engine.checkpoint import load_checkpoint
    from halo.runtime.engine_profiler import profile_engine

    if args.threads:
        torch.set_num_threads(args.threads)
    ckpt = load_checkpoint(args.model)
    t0 = time.perf_counter()
    engine = LLMEngine(ckpt, dtype=args.dtype)
    load_s = time.perf_counter() - t0  # recorded as the model's load time, as `halo profile` does
    machine = engine.describe()
    load_avg = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(
        f"model={machine['model']} cpu={machine['cpu']} dtype={machine['dtype']} threads={machine['threads']} "
        f"probe={machine.get('probe_gflops')} GFLOP/s, load average {load_avg:.2f} on {os.cpu_count()} CPUs",
        file=sys.stderr,
    )
    attempts = []
    for _ in range(max(1, args.attempts)):
        curves = profile_engine(engine, load_s=load_s)
        shapes = held_out_shapes(engine, curves)
        attempts.append((summarize(shapes), shapes, curves))
        if attempts[-1][0].within:
            break
    summary, shapes, curves = min(attempts, key=lambda a: abs(a[0].worst.error))
    load_after = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(curves.describe())
    print(
        f"profiled in {curves.facts['profile_seconds']:.1f} s; best of {len(attempts)} attempt(s); "
        f"load average {load_avg:.2f} before, {load_after:.2f} after, on {os.cpu_count()} CPUs"
    )
    print(table(shapes))
    if args.json:
        with open(args.json, "w") as fh:
            report = {
                "machine": machine | {"load_avg_1m": [load_avg, load_after], "cpus": os.cpu_count()},
                "args": vars(args),
                "curves": json.loads(curves.to_json()),
                "shapes": [asdict(s) | {"error": s.error} for s in shapes],
                "worst_error": summary.worst.error,
                "target": summary.target,
                "within": summary.within,
            }
            json.dump(report, fh, indent=2, default=str)
    return 1 if args.check and not summary.within else 0


if __name__ == "__main__":
    sys.exit(main())
