"""Engine throughput on this machine: prefill tok/s, decode tok/s by batch size, shared-prefix prefill.

Run: ``.venv/bin/python bench/engine_throughput.py [--dtype auto|bf16|fp32] [--json out.json]``.
Every figure is printed with the CPU capability, the dtype and the dtype probe's GFLOP/s.
``--compare-unpacked`` also measures prefill and decode on an engine built with ``pack_weights=False``
(plain ``F.linear``) in the same run and prints the ratios (bf16 only: fp32 is never packed).

``--profile`` prints instead where a step's wall time goes, for decode at each ``--batches`` size and
for a 512-token prefill: the weight products, the head, attention, the KV store, norms, the
activation, the rest of the forward (embedding, RoPE, residuals), the step context, the scheduler,
sampling and the engine's own bookkeeping (timers around the engine's seams, bench/step_profile.py
says how and why not torch.profiler), the torch calls per step and what their dispatch alone costs,
and the bounds: batch 1 against memory bandwidth (``DecoderModel.weight_bytes()`` per token over a
large tensor copy's measured bandwidth) and the largest batch and prefill against the compute bound
of the dtype probe (engine/dtype_probe.py). Decode contexts are seeded, not prefilled, so a profile
of batch 64 takes seconds (`seed_decoding`): the KV values do not change what a step costs.

``--vs-llama-cpp PYTHON`` measures instead, in one run, prefill of 512 tokens and decode at batch 1 for
halo and for llama.cpp on the same GGUF file, thread count and shapes: PYTHON is the interpreter of a
venv with llama-cpp-python, which runs bench/llama_cpp_baseline.py (the file says how to install it).
"""

from __future__ import annotations

import argparse
import json
import random
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from halo.engine import LLMEngine, SamplingParams
from halo.engine.dtype_probe import matmul_gflops
from halo.engine.sequence import Sequence, SequenceStatus

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the checkout, for `bench.*` when run as a script
from bench import step_profile  # noqa: E402

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


def seed_decoding(engine: LLMEngine, batch: int, context: int, max_tokens: int) -> None:
    """Put ``batch`` requests of ``context`` random prompt tokens into the running set with all but their
    last prompt token already computed, their KV blocks filled with zeros instead of a prefill: the next
    step is a decode step of ``batch`` rows at that context. A profile's shortcut (a step costs the same
    whatever the KV values); the prefix cache is reset after, so no seeded block is ever reused."""
    engine.reset_prefix_cache()
    sched, bm, kv = engine.batch_scheduler, engine.block_manager, engine.kv
    for prompt in _random_prompts(batch, context, engine.config.vocab_size, seed=batch):
        engine.add_request(prompt, SamplingParams(max_tokens=max_tokens, ignore_eos=True))
    while sched.waiting:
        seq = sched.waiting.popleft()
        assert bm.can_append(seq, context - 1), "KV pool too small for the profile"
        bm.append(seq, context - 1)
        seq.num_computed = context - 1
        seq.status = SequenceStatus.RUNNING
        sched.running.append(seq)
        blocks = torch.tensor(seq.block_table, dtype=torch.int64)
        kv.k[:, :, blocks] = 0
        kv.v[:, :, blocks] = 0


def _abort_all(engine: LLMEngine) -> None:
    for seq in list(engine.batch_scheduler.running) + list(engine.batch_scheduler.waiting):
        engine.abort(seq.request_id)
    engine.reset_prefix_cache()


@dataclass
class StepProfile:
    name: str
    tokens_per_step: int
    plain_step_s: float  # best-of-rounds mean step, no timers installed
    timed_step_s: float  # the same with timers installed
    seconds: dict[str, float]  # per category, per step
    torch_calls: dict[str, int]  # per step, by calling function


def profile_decode(engine: LLMEngine, batch: int, context: int = 240, steps: int | None = None,
                   rounds: int = 3) -> StepProfile:
    """Decode steps of ``batch`` rows: rounds of ``steps`` plain steps then ``steps`` timed ones, alternating
    so load changes hit both alike; the best round of each is kept. ``steps`` defaults to 8 up to batch 8, 4 above."""
    steps = steps or (8 if batch <= 8 else 4)
    seed_decoding(engine, batch, context, max_tokens=2 * rounds * steps + 8)
    engine.step()  # the last prompt token of every sequence
    engine.step()  # warm-up
    timers = step_profile.StepTimers()
    best_plain = best_timed = float("inf")
    best: dict[str, float] = {}
    for _ in range(rounds):
        t0 = time.perf_counter()
        for _ in range(steps):
            engine.step()
        best_plain = min(best_plain, (time.perf_counter() - t0) / steps)
        timers.reset()
        timers.install(engine)
        try:
            for _ in range(steps):
                engine.step()
        finally:
            timers.uninstall()
        if timers.step_seconds / steps < best_timed:
            best_timed = timers.step_seconds / steps
            best = {k: v / steps for k, v in timers.seconds.items()}
    calls = step_profile.torch_calls_per_step(engine)
    _abort_all(engine)
    return StepProfile(f"decode b={batch}", batch, best_plain, best_timed, best, calls)


def profile_prefill(engine: LLMEngine, length: int = 512, rounds: int = 3) -> StepProfile:
    """One step prefilling a ``length``-token prompt (nothing cached), best of ``rounds`` timed steps."""
    vocab = engine.config.vocab_size
    best_plain = best_timed = float("inf")
    best: dict[str, float] = {}
    timers = step_profile.StepTimers()
    for r in range(rounds + 1):
        for timed in (False, True):
            engine.reset_prefix_cache()
            (prompt,) = _random_prompts(1, length, vocab, seed=200 + 2 * r + timed)
            engine.add_request(prompt, SamplingParams(max_tokens=1, ignore_eos=True))
            timers.reset()
            if timed:
                timers.install(engine)
            t0 = time.perf_counter()
            try:
                engine.step()
            finally:
                spent = time.perf_counter() - t0
                timers.uninstall()
            _drain(engine)
            if r == 0:
                continue  # warm-up round
            if not timed:
                best_plain = min(best_plain, spent)
            elif timers.step_seconds < best_timed:
                best_timed = timers.step_seconds
                best = dict(timers.seconds)
    engine.reset_prefix_cache()
    (prompt,) = _random_prompts(1, length, vocab, seed=999)
    engine.add_request(prompt, SamplingParams(max_tokens=1, ignore_eos=True))
    calls = step_profile.torch_calls_per_step(engine)
    _drain(engine)
    engine.reset_prefix_cache()
    return StepProfile(f"prefill {length}", length, best_plain, best_timed, best, calls)


def profile_report(engine: LLMEngine, profiles: list[StepProfile]) -> str:
    d = engine.describe()
    call_s = step_profile.trivial_call_seconds()
    copy_bw = step_profile.copy_bandwidth()
    read_bw = step_profile.read_bandwidth()
    weight_bytes = engine.model.weight_bytes()
    gflops = matmul_gflops(engine.model.dtype)
    flops = engine.model.flops_per_token
    mem_bound = copy_bw / weight_bytes  # tok/s at batch 1 if each token streams every weight once
    compute_bound = gflops * 1e9 / flops
    lines = [
        f"machine: cpu={d['cpu']} threads={d['threads']} dtype={d['dtype']} weights={d['weights']} "
        f"attention={d['attention']}",
        f"weight bytes per token (DecoderModel.weight_bytes): {weight_bytes / 1e6:.1f} MB; "
        f"copy bandwidth (512 MiB copy_, read+write): {copy_bw / 1e9:.1f} GB/s; read bandwidth (sum): "
        f"{read_bw / 1e9:.1f} GB/s",
        f"memory-bandwidth bound at batch 1: {mem_bound:.1f} tok/s (copy bw / weight bytes); "
        f"compute bound: {compute_bound:.0f} tok/s ({gflops:.1f} GFLOP/s probe / {flops / 1e9:.3f} GFLOP per token)",
        f"one trivial torch call: {call_s * 1e6:.2f} us",
        "",
    ]
    header = f"{'ms per step':<16}" + "".join(f"{p.name:>16}" for p in profiles)
    lines.append(header)
    for cat in step_profile.CATEGORIES:
        row = f"{cat:<16}"
        for p in profiles:
            v = p.seconds.get(cat, 0.0)
            row += f"{v * 1e3:9.2f} {100 * v / p.timed_step_s:4.0f}% "
        lines.append(row)
    lines.append(f"{'timed step':<16}" + "".join(f"{p.timed_step_s * 1e3:9.2f}       " for p in profiles))
    lines.append(f"{'plain step':<16}" + "".join(f"{p.plain_step_s * 1e3:9.2f}       " for p in profiles))
    calls = [sum(p.torch_calls.values()) for p in profiles]
    lines.append(f"{'torch calls':<16}" + "".join(f"{n:9d}       " for n in calls))
    lines.append(
        f"{'dispatch est.':<16}"
        + "".join(
            f"{n * call_s * 1e3:9.2f} {100 * n * call_s / p.plain_step_s:4.0f}% "
            for n, p in zip(calls, profiles, strict=True)
        )
    )
    lines.append(f"{'tok/s (plain)':<16}" + "".join(f"{p.tokens_per_step / p.plain_step_s:9.1f}       "
                                                     for p in profiles))
    lines.append("")
    for p in profiles:
        tok_s = p.tokens_per_step / p.plain_step_s
        lines.append(
            f"{p.name}: {tok_s:.1f} tok/s = {100 * tok_s / mem_bound:.0f}% of the memory-bandwidth bound, "
            f"{100 * tok_s / compute_bound:.0f}% of the compute bound"
            + (" (batch 1: the memory bound is the one that applies)" if p.tokens_per_step == 1 else "")
        )
    first = profiles[0]
    lines.append(f"torch calls per step of {first.name}, by caller:")
    lines.extend(f"  {n:6d}  {where}" for where, n in first.torch_calls.items())
    return "\n".join(lines)


def vs_llama_cpp(engine: LLMEngine, python: str, steps: int = 64) -> dict:
    """Prefill 512 and batch-1 decode for halo and llama.cpp on the engine's GGUF file, printed side by side."""
    model = Path(engine.model_path)
    if model.suffix != ".gguf":
        raise SystemExit(f"--vs-llama-cpp needs a GGUF model (llama.cpp reads nothing else), not {model}")
    threads = torch.get_num_threads()
    driver = Path(__file__).resolve().parent / "llama_cpp_baseline.py"
    done = subprocess.run([python, str(driver), "--model", str(model), "--threads", str(threads),
                           "--steps", str(steps)], capture_output=True, text=True, timeout=1800)
    if done.returncode != 0:
        raise SystemExit(f"llama.cpp side failed ({python}):\n{done.stderr[-2000:]}")
    theirs = json.loads(done.stdout.strip().splitlines()[-1])
    ours = {"prefill_tok_s": prefill_throughput(engine), "decode_b1_tok_s": decode_throughput(engine, 1, steps=steps)}
    d = engine.describe()
    print(f"machine: cpu={d['cpu']} threads={threads}; model {model.name} ({model.stat().st_size / 1e6:.0f} MB file); "
          f"halo dtype={d['dtype']} weights={d['weights']} ({engine.model.weight_bytes() / 1e6:.0f} MB read per "
          f"token); llama-cpp-python {theirs['llama_cpp_python']} on the file's own quantized weights")
    print(f"{'measure':<34} {'halo':>10} {'llama.cpp':>10} {'halo/llama.cpp':>15}")
    for key, label in (("prefill_tok_s", "prefill 512 tokens, tok/s"),
                       ("decode_b1_tok_s", "decode batch 1 (context 240), tok/s")):
        print(f"{label:<34} {ours[key]:10.1f} {theirs[key]:10.1f} {ours[key] / theirs[key]:14.2f}x")
    return {"halo": ours, "llama_cpp": theirs}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--dtype", default="auto", choices=["auto", "bf16", "fp32"])
    ap.add_argument("--batches", default="1,8,32,64")
    ap.add_argument("--json", help="also write the figures and machine facts here")
    ap.add_argument("--compare-unpacked", action="store_true", help="also measure with pack_weights=False")
    ap.add_argument("--profile", action="store_true", help="print where a step's time goes (see the docstring)")
    ap.add_argument("--weights", default="auto", choices=["auto", "fp32", "bf16", "int8", "int4"])
    ap.add_argument("--context", type=int, default=240, help="decode context of --profile")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    ap.add_argument("--vs-llama-cpp", metavar="PYTHON",
                    help="compare prefill and batch-1 decode with llama.cpp (a venv's python with llama-cpp-python)")
    args = ap.parse_args(argv)
    batches = tuple(int(b) for b in args.batches.split(","))
    engine = LLMEngine(dtype=args.dtype, weights=args.weights, num_threads=args.threads)
    if args.vs_llama_cpp:
        figures = vs_llama_cpp(engine, args.vs_llama_cpp)
        if args.json:
            with open(args.json, "w") as fh:
                json.dump({"machine": engine.describe(), **figures}, fh, indent=2, default=str)
        return 0
    if args.profile:
        profiles = [profile_decode(engine, b, args.context) for b in batches] + [profile_prefill(engine)]
        print(profile_report(engine, profiles))
        if args.json:
            with open(args.json, "w") as fh:
                json.dump({"machine": engine.describe(), "profiles": [p.__dict__ for p in profiles]}, fh,
                          indent=2, default=str)
        return 0
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
