"""llama.cpp's side of `bench/engine_throughput.py --vs-llama-cpp PYTHON`: prefill and batch-1 decode of a GGUF.

Runs inside the Python of a venv with llama-cpp-python (no halo import), on the same GGUF file, thread
count and shapes as halo's side of the comparison:

    PYTHON bench/llama_cpp_baseline.py --model FILE.gguf --threads 2 [--prefill 512] [--context 240] [--steps 64]

Prints one JSON object: llama-cpp-python's version, prefill tok/s of ``--prefill`` random prompt tokens in
one batch, and decode tok/s at batch 1 (greedy, one token per call, after a ``--context``-token prompt),
each the best of ``--repeats`` runs. Token ids are drawn as halo's side draws them (17 and up: 0..16
are control tokens of the default model), from the same seeds.

Install (not a dependency of halo; it compiles llama.cpp, several minutes on 2 cores):

    python3 -m venv /tmp/llama-venv && /tmp/llama-venv/bin/pip install llama-cpp-python
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time


def _prompt(length: int, vocab: int, seed: int) -> list[int]:
    rng = random.Random(seed)
    return [rng.randrange(17, vocab) for _ in range(length)]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", required=True, help="the GGUF file")
    ap.add_argument("--threads", type=int, required=True)
    ap.add_argument("--prefill", type=int, default=512)
    ap.add_argument("--context", type=int, default=240)
    ap.add_argument("--steps", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args(argv)
    import llama_cpp
    import numpy as np

    llm = llama_cpp.Llama(
        model_path=args.model,
        n_ctx=max(args.prefill, args.context + args.steps) + 16,
        n_batch=max(args.prefill, args.context),
        n_threads=args.threads,
        n_threads_batch=args.threads,
        verbose=False,
    )
    vocab = llm.n_vocab()
    best_prefill = float("inf")
    for r in range(args.repeats):
        llm.reset()
        prompt = _prompt(args.prefill, vocab, seed=100 + r)
        t0 = time.perf_counter()
        llm.eval(prompt)
        best_prefill = min(best_prefill, time.perf_counter() - t0)
    best_decode = float("inf")
    for r in range(args.repeats):
        llm.reset()
        llm.eval(_prompt(args.context, vocab, seed=1 + r))
        t0 = time.perf_counter()
        for _ in range(args.steps):
            token = int(np.argmax(llm.scores[llm.n_tokens - 1]))
            llm.eval([token])
        best_decode = min(best_decode, time.perf_counter() - t0)
    json.dump(
        {
            "llama_cpp_python": llama_cpp.__version__,
            "threads": args.threads,
            "prefill_tokens": args.prefill,
            "prefill_tok_s": args.prefill / best_prefill,
            "decode_context": args.context,
            "decode_b1_tok_s": args.steps / best_decode,
        },
        sys.stdout,
    )
    print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
