"""Per-layer call overhead of the decode forward: proposed leaner layer ops, measured against the current ones.

Run: ``.venv/bin/python bench/layer_overhead.py [--dtype fp32] [--threads 1] [--batches 1,8,64] [--only NAME,...]``.

A decode step of the default model makes ~2,700 torch calls at any batch size (``engine_throughput.py
--profile`` lists them by caller): at batch 1 the per-call cost is a measurable share of the step.
Each proposal here is a drop-in for one of the forward's seams, installed on one engine instance (and
the model module's ``apply_rope``) only while measured, so the current code path and the proposed one
run in the same process, alternating rounds of decode steps so load changes hit both alike (the
RMSNorm and decode-attention proposals measured here before became the native norm, engine/rms_norm.py,
and the once-per-step `cpu_attention.DecodeStep`):

- ``rope``: the sin table stored sign-folded (``-sin`` on the first half, once at load), so the
  rotation is ``x * cos + flip_halves(x) * sin_folded``: one flip instead of two slices, a negation and
  a cat (bit-identical: negation is exact);
- ``kv_store``: the per-layer flat views of the pool made once at start instead of in every store.

It then runs the same greedy generations with the current and the proposed seams and checks the
tokens and every logits row are identical, and prints step ms, the ratio and the torch calls per step.
These are measurements for model.py / kv_cache.py changes; nothing here changes
the engine.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
from halo.engine import LLMEngine, SamplingParams
from halo.engine import model as model_module

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the checkout, for `bench.*` when run as a script
from bench import step_profile  # noqa: E402
from bench.engine_throughput import _abort_all, seed_decoding  # noqa: E402

Undo = Callable[[], None]


def folded_apply_rope(x: torch.Tensor, cos: torch.Tensor, sin_folded: torch.Tensor) -> torch.Tensor:
    """model.apply_rope with ``sin_folded = cat(-sin[..., :half], sin[..., half:])``: rotate_half(x) * sin
    is flip_halves(x) * sin_folded, element for element (the negation moved onto the table is exact)."""
    t, h, d = x.shape
    return x * cos + x.view(t, h, 2, d // 2).flip(2).view(t, h, d) * sin_folded


def patch_rope(engine: LLMEngine) -> Undo:
    model = engine.model
    old_tables, old_fn = model.rope, model_module.apply_rope
    half = model.config.head_dim // 2
    model.rope = [(cos, torch.cat([-sin[:, :half], sin[:, half:]], dim=1)) for cos, sin in old_tables]
    model_module.apply_rope = folded_apply_rope

    def undo() -> None:
        model.rope = old_tables
        model_module.apply_rope = old_fn

    return undo


def patch_kv_store(engine: LLMEngine) -> Undo:
    kv = engine.kv
    kf = [kv._flat(kv.k, i) for i in range(kv.k.shape[0])]
    vf = [kv._flat(kv.v, i) for i in range(kv.v.shape[0])]

    def store(layer: int, k: torch.Tensor, v: torch.Tensor, slots: torch.Tensor) -> None:
        kf[layer].index_copy_(1, slots, k.transpose(0, 1))
        vf[layer].index_copy_(1, slots, v.transpose(0, 1))

    kv.store = store
    return lambda: delattr(kv, "store")


PROPOSALS: dict[str, Callable[[LLMEngine], Undo]] = {
    "rope": patch_rope,
    "kv_store": patch_kv_store,
}


def install(engine: LLMEngine, names: list[str]) -> Undo:
    undos = [PROPOSALS[n](engine) for n in names]

    def undo() -> None:
        for u in reversed(undos):
            u()

    return undo


def paired_decode(
    engine: LLMEngine, names: list[str], batch: int, context: int, steps: int, rounds: int
) -> tuple[list[float], list[float]]:
    """Per-step seconds of alternating rounds: current seams, then the proposed ones."""
    seed_decoding(engine, batch, context, max_tokens=2 * rounds * steps + 8)
    engine.step()
    engine.step()
    current: list[float] = []
    proposed: list[float] = []
    for _ in range(rounds):
        for out, patched in ((current, False), (proposed, True)):
            undo = install(engine, names) if patched else (lambda: None)
            try:
                t0 = time.perf_counter()
                for _ in range(steps):
                    engine.step()
                out.append((time.perf_counter() - t0) / steps)
            finally:
                undo()
    _abort_all(engine)
    return current, proposed


def calls_per_step(engine: LLMEngine, names: list[str], patched: bool) -> int:
    seed_decoding(engine, 1, 64, max_tokens=8)
    engine.step()
    undo = install(engine, names) if patched else (lambda: None)
    try:
        n = sum(step_profile.torch_calls_per_step(engine).values())
    finally:
        undo()
    _abort_all(engine)
    return n


PROMPTS = [
    [{"role": "user", "content": "What is the capital of France?"}],
    [{"role": "user", "content": "Write a haiku about the sea."}],
    [{"role": "user", "content": "List three prime numbers and explain why they are prime."}],
]


def same_outputs(engine: LLMEngine, names: list[str], max_tokens: int = 24) -> tuple[bool, bool]:
    """(tokens equal, every logits row bit-equal) of greedy generations, current seams vs proposed."""

    def run(patched: bool) -> tuple[list[list[int]], list[torch.Tensor]]:
        rows: list[torch.Tensor] = []
        engine.runner.on_logits = lambda seqs, logits: rows.append(logits.clone())
        undo = install(engine, names) if patched else (lambda: None)
        try:
            engine.reset_prefix_cache()
            out = engine.generate(PROMPTS, SamplingParams(max_tokens=max_tokens, ignore_eos=True))
        finally:
            undo()
            engine.runner.on_logits = None
        return [r.token_ids for r in out], rows

    tok_a, rows_a = run(False)
    tok_b, rows_b = run(True)
    bits = len(rows_a) == len(rows_b) and all(torch.equal(a, b) for a, b in zip(rows_a, rows_b, strict=True))
    return tok_a == tok_b, bits


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--dtype", default="fp32", choices=["auto", "bf16", "fp32"])
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--batches", default="1,8,64")
    ap.add_argument("--context", type=int, default=240)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--only", default=",".join(PROPOSALS), help="proposals to install together")
    ap.add_argument("--each", action="store_true", help="also measure each proposal alone at batch 1")
    args = ap.parse_args(argv)
    names = [n for n in args.only.split(",") if n]
    engine = LLMEngine(dtype=args.dtype, num_threads=args.threads)
    d = engine.describe()
    print(
        f"machine: cpu={d['cpu']} threads={d['threads']} dtype={d['dtype']} weights={d['weights']}; "
        f"proposals: {', '.join(names)}"
    )
    tokens_equal, bits_equal = same_outputs(engine, names)
    print(f"greedy tokens equal: {tokens_equal}; every logits row bit-equal: {bits_equal}")
    print(
        f"torch calls per decode step (batch 1): current {calls_per_step(engine, names, False)}, "
        f"proposed {calls_per_step(engine, names, True)}"
    )
    groups = [(names, b) for b in (int(x) for x in args.batches.split(","))]
    if args.each:
        groups += [([n], 1) for n in names]
    for group, batch in groups:
        steps = 8 if batch <= 8 else 3
        cur, new = paired_decode(engine, group, batch, args.context, steps, args.rounds)
        ratios = [c / n for c, n in zip(cur, new, strict=True)]
        print(
            f"decode b={batch:3d} [{'+'.join(group)}]: current {min(cur) * 1e3:8.2f} ms/step (best), "
            f"proposed {min(new) * 1e3:8.2f}; speedup best {min(cur) / min(new):.3f}x, "
            f"median of paired rounds {statistics.median(ratios):.3f}x"
        )
    return 0 if tokens_equal and bits_equal else 1


if __name__ == "__main__":
    sys.exit(main())
