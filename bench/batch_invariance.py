"""Which operations make a row's result depend on the other rows of its step, per op, on this machine.

Run: ``.venv/bin/python bench/batch_invariance.py [--threads 2] [--formats fp32,bf16,int8,int4]
[--sizes 2,3,4,8,16,33,64,128] [--json out.json]``; with ``--cost [--cost-dtypes bf16,fp32]
[--batches 1,8,64] [--prefill-tokens 512] [--context 240]`` it then measures what the mode costs: prefill
and decode tok/s of the default model with ``deterministic`` off and on, each figure taken off then
on in the same run (bench/engine_throughput.py's measurements), and their ratios.

For every op of the default model's forward (SmolLM2-135M shapes: each projection and the head in each
weight format, RMSNorm, the MLP activation, decode attention, prefill attention, greedy sampling) it
prints the largest absolute difference between one row's output computed alone and the same row
computed inside a step of M rows (over every row of the step, the rows random), for each M; ``0`` is
bit-identical. Each op is measured as the engine runs it by default (``plain``) and in batch-invariant
mode (``invariant``, `LLMEngine(deterministic=True)`: engine/batch_invariant.py and
``cpu_attention.attention_rows``). Prefill attention's "M" is the chunk: the last token of a
160-token prompt computed in one prefill, against the same token computed in a last chunk of M tokens
after a cached prefix (M = 1 is a decode row, as the runner makes it). Weights and inputs are random
at the model's scale: a reduction order does not depend on the values. Prints the CPU capability and
the thread count: the kernels, hence the plain figures, differ from machine to machine.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import sys
from collections.abc import Callable
from pathlib import Path

import torch
from halo.engine import cpu_attention
from halo.engine.batch_invariant import RowTiledLinear
from halo.engine.dtype_probe import cpu_capability
from halo.engine.kv_cache import KVCache
from halo.engine.linear import packing_available
from halo.engine.model_config import ModelConfig
from halo.engine.quantized_linear import WeightFormat
from halo.engine.rms_norm import rms_norm
from halo.engine.step_context import PrefillSpan, StepContext

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the checkout, for `bench.*` when run as a script

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "int8": torch.bfloat16, "int4": torch.bfloat16}
SMOLLM2 = ModelConfig(
    name="smollm2-135m-shapes", num_layers=1, hidden_size=576, num_heads=9, num_kv_heads=3, head_dim=64,
    intermediate_size=1536, vocab_size=49152, rope_theta=1e5, rms_eps=1e-5, context_length=2048,
    tie_embeddings=True,
)
BLOCK = 16


def row_spread(op: Callable[[torch.Tensor], torch.Tensor], rows: torch.Tensor, sizes: list[int]) -> list[float]:
    """Max over the step's rows of |op(row alone) - op(row inside M rows)|, for each M. Every row is
    compared, not one: where a kernel sums in another order, a bf16 output shows it only when the two
    sums round apart, which one row's outputs can all escape (batch_invariant.check_tile_mode)."""
    alone = torch.cat([op(rows[i : i + 1]) for i in range(max(sizes))]).float()
    return [float((op(rows[:m]).float() - alone[:m]).abs().max()) for m in sizes]


def linear_ops(formats: list[str], sizes: list[int], generator: torch.Generator) -> list[dict]:
    c = SMOLLM2
    shapes = {
        "wqkv": ((c.num_heads + 2 * c.num_kv_heads) * c.head_dim, c.hidden_size),
        "wo": (c.hidden_size, c.num_heads * c.head_dim),
        "w_gate_up": (2 * c.intermediate_size, c.hidden_size),
        "w_down": (c.hidden_size, c.intermediate_size),
        "lm_head": (c.vocab_size, c.hidden_size),
    }
    results = []
    for fmt_name in formats:
        dtype = DTYPES[fmt_name]
        fmt = WeightFormat(fmt_name, dtype, torch.device("cpu"), pack=packing_available(torch.device("cpu"), dtype))
        for name, (n, k) in shapes.items():
            weight = torch.randn(n, k, generator=generator) * k**-0.5
            # the head as the model builds it: tied, int8 in the quantized formats
            layer = fmt.embedding_and_head(weight, None)[1] if name == "lm_head" else fmt.linear(weight)
            rows = torch.randn(max(sizes), k, generator=generator).to(dtype)
            tiled = RowTiledLinear(layer, dtype)
            for mode, op in (("plain", layer), (f"invariant ({tiled.mode})", tiled)):
                results.append({"op": name, "format": fmt_name, "mode": mode, "diff": row_spread(op, rows, sizes)})
    return results


def pointwise_ops(sizes: list[int], generator: torch.Generator) -> list[dict]:
    c = SMOLLM2
    results = []
    for fmt_name in ("fp32", "bf16"):
        dtype = DTYPES[fmt_name]
        weight = (1 + 0.1 * torch.randn(c.hidden_size, generator=generator)).to(dtype)
        x = torch.randn(max(sizes), c.hidden_size, generator=generator).to(dtype)
        norm = functools.partial(_norm, weight=weight, eps=c.rms_eps)
        results.append({"op": "rms_norm", "format": fmt_name, "mode": "plain", "diff": row_spread(norm, x, sizes)})
        gate_up = torch.randn(max(sizes), 2 * c.intermediate_size, generator=generator).to(dtype)
        results.append({"op": "silu(gate)*up", "format": fmt_name, "mode": "plain",
                        "diff": row_spread(_act, gate_up, sizes)})
        logits = torch.randn(max(sizes), c.vocab_size, generator=generator)
        results.append({"op": "greedy sampling", "format": fmt_name, "mode": "plain",
                        "diff": row_spread(lambda t: t.argmax(-1, keepdim=True), logits, sizes)})
    return results


def _norm(t: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    return rms_norm(t, weight, eps)


def _act(t: torch.Tensor) -> torch.Tensor:
    gate, up = t.chunk(2, dim=-1)
    return torch.nn.functional.silu(gate) * up


def _pool(dtype: torch.dtype, blocks: int, generator: torch.Generator) -> KVCache:
    kv = KVCache(SMOLLM2, blocks, BLOCK, dtype)
    kv.k.copy_(torch.randn(kv.k.shape, generator=generator))
    kv.v.copy_(torch.randn(kv.v.shape, generator=generator))
    return kv


def _decode_ctx(lens: list[int], tables: list[list[int]]) -> StepContext:
    width = max(len(t) for t in tables)
    lens_t = torch.tensor(lens, dtype=torch.int64)
    mask = (torch.arange(width * BLOCK).unsqueeze(0) >= lens_t.unsqueeze(1)).view(len(lens), 1, 1, -1)
    n = len(lens)
    return StepContext(
        input_ids=torch.zeros(n, dtype=torch.int64), positions=lens_t - 1, slots=torch.zeros(n, dtype=torch.int64),
        num_decode=n, decode_blocks=torch.tensor([t + [0] * (width - len(t)) for t in tables]).view(-1),
        decode_max_blocks=width, decode_lens=lens_t, decode_mask=mask, prefills=(),
        logits_rows=torch.arange(n),
    )


def decode_attention_ops(sizes: list[int], generator: torch.Generator) -> list[dict]:
    """Sequence 0 (200 tokens of context) decoding alone and beside M - 1 others of random lengths."""
    c = SMOLLM2
    results = []
    per_seq = 32  # blocks per sequence: up to 512 tokens
    for fmt_name in ("fp32", "bf16"):
        dtype = DTYPES[fmt_name]
        kv = _pool(dtype, per_seq * max(sizes), generator)
        q = torch.randn(max(sizes), c.num_heads, c.head_dim, generator=generator).to(dtype)
        lens = [200] + torch.randint(1, per_seq * BLOCK, (max(sizes) - 1,), generator=generator).tolist()
        tables = [list(range(s * per_seq, s * per_seq + -(-n // BLOCK))) for s, n in enumerate(lens)]
        scale = c.head_dim**-0.5
        for mode in ("plain (native kernel)", "plain (torch path)", "invariant"):
            run = functools.partial(_decode_rows, mode, q, kv, lens, tables, scale)
            alone = run([0]).float()
            diffs = []
            for m in sizes:
                idx = list(range(1, m))
                idx.insert(m // 2, 0)
                diffs.append(float((run(idx)[m // 2].float() - alone[0]).abs().max()))
            results.append({"op": "decode attention", "format": fmt_name, "mode": mode, "diff": diffs})
    return results


def _decode_rows(mode: str, q: torch.Tensor, kv: KVCache, lens: list[int], tables: list[list[int]], scale: float,
                 idx: list[int]) -> torch.Tensor:
    """Decode attention of sequences ``idx`` in one step, as ``mode`` computes it."""
    ctx = _decode_ctx([lens[i] for i in idx], [tables[i] for i in idx])
    if mode == "invariant":
        return cpu_attention.attention_rows(q[idx], kv, 0, *cpu_attention.row_tables(ctx), scale)
    if mode == "plain (torch path)":
        return cpu_attention.decode_attention_torch(q[idx], kv, 0, ctx, scale)
    return cpu_attention.decode_attention(q[idx], kv, 0, ctx, scale)


def prefill_attention_ops(sizes: list[int], generator: torch.Generator, length: int = 160) -> list[dict]:
    """The last token of a ``length``-token prompt: one prefill against a last chunk of M tokens."""
    c = SMOLLM2
    results = []
    scale = c.head_dim**-0.5
    blocks = torch.arange(-(-length // BLOCK), dtype=torch.int64)
    for fmt_name in ("fp32", "bf16"):
        dtype = DTYPES[fmt_name]
        kv = _pool(dtype, blocks.numel(), generator)
        q = torch.randn(length, c.num_heads, c.head_dim, generator=generator).to(dtype)
        k_all, v_all = (t[:, :length].transpose(0, 1) for t in kv.gather(0, blocks))  # [L, KV, D]

        for mode in ("plain", "invariant"):
            last_row = functools.partial(_last_row, mode, q, kv, k_all, v_all, blocks, length, scale)
            full = last_row(length).float()
            diffs = [float((last_row(min(m, length)).float() - full).abs().max()) for m in [1, *sizes]]
            results.append({"op": f"prefill attention (last of {length})", "format": fmt_name, "mode": mode,
                            "diff": diffs})
    return results


def cost(dtypes: list[str], batches: list[int], prefill_tokens: int, context: int, steps: int,
         repeats: int = 3) -> list[dict]:
    """Prefill and decode tok/s with the mode off and on, side by side, for each dtype: the best of
    ``repeats`` alternations (off, on, off, on, ...), so load from other work hits both alike."""
    from halo.engine import LLMEngine
    from halo.engine.checkpoint import load_checkpoint

    from bench.engine_throughput import decode_throughput, prefill_throughput

    rows = []
    for dtype in dtypes:
        ckpt = load_checkpoint(None, None, DTYPES[dtype])
        engines = {det: LLMEngine(model=ckpt, dtype=dtype, deterministic=det, swap_space_gb=0) for det in (False, True)}
        figures: dict[bool, dict[str, float]] = {False: {}, True: {}}
        for engine in engines.values():  # warm: the first steps page the weights in
            prefill_throughput(engine, 32, repeats=1)
        measures = {f"prefill {prefill_tokens}": lambda e: prefill_throughput(e, prefill_tokens, repeats=1)}
        for b in batches:
            measures[f"decode batch {b}"] = functools.partial(_decode, batch=b, context=context, steps=steps,
                                                              measure=decode_throughput)
        for name, measure in measures.items():
            for _ in range(repeats):
                for det, engine in engines.items():
                    figures[det][name] = max(figures[det].get(name, 0.0), measure(engine))
        for name in figures[False]:
            off, on = figures[False][name], figures[True][name]
            rows.append({"dtype": dtype, "figure": name, "off_tok_s": off, "on_tok_s": on, "on_over_off": on / off})
    return rows


def _decode(engine: object, batch: int, context: int, steps: int, measure: Callable) -> float:
    return measure(engine, batch, context=context, steps=steps)


def _chunk_ctx(length: int, n: int, blocks: torch.Tensor) -> StepContext:
    """The step computing the last ``n`` tokens of a ``length``-token prompt after a cached prefix."""
    first = length - n
    if n == 1:  # the runner makes a one-token step a decode row
        return _decode_ctx([length], [blocks.tolist()])
    return StepContext(
        input_ids=torch.zeros(n, dtype=torch.int64), positions=torch.arange(first, length),
        slots=torch.arange(first, length), num_decode=0, decode_blocks=torch.empty(0, dtype=torch.int64),
        decode_max_blocks=0, decode_lens=torch.empty(0, dtype=torch.int64), decode_mask=None,
        prefills=(PrefillSpan(0, n, length, blocks),), logits_rows=torch.tensor([n - 1]),
    )


def _last_row(mode: str, q: torch.Tensor, kv: KVCache, k_all: torch.Tensor, v_all: torch.Tensor, blocks: torch.Tensor,
              length: int, scale: float, n: int) -> torch.Tensor:
    """The prompt's last token's attention output when its last chunk is ``n`` tokens, as ``mode`` computes it."""
    ctx = _chunk_ctx(length, n, blocks)
    qs = q[length - n :]
    if mode == "invariant":
        return cpu_attention.attention_rows(qs, kv, 0, *cpu_attention.row_tables(ctx), scale)[-1]
    if n == 1:
        return cpu_attention.decode_attention(qs, kv, 0, ctx, scale)[-1]
    return cpu_attention.prefill_attention(qs, k_all[length - n :], v_all[length - n :], kv, 0, ctx, scale)[-1]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--formats", default="fp32,bf16,int8,int4")
    parser.add_argument("--sizes", default="2,3,4,8,16,33,64,128")
    parser.add_argument("--json", default=None)
    parser.add_argument("--cost", action="store_true", help="also measure tok/s with the mode off and on")
    parser.add_argument("--ops", default="on", choices=["on", "off"], help="the per-op table (off: --cost only)")
    parser.add_argument("--cost-dtypes", default="bf16,fp32")
    parser.add_argument("--batches", default="1,8,64")
    parser.add_argument("--prefill-tokens", type=int, default=512)
    parser.add_argument("--context", type=int, default=240, help="tokens of context of each decoding sequence")
    parser.add_argument("--steps", type=int, default=16, help="decode steps timed per batch size")
    parser.add_argument("--repeats", type=int, default=3, help="alternations of off and on; the best of each counts")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    sizes = [int(s) for s in args.sizes.split(",")]
    generator = torch.Generator().manual_seed(0)
    print(f"CPU {cpu_capability()}, {torch.get_num_threads()} threads, torch {torch.__version__}")
    out: dict = {"cpu": cpu_capability(), "threads": args.threads, "sizes": sizes}
    if args.ops == "on":
        out["results"] = _ops_table(args.formats.split(","), sizes, generator)
    if args.cost:
        rows = cost(args.cost_dtypes.split(","), [int(b) for b in args.batches.split(",")], args.prefill_tokens,
                    args.context, args.steps, args.repeats)
        print(f"cost of deterministic=True (decode at {args.context} tokens of context, {args.steps} steps; "
              f"best of {args.repeats} alternations; load average {os.getloadavg()[0]:.1f}):")
        print("| dtype | figure | off tok/s | on tok/s | on / off |")
        print("|---|---|---|---|---|")
        for r in rows:
            off, on = r["off_tok_s"], r["on_tok_s"]
            print(f"| {r['dtype']} | {r['figure']} | {off:.1f} | {on:.1f} | {r['on_over_off']:.2f}x |")
        out["cost"] = rows
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(out, f, indent=1)
    return 0


def _ops_table(formats: list[str], sizes: list[int], generator: torch.Generator) -> list[dict]:
    with torch.inference_mode():
        results = linear_ops(formats, sizes, generator)
        results += pointwise_ops(sizes, generator)
        results += decode_attention_ops(sizes, generator)
        results += prefill_attention_ops(sizes, generator)
    print("max |row alone - row in a step of M rows| (0: bit-identical); prefill attention: M = last chunk")
    header = ["op", "format", "mode"] + [f"M={m}" for m in sizes]
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for r in results:
        diffs = r["diff"] if len(r["diff"]) == len(sizes) else r["diff"][1:]
        extra = f" (M=1: {r['diff'][0]:.2g})" if len(r["diff"]) > len(sizes) else ""
        cells = ["0" if d == 0 else f"{d:.2g}" for d in diffs]
        print(f"| {r['op']}{extra} | {r['format']} | {r['mode']} | " + " | ".join(cells) + " |")
    return results


if __name__ == "__main__":
    sys.exit(main())
