"""Weight formats on this machine: resident weight memory, prefill and decode speed, and agreement with bf16.

Run: ``.venv/bin/python bench/quantized_weights.py [--model NAME] [--formats fp32,bf16,int8,int4]
[--batches 1,64] [--prefill-tokens 512] [--context 240] [--max-tokens 32] [--json out.json]``.

Per format, one engine on the same loaded checkpoint (float formats in their own dtype, int8/int4
with ``--quantized-dtype``, bf16 by default):

- weights MiB: `DecoderModel.weight_bytes` (every matrix, embedding and norm as held in memory);
- prefill tok/s of one ``--prefill-tokens`` prompt, decode tok/s at each ``--batches`` size with
  ``--context`` tokens of context (the measurements of `engine_throughput.py`);
- agreement with the bf16 engine over a fixed prompt set: greedy (the share of generated tokens
  equal to bf16's before the first difference, ``--max-tokens`` per prompt), and, teacher-forced
  along bf16's greedy continuation (every ``--kl-stride`` positions), the share of positions whose
  top-1 token is bf16's and the mean KL(bf16 || format) of the next-token distributions.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from halo.engine import LLMEngine, SamplingParams
from halo.engine.checkpoint import Checkpoint, load_checkpoint

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the checkout, for `bench.*` when run as a script
from bench.engine_throughput import decode_throughput, prefill_throughput  # noqa: E402

PROMPTS = [
    "The capital of France is",
    "Water boils at a temperature of",
    "def fibonacci(n):",
    "The three primary colors are",
    "Once upon a time, in a small village,",
    "To make a cup of tea, first",
    "The largest planet in the solar system is",
    "SELECT name, total FROM orders WHERE",
    "A good way to learn a new language is",
    "The customer wrote: 'My package arrived damaged.' The support agent replied:",
    "Photosynthesis is the process by which",
    "In 1969, the first humans",
    "Here is a list of fruits: apple, banana,",
    "The main causes of the French Revolution were",
    "import numpy as np\nx = np.",
    "Question: What is 12 times 7?\nAnswer:",
]


@dataclass
class Row:
    format: str
    dtype: str
    weight_mib: float
    prefill_tok_s: float
    decode_tok_s: dict[int, float]
    greedy_agreement: float
    top1_agreement: float
    mean_kl: float


@dataclass
class Reference:
    """bf16's greedy continuations and next-token log-probabilities at the teacher-forced positions."""

    tokens: list[list[int]]
    contexts: list[list[int]]
    logprobs: torch.Tensor  # [positions, vocab]


def teacher_forced_contexts(engine: LLMEngine, tokens: list[list[int]], stride: int) -> list[list[int]]:
    contexts = []
    for prompt, continuation in zip(PROMPTS, tokens, strict=True):
        ids = engine.encode_prompt(prompt)
        contexts += [ids + continuation[:k] for k in range(0, len(continuation), stride)]
    return contexts


def logprobs_at(engine: LLMEngine, contexts: list[list[int]]) -> torch.Tensor:
    return torch.stack([torch.log_softmax(engine.next_token_logits(c).float(), -1) for c in contexts])


def greedy(engine: LLMEngine, max_tokens: int) -> list[list[int]]:
    params = SamplingParams(max_tokens=max_tokens, ignore_eos=True)
    return [r.token_ids for r in engine.generate(PROMPTS, params)]


def build(ckpt: Checkpoint, fmt: str, quantized_dtype: str) -> LLMEngine:
    dtype = fmt if fmt in ("fp32", "bf16") else quantized_dtype
    return LLMEngine(ckpt, dtype=dtype, weights=fmt, swap_space_gb=0)


def measure(engine: LLMEngine, ref: Reference, args: argparse.Namespace) -> Row:
    d = engine.describe()
    tokens = greedy(engine, args.max_tokens)
    same = total = 0
    for want, got in zip(ref.tokens, tokens, strict=True):
        pairs = enumerate(zip(want, got, strict=True))
        same += next((i for i, (a, b) in pairs if a != b), len(want))
        total += len(want)
    logprobs = logprobs_at(engine, ref.contexts)
    top1 = (logprobs.argmax(-1) == ref.logprobs.argmax(-1)).float().mean().item()
    kl = (ref.logprobs.exp() * (ref.logprobs - logprobs)).sum(-1).mean().item()
    prefill = prefill_throughput(engine, args.prefill_tokens)
    decode = {b: decode_throughput(engine, b, context=args.context, steps=args.decode_steps) for b in args.batches}
    return Row(d["weights"], d["dtype"], engine.model.weight_bytes() / 2**20, prefill, decode, same / total, top1, kl)


def table(rows: list[Row], batches: list[int]) -> str:
    head = [
        "format",
        "dtype",
        "weights MiB",
        "prefill tok/s",
        *(f"decode b{b} tok/s" for b in batches),
        "greedy agree",
        "top-1 agree",
        "mean KL",
    ]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = [
            r.format,
            r.dtype,
            f"{r.weight_mib:.0f}",
            f"{r.prefill_tok_s:.0f}",
            *(f"{r.decode_tok_s[b]:.0f}" for b in batches),
            f"{r.greedy_agreement:.1%}",
            f"{r.top1_agreement:.1%}",
            f"{r.mean_kl:.4f}",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=None, help="registered name or path (default: the default model)")
    ap.add_argument("--formats", default="fp32,bf16,int8,int4")
    ap.add_argument("--quantized-dtype", default="bf16", choices=["bf16", "fp32"], help="dtype of int8/int4 engines")
    ap.add_argument("--batches", default="1,64")
    ap.add_argument("--prefill-tokens", type=int, default=512)
    ap.add_argument("--context", type=int, default=240, help="context tokens of each decoding sequence")
    ap.add_argument("--decode-steps", type=int, default=16)
    ap.add_argument("--max-tokens", type=int, default=32, help="greedy tokens per agreement prompt")
    ap.add_argument("--kl-stride", type=int, default=4, help="teacher-forced positions every N tokens")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--json", help="also write the rows and machine facts here")
    args = ap.parse_args(argv)
    args.batches = [int(b) for b in args.batches.split(",")]
    if args.threads:
        torch.set_num_threads(args.threads)
    ckpt = load_checkpoint(args.model)

    reference = build(ckpt, "bf16", args.quantized_dtype)
    ref_tokens = greedy(reference, args.max_tokens)
    contexts = teacher_forced_contexts(reference, ref_tokens, args.kl_stride)
    ref = Reference(ref_tokens, contexts, logprobs_at(reference, contexts))
    machine = reference.describe()
    del reference
    print(
        f"model={machine['model']} cpu={machine['cpu']} threads={machine['threads']} "
        f"prompts={len(PROMPTS)} greedy tokens={args.max_tokens} teacher-forced positions={len(contexts)} "
        f"prefill={args.prefill_tokens} tokens, decode context={args.context}",
        file=sys.stderr,
    )
    rows = []
    for fmt in args.formats.split(","):
        engine = build(ckpt, fmt, args.quantized_dtype)
        rows.append(measure(engine, ref, args))
        print(
            f"{fmt}: {engine.describe()['weights_reason']}; layers {engine.describe()['weight_layers']}",
            file=sys.stderr,
        )
        del engine
    print(table(rows, args.batches))
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(
                {"machine": machine, "args": vars(args), "rows": [asdict(r) for r in rows]}, fh, indent=2, default=str
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
