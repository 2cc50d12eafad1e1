"""Engine throughput on this machine: prefill tok/s, decode tok/s by batch size, shared-prefix prefill.

Run: ``.venv/bin/python bench/engine_throughput.py [--dtype auto|bf16|fp32] [--json out.json]``.
Every figure is printed with the CPU capability, the dtype and the dtype probe's GFLOP/s.
``--compare-unpacked`` also measures prefill and decode on an engine built with ``pack_weights=False``
(plain ``F.linear``) in the same run and prints the ratios (bf16 only: fp32 is never packed).
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from dataclasses import dataclass

from halo.engine import LLMEngine, SamplingParams
from halo.engine.sequence import Sequence

COMPUTE_GFLOP_PER_TOKEN = 0.27  # SmolLM2-135M forward, from DESIGN.md


@dataclass
class Figures:
    prefill_512_tok_s: float
    decode_tok_s: dict[int, float]
    shared_prefill_s: float
    unshared_prefill_s: float
    shared_prefill_tokens: int
    unshared_prefill_tokens: int


def _random_prompts(n: int, length: int, vocab: int, seed: int) -> list[list[int]]:
    rng = random.Random(seed)
    # ids 17+ are ordinary tokens (0..16 are control tokens)
    return [[rng.randrange(17, vocab) for _ in range(length)] for _ in range(n)]


def _drain(engine: LLMEngine) -> None:
    while engine.has_unfinished():
        engine.step()


def prefill_throughput(engine: LLMEngine, length: int = 512, repeats: int = 3) -> float:
    best = float("inf")
    for r in range(repeats):
        engine.reset_prefix_cache()
        (prompt,) = _random_prompts(1, length, engine.config.vocab_size, seed=100 + r)
        engine.add_request(prompt, SamplingParams(max_tokens=1, ignore_eos=True))
        t0 = time.perf_counter()
        _drain(engine)
        best = min(best, time.perf_counter() - t0)
    return length / best


def decode_throughput(engine: LLMEngine, batch: int, context: int = 240, steps: int = 16) -> float:
    """Tokens/s of pure decode steps for ``batch`` sequences at ``context`` tokens of context."""
    engine.reset_prefix_cache()
    for prompt in _random_prompts(batch, context, engine.config.vocab_size, seed=batch):
        engine.add_request(prompt, SamplingParams(max_tokens=steps + 2, ignore_eos=True))

    def all_decoding() -> bool:
        running: list[Sequence] = engine.batch_scheduler.running
        return len(running) == batch and all(s.num_uncomputed == 1 for s in running)

    while not all_decoding():
        engine.step()
    engine.step()  # warm-up decode step
    t0 = time.perf_counter()
    for _ in range(steps):
        engine.step()
    elapsed = time.perf_counter() - t0
    _drain(engine)
    return batch * steps / elapsed


def shared_prefix_prefill(engine: LLMEngine, n: int = 32, prefix: int = 400, suffix: int = 16) -> tuple[float, int]:
    """Seconds and prefill tokens to prefill n prompts that share a ``prefix``-token head."""
    engine.reset_prefix_cache()
    engine.reset_stats()
    (head,) = _random_prompts(1, prefix, engine.config.vocab_size, seed=7)
    tails = _random_prompts(n, suffix, engine.config.vocab_size, seed=8)
    t0 = time.perf_counter()
    engine.generate([head + t for t in tails], SamplingParams(max_tokens=1, ignore_eos=True))
    return time.perf_counter() - t0, engine.stats().prefill_tokens


def unshared_prefill(engine: LLMEngine, n: int = 32, length: int = 416) -> tuple[float, int]:
    engine.reset_prefix_cache()
    engine.reset_stats()
    prompts = _random_prompts(n, length, engine.config.vocab_size, seed=9)
    t0 = time.perf_counter()
    engine.generate(prompts, SamplingParams(max_tokens=1, ignore_eos=True))
    return time.perf_counter() - t0, engine.stats().prefill_tokens


def measure(engine: LLMEngine, batches: tuple[int, ...] = (1, 8, 32, 64)) -> Figures:
    prefill = prefill_throughput(engine)
    decode = {b: decode_throughput(engine, b) for b in batches}
    shared_s, shared_tok = shared_prefix_prefill(engine)
    unshared_s, unshared_tok = unshared_prefill(engine)
    return Figures(prefill, decode, shared_s, unshared_s, shared_tok, unshared_tok)


def report(engine: LLMEngine, f: Figures) -> str:
    d = engine.describe()
    gflops = d["probe_gflops"].get(d["dtype"])
    bound = f"{gflops / COMPUTE_GFLOP_PER_TOKEN:.0f} tok/s" if gflops else "n/a (dtype not probed)"
    lines = [
        f"machine: cpu={d['cpu']} threads={d['threads']} dtype={d['dtype']} ({d['dtype_reason']}) "
        f"probe GFLOP/s={d['probe_gflops']} compute bound~{bound}",
        f"prefill 512 tokens: {f.prefill_512_tok_s:8.0f} tok/s",
    ]
    for b, v in f.decode_tok_s.items():
        lines.append(f"decode batch {b:3d}:   {v:8.0f} tok/s")
    first, last = min(f.decode_tok_s), max(f.decode_tok_s)
    lines.append(f"decode batch {last} / batch {first}: {f.decode_tok_s[last] / f.decode_tok_s[first]:.1f}x")
    lines.append(
        f"32 prompts, 400-token shared prefix: {f.shared_prefill_s:.2f} s, {f.shared_prefill_tokens} tokens "
        f"prefilled; unshared: {f.unshared_prefill_s:.2f} s, {f.unshared_prefill_tokens} tokens; "
        f"speedup {f.unshared_prefill_s / f.shared_prefill_s:.1f}x"
    )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--dtype", default="auto", choices=["auto", "bf16", "fp32"])
    ap.add_argument("--batches", default="1,8,32,64")
    ap.add_argument("--json", help="also write the figures and machine facts here")
    ap.add_argument("--compare-unpacked", action="store_true", help="also measure with pack_weights=False")
    args = ap.parse_args(argv)
    batches = tuple(int(b) for b in args.batches.split(","))
    engine = LLMEngine(dtype=args.dtype)
    figures = measure(engine, batches)
    print(report(engine, figures))
    out: dict = {"machine": engine.describe(), "figures": figures.__dict__}
    if args.compare_unpacked:
        plain = LLMEngine(dtype=args.dtype, pack_weights=False)
        prefill = prefill_throughput(plain)
        decode = {b: decode_throughput(plain, b) for b in batches}
        print(
            f"unpacked weights (F.linear), same run: prefill 512 {prefill:.0f} tok/s "
            f"(packed/unpacked {figures.prefill_512_tok_s / prefill:.2f}x)"
        )
        for b, v in decode.items():
            print(f"  decode batch {b:3d}: {v:8.0f} tok/s  (packed/unpacked {figures.decode_tok_s[b] / v:.2f}x)")
        out["unpacked"] = {"prefill_512_tok_s": prefill, "decode_tok_s": decode}
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(out, fh, indent=2, default=str)
    return 0


if __name__ == "__main__":
    sys.exit(main())
