"""The engine's Triton attention backend, run through the Triton interpreter on CPU tensors.

A GPU runs these kernels compiled; here ``TRITON_INTERPRET=1`` runs the same kernels in Python on
CPU tensors, so the whole engine path (paged decode + chunked prefill over a cached prefix) is
checked against the CPU backend. It runs in a subprocess: the interpreter mode is fixed when the
kernel module is first imported, and must not leak into the other tests.
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

SCRIPT = textwrap.dedent("""
    import json
    from halo.engine import LLMEngine, SamplingParams
    from halo.engine.checkpoint import load_checkpoint
    ckpt = load_checkpoint()
    shared = "Read this: the meeting moved to Tuesday at noon in room four. "
    prompts = [shared + "When is the meeting?", shared + "Where is the meeting?", "Hi"]
    params = SamplingParams(max_tokens=6, ignore_eos=True)
    out = {}
    for backend in ("cpu", "triton"):
        eng = LLMEngine(model=ckpt, dtype="fp32", kv_blocks=64, block_size=8, max_batch_tokens=24,
                        attention_backend=backend)
        res = eng.generate(prompts, params)
        out[backend] = {"tokens": [r.token_ids for r in res], "cached": [r.cached_tokens for r in res],
                        "attention": eng.describe()["attention"]}
    print(json.dumps(out))
""")


def test_triton_backend_matches_cpu_backend_under_interpreter():
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    proc = subprocess.run([sys.executable, "-c", SCRIPT], env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["cpu"]["attention"] == "cpu_attention"
    assert out["triton"]["attention"] == "triton_attention"
    assert out["triton"]["tokens"] == out["cpu"]["tokens"]
    # chunked prefill (24-token budget) after a cached prefix went through the Triton prefill kernel
    assert out["triton"]["cached"] == out["cpu"]["cached"] and max(out["triton"]["cached"]) > 0


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
