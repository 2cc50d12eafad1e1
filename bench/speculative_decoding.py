"""Prompt-lookup speculative decoding: decode tok/s with speculation on, auto and off, in one run.

Run: ``.venv/bin/python bench/speculative_decoding.py [--dtype fp32] [--max-tokens 64] [--batches 1,4]``.
Two prompt sets: copy-heavy (repeat, extract and rewrite a given text, where the answer copies spans
of the prompt) and non-copy (open questions). For each set and batch size the same prompts are
generated greedily by three engines sharing one loaded checkpoint — ``speculative="off"``, ``"on"``
and ``"auto"`` — in turn on each group of prompts; the figures are decode tokens per second of decode time (the
steps after every prompt is prefilled), acceptance (accepted / drafted tokens) and tokens gained per
verify step. Outputs are checked identical to the ``off`` engine's. Prints the machine, the dtype,
the probe's GFLOP/s and the load average, since the machine may be shared.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

from halo.engine import LLMEngine, SamplingParams
from halo.engine.checkpoint import load_checkpoint

TEXTS = [
    "Invoice 4471 from Northwind Traders, dated 12 March 2024: 40 units of part A-17 at 3.25 dollars each, "
    "15 units of part B-02 at 11.50 dollars each, shipping 9.99 dollars, total 312.49 dollars, due in 30 days.",
    "The city council met on Tuesday and voted seven to two to extend the bus line along Harbor Road to the "
    "new hospital. Construction starts in May and the first buses should run by the end of next year.",
    "def moving_average(values, window):\n    out = []\n    for i in range(len(values) - window + 1):\n"
    "        out.append(sum(values[i:i + window]) / window)\n    return out\n",
    "Customer Alice Moreno wrote that order 1042 arrived two weeks late and the blue kettle inside was cracked; "
    "she asks for a replacement kettle or a full refund of 49 dollars to her card ending in 7781.",
]
COPY = [
    "Repeat the following text exactly:\n{t}",
    "Extract every name, number and date from this text, one per line, with the words around it:\n{t}",
    "Rewrite this text as a bulleted list, keeping the original wording:\n{t}",
    "Copy this text, then fix any typos:\n{t}",
]
FREE = [
    "Write a short poem about autumn leaves.",
    "Give three tips for learning a new language.",
    "Explain why the sky is blue to a child.",
    "Describe your ideal weekend in a few sentences.",
    "What are the benefits of regular exercise?",
    "Tell a short story about a lost dog finding its way home.",
    "How does a refrigerator keep food cold?",
    "Suggest a name for a coffee shop and explain it.",
]


def prompt_sets() -> dict[str, list[list[dict[str, str]]]]:
    # each template on a different text first, so a few prompts already mix tasks and texts
    copy = [
        [{"role": "user", "content": COPY[(i + j) % len(COPY)].format(t=t)}]
        for j in range(len(COPY))
        for i, t in enumerate(TEXTS)
    ]
    free = [[{"role": "user", "content": f}] for f in FREE]
    return {"copy-heavy": copy, "non-copy": free}


def decode_run(engine: LLMEngine, prompts: list, params: SamplingParams) -> tuple[list[list[int]], float, int]:
    """Generate; returns outputs, seconds of steps after the last prompt token was computed, tokens then."""
    engine.reset_prefix_cache()
    ids = [engine.add_request(p, params) for p in prompts]
    results: dict[str, list[int]] = {}
    decode_s, decode_tok, started = 0.0, 0, False
    while engine.has_unfinished():
        if not started:
            seqs = engine.batch_scheduler.running
            started = not engine.batch_scheduler.waiting and all(s.num_computed >= len(s.prompt_ids) for s in seqs)
        before = engine.stats().generated_tokens
        t0 = time.perf_counter()
        for r in engine.step():
            results[r.request_id] = r.token_ids
        if started:
            decode_s += time.perf_counter() - t0
            decode_tok += engine.stats().generated_tokens - before
    return [results[i] for i in ids], decode_s, decode_tok


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--dtype", default="fp32", choices=["auto", "bf16", "fp32"])
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--batches", default="1,4")
    ap.add_argument("--prompts", type=int, default=4, help="prompts per set (batch 1 runs them one by one)")
    ap.add_argument("--json", help="also write the figures here")
    args = ap.parse_args(argv)
    ckpt = load_checkpoint(None)
    engines = {m: LLMEngine(ckpt, dtype=args.dtype, speculative=m) for m in ("off", "on", "auto")}
    d = engines["off"].describe()
    gflops = engines["off"].speculator.cost.flops_per_second / 1e9
    print(
        f"machine: cpu={d['cpu']} threads={d['threads']} dtype={d['dtype']} probe {gflops:.0f} GFLOP/s "
        f"load average (1/5/15 min) before: {' '.join(f'{x:.2f}' for x in os.getloadavg())}"
    )
    params = SamplingParams(max_tokens=args.max_tokens)
    figures: list[dict] = []
    for name, prompts in prompt_sets().items():
        prompts = prompts[: args.prompts]
        for batch in (int(b) for b in args.batches.split(",")):
            groups = [prompts[i : i + batch] for i in range(0, len(prompts), batch)]
            row: dict = {"set": name, "batch": batch}
            outs: dict[str, list[list[int]]] = {m: [] for m in engines}
            secs = dict.fromkeys(engines, 0.0)
            toks = dict.fromkeys(engines, 0)
            for engine in engines.values():
                engine.reset_stats()
            for g in groups:  # the modes in turn on each group, so a shared machine's load hits all alike
                for mode, engine in engines.items():
                    o, sec, tok = decode_run(engine, g, params)
                    outs[mode] += o
                    secs[mode] += sec
                    toks[mode] += tok
            for mode, engine in engines.items():
                st = engine.stats()
                row[mode] = {
                    "decode_tok_s": toks[mode] / secs[mode] if secs[mode] else 0.0,
                    "proposed": st.speculative_proposed,
                    "accepted": st.speculative_accepted,
                    "acceptance": st.acceptance_rate,
                    "tokens_per_verify": st.tokens_per_verify,
                    "identical_to_off": outs[mode] == outs["off"],
                }
            figures.append(row)
            off = row["off"]["decode_tok_s"]
            parts = [f"{name:10s} batch {batch}: off {off:6.1f} tok/s"]
            for mode in ("on", "auto"):
                r = row[mode]
                parts.append(
                    f"{mode} {r['decode_tok_s']:6.1f} tok/s ({r['decode_tok_s'] / off:.2f}x, acceptance "
                    f"{r['acceptance']:.2f}, {r['tokens_per_verify']:.2f} tok/verify, "
                    f"{'identical' if r['identical_to_off'] else 'DIFFERENT'})"
                )
            print("; ".join(parts), flush=True)
    print(f"load average after: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"machine": d, "figures": figures}, fh, indent=2, default=str)
    return 0 if all(r[m]["identical_to_off"] for r in figures for m in ("on", "auto")) else 1


if __name__ == "__main__":
    sys.exit(main())
