"""The engine's Triton attention backend, run through the Triton interpreter on CPU tensors.

A GPU runs these kernels compiled; here ``TRITON_INTERPRET=1`` runs the same kernels in Python on
CPU tensors, so the whole engine path is checked against the CPU backend: chunked prefill over a
cached prefix (two prompts sharing one, packed as one varlen prefill beside a decode row), paged
decode, contexts spanning several blocks and kernel tiles, a decode token landing in a fresh block,
and a sliding window in both kernels. The interpreter costs per kernel launch, so the default model
is cut to its first two layers, the first given a window (every launch is a layer times a step);
the comparison is of logits as well as tokens, since a two-layer cut of the model is a weak
language model. It runs in a subprocess: the interpreter mode is fixed when the kernel module is
first imported, and must not leak into the other tests.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import textwrap

import pytest

# find_spec, not import: importing triton in this process before the kernel tests set
# TRITON_INTERPRET would fix triton's driver choice for the whole session.
pytestmark = pytest.mark.skipif(importlib.util.find_spec("triton") is None, reason="triton is not installed")

BLOCK_SIZE = 8
WINDOW = 4  # under a block: the window starts inside a block and leaves whole blocks behind it
TOL = 1e-4  # fp32 logits, the two backends summing in different orders
TILE = 32  # positions per step of both kernels' loops at this model's head size: longer contexts take several

SCRIPT = textwrap.dedent("""
    import json, sys
    from dataclasses import replace
    import halo.kernels as kernels
    from halo.engine import LLMEngine, SamplingParams
    from halo.engine.checkpoint import load_checkpoint
    from halo.engine.model_config import LayerAttention
    block_size, window = int(sys.argv[1]), int(sys.argv[2])
    ckpt = load_checkpoint()
    c = ckpt.config
    # the first two layers of the real weights (the rest are left unread), the first windowed
    ckpt.config = replace(c, num_layers=2, layers=(LayerAttention(c.rope_theta, window=window),
                                                   LayerAttention(c.rope_theta)))
    shared = ("Read this carefully: the weekly planning meeting of the design team moved from Monday to "
              "Tuesday at noon, in room four on the second floor. ")
    prompts = [shared + "When is the meeting?", shared + "Which room?", "Hi"]
    params = SamplingParams(max_tokens=4, ignore_eos=True)
    calls = []  # (kernel, context lengths, new tokens per sequence, window) of every launch
    decode_kernel, prefill_kernel = kernels.paged_decode_attention, kernels.paged_prefill_attention
    def decode(q, k, v, tables, lens, scale, out=None, window=None):
        calls.append(("decode", lens.tolist(), [1] * len(lens), window))
        return decode_kernel(q, k, v, tables, lens, scale, out=out, window=window)
    def prefill(q, cu, k, v, tables, lens, scale, out=None, max_seqlen_q=None, window=None):
        bounds = cu.tolist()
        calls.append(("prefill", lens.tolist(), [b - a for a, b in zip(bounds, bounds[1:])], window))
        return prefill_kernel(q, cu, k, v, tables, lens, scale, out=out, max_seqlen_q=max_seqlen_q, window=window)
    # triton_attention looks the kernels up in halo.kernels at call time
    kernels.paged_decode_attention, kernels.paged_prefill_attention = decode, prefill
    out, logits = {}, {}
    for backend in ("cpu", "triton"):
        calls.clear()
        eng = LLMEngine(model=ckpt, dtype="fp32", kv_blocks=64, block_size=block_size, max_batch_tokens=24,
                        attention_backend=backend)
        logits[backend] = []
        eng.runner.on_logits = lambda seqs, rows, into=logits[backend]: into.extend(rows.tolist())
        res = eng.generate(prompts, params)
        out[backend] = {"tokens": [r.token_ids for r in res], "cached": [r.cached_tokens for r in res],
                        "attention": eng.describe()["attention"], "calls": list(calls), "rows": len(logits[backend])}
    out["err"] = max(abs(a - b) for ra, rb in zip(logits["cpu"], logits["triton"]) for a, b in zip(ra, rb))
    print(json.dumps(out))
""")


def test_triton_backend_matches_cpu_backend_under_interpreter():
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    proc = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(BLOCK_SIZE), str(WINDOW)],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["cpu"]["attention"] == "cpu_attention"
    assert out["triton"]["attention"] == "triton_attention"
    assert out["triton"]["tokens"] == out["cpu"]["tokens"]
    assert out["triton"]["rows"] == out["cpu"]["rows"] == 3 * 4 and out["err"] < TOL
    # chunked prefill (24-token budget) after a cached prefix went through the Triton prefill kernel
    assert out["triton"]["cached"] == out["cpu"]["cached"] and max(out["triton"]["cached"]) > 0
    # the paths the kernels take, as launched: a packed prefill of several sequences, one of them
    # continuing over context already in the cache; contexts longer than a tile; windowed launches of
    # both kernels, the window starting past the first block (prefill) and past a whole tile, which
    # the decode loop skips; a decode token written to the first slot of a fresh block
    calls = out["triton"]["calls"]
    prefills = [(ctx, new, w) for kind, ctx, new, w in calls if kind == "prefill"]
    decodes = [(ctx, w) for kind, ctx, _, w in calls if kind == "decode"]
    assert any(len(ctx) > 1 and any(c > n for c, n in zip(ctx, new, strict=True)) for ctx, new, _ in prefills)
    assert any(max(ctx) > TILE for ctx, _, _ in prefills)
    assert any(w == WINDOW and max(ctx) > WINDOW + BLOCK_SIZE for ctx, _, w in prefills)
    assert any(w == WINDOW and max(ctx) - WINDOW >= TILE for ctx, w in decodes)
    assert any(w is None for _, _, w in prefills) and any(w is None for _, w in decodes)
    assert any(c > 1 and (c - 1) % BLOCK_SIZE == 0 for ctx, _ in decodes for c in ctx)


@pytest.mark.slow
def test_triton_backend_refused_without_gpu_or_interpreter(checkpoint, monkeypatch):
    from halo.engine import LLMEngine
    from halo.errors import InvalidRequestError

    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    import torch

    if torch.cuda.is_available():
        pytest.skip("a CUDA device exists: the triton backend is legitimately available")
    with pytest.raises(InvalidRequestError, match="TRITON_INTERPRET"):
        LLMEngine(model=checkpoint, attention_backend="triton")
    with pytest.raises(InvalidRequestError, match="no CUDA device"):
        LLMEngine(model=checkpoint, device="cuda")


@pytest.mark.slow
@pytest.mark.gpu
def test_engine_on_cuda_matches_cpu(checkpoint):
    import torch
    from halo.engine import LLMEngine, SamplingParams

    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    prompts = ["The capital of France is", [{"role": "user", "content": "Name a colour."}]]
    params = SamplingParams(max_tokens=8, ignore_eos=True)
    cpu = LLMEngine(model=checkpoint, dtype="fp32", kv_blocks=64)
    gpu = LLMEngine(model=checkpoint, dtype="fp32", kv_blocks=64, device="cuda", swap_space_gb=0.1)
    assert gpu.describe()["attention"] == "triton_attention"
    assert [r.token_ids for r in gpu.generate(prompts, params)] == [r.token_ids for r in cpu.generate(prompts, params)]
