"""RoPE and the KV store in one native call (halo._core.CpuRope, engine/cpu_rope.py) against the torch path.

Bit for bit: the rotated q, the rotated k and the pool after the store equal model.apply_rope plus
KVCache.store, for fp32 and bf16 on every ISA this CPU runs, a head dim whose half fills whole vectors
and one that does not, decode-sized and prefill-sized steps; bad positions and slots are refused with
nothing written; and the engine's logits and greedy tokens are the same with and without it.
"""

from __future__ import annotations

import pytest
import torch
from halo.engine import LLMEngine, SamplingParams, cpu_rope
from halo.engine.kv_cache import KVCache
from halo.engine.model import apply_rope
from halo.engine.model_config import ModelConfig
from halo.engine.rope import rope_tables

core = pytest.importorskip("halo._core")
if not hasattr(core, "CpuRope"):
    pytest.skip("halo._core was built without CpuRope", allow_module_level=True)

ISAS = ["generic", "avx2", "avx512"][: ["generic", "avx2", "avx512"].index(core.CpuRope(1).isa) + 1]


def _config(heads: int, kv_heads: int, head_dim: int) -> ModelConfig:
    return ModelConfig(name="t", vocab_size=64, hidden_size=heads * head_dim, intermediate_size=8, num_layers=2,
                       num_heads=heads, num_kv_heads=kv_heads, head_dim=head_dim, rms_eps=1e-5, rope_theta=10000.0,
                       context_length=512, tie_embeddings=True)


def _bits(t: torch.Tensor) -> torch.Tensor:
    """The bit patterns (torch.equal calls -0.0 and 0.0 equal)."""
    return t.contiguous().view(torch.int16 if t.element_size() == 2 else torch.int32)


def _native(kernel, qkv, cos, sin, positions, slots, kv: KVCache, layer: int, heads: int, with_k: bool = True):
    t, kvh, d = qkv.shape[0], kv.num_kv_heads, kv.head_dim
    q = torch.empty(t, heads, d, dtype=qkv.dtype)
    k = torch.empty(t, kvh, d, dtype=qkv.dtype)
    step = kv.k.stride(0) * kv.k.element_size() * layer
    kernel.rotate_and_store(qkv.data_ptr(), cos.data_ptr(), sin.data_ptr(), positions.data_ptr(), slots.data_ptr(),
                            q.data_ptr(), k.data_ptr() if with_k else 0, kv.k.data_ptr() + step,
                            kv.v.data_ptr() + step, t, heads, kvh, d, cos.shape[0], kv.num_blocks * kv.block_size,
                            qkv.dtype == torch.bfloat16)
    return q, k


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("head_dim", [64, 48])
@pytest.mark.parametrize("tokens", [1, 7, 150])
def test_native_equals_apply_rope_and_store(tokens, head_dim, dtype, isa):
    heads, kvh = 6, 2
    config = _config(heads, kvh, head_dim)
    g = torch.Generator().manual_seed(tokens + head_dim)
    cos, sin = (t.to(dtype) for t in rope_tables(head_dim, 10000.0, None, 512))
    qkv = (4 * torch.randn(tokens, (heads + 2 * kvh) * head_dim, generator=g)).to(dtype)
    qkv[:, ::7] = 0.0  # zeros and negative zeros: a rotated 0 keeps torch's sign
    qkv[:, 3::11] = -0.0
    positions = torch.randint(0, 512, (tokens,), generator=g)
    slots = torch.randperm(40 * 16, generator=g)[:tokens]
    ref_kv, got_kv = KVCache(config, 40, 16, dtype), KVCache(config, 40, 16, dtype)
    for pool in (ref_kv.k, ref_kv.v, got_kv.k, got_kv.v):
        pool.fill_(-7.0)
    qk = qkv[:, : (heads + kvh) * head_dim].view(tokens, -1, head_dim)
    rot = apply_rope(qk, cos[positions].unsqueeze(1), sin[positions].unsqueeze(1))
    v = qkv[:, (heads + kvh) * head_dim :].view(tokens, kvh, head_dim)
    ref_kv.store(1, rot[:, heads:], v, slots)
    q, k = _native(core.CpuRope(2, isa), qkv, cos, sin, positions, slots, got_kv, 1, heads)
    assert torch.equal(_bits(q), _bits(rot[:, :heads])) and torch.equal(_bits(k), _bits(rot[:, heads:]))
    assert torch.equal(got_kv.k, ref_kv.k) and torch.equal(got_kv.v, ref_kv.v)  # layer 0 and other slots untouched


def test_bad_positions_and_slots_are_refused_with_nothing_written():
    config = _config(2, 1, 16)
    kv = KVCache(config, 4, 16, torch.float32)
    kv.k.fill_(3.0)
    kv.v.fill_(3.0)
    cos, sin = rope_tables(16, 10000.0, None, 32)
    qkv = torch.randn(2, 4 * 16)
    kernel = core.CpuRope(1)
    with pytest.raises(ValueError, match=r"position 32 of token 1 is outside the rope table \[0, 32\)"):
        _native(kernel, qkv, cos, sin, torch.tensor([0, 32]), torch.tensor([0, 1]), kv, 0, 2)
    with pytest.raises(ValueError, match=r"slot 64 of token 0 is outside the pool \[0, 64\)"):
        _native(kernel, qkv, cos, sin, torch.tensor([0, 1]), torch.tensor([64, 1]), kv, 0, 2)
    assert torch.all(kv.k == 3.0) and torch.all(kv.v == 3.0)
    with pytest.raises(ValueError, match="head_dim even"):
        kernel.rotate_and_store(0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 2, 1, 15, 32, 64, False)


@pytest.mark.slow
@pytest.mark.parametrize("dtype", ["fp32", "bf16"])
def test_engine_outputs_are_the_torch_paths(dtype, monkeypatch, checkpoint):
    """Tokens and their logprobs (the top 5 of every step: functions of the logits) are the same bits
    with the native call and with the torch path, over a shared prefix, prefill and decode steps."""
    engine = LLMEngine(model=checkpoint, dtype=dtype)
    head = "Answer in one word. "
    prompts = [head + "The capital of France is", head + "def fibonacci(n):", "Water boils at a temperature of"]
    params = SamplingParams(max_tokens=16, logprobs=5)

    def run() -> list[tuple]:
        engine.reset_prefix_cache()
        return [(r.token_ids, r.token_logprobs, r.top_logprobs) for r in engine.generate(prompts, params)]

    native = run()
    monkeypatch.setattr(cpu_rope, "rope_store", lambda *args, **kwargs: None)
    assert run() == native
