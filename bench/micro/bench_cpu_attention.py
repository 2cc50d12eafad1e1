"""CPU decode attention: the native paged kernel and the torch grouped-matmul path against dense SDPA.

Run: ``.venv/bin/python -m pytest bench/micro/bench_cpu_attention.py``. One layer of SmolLM2's
shape (9 query heads, 3 KV heads, head_dim 64), 64 sequences of 256 tokens. Each result carries the
KV bytes read per call and GB/s in ``extra_info``; compare the rows of one run, never across runs.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from halo.engine import cpu_attention
from halo.engine.dtype_probe import cpu_capability
from halo.engine.kv_cache import KVCache
from halo.engine.model_config import ModelConfig
from halo.engine.step_context import StepContext

B, CTX, H, KVH, D, BS = 64, 256, 9, 3, 64, 16
CONFIG = ModelConfig("bench", 1, 576, H, KVH, D, 1536, 49152, 1e5, 1e-5, 8192, True)


def _setup(dtype: torch.dtype):
    torch.manual_seed(0)
    nblocks = B * CTX // BS
    kv = KVCache(CONFIG, nblocks + 8, BS, dtype)
    kv.k.normal_()
    kv.v.normal_()
    perm = torch.randperm(nblocks)  # sequences' blocks scattered over the pool, as after churn
    tables = perm.view(B, CTX // BS)
    ctx = StepContext(
        input_ids=torch.zeros(B, dtype=torch.int64), positions=torch.zeros(B, dtype=torch.int64),
        slots=torch.zeros(B, dtype=torch.int64), num_decode=B, decode_blocks=tables.reshape(-1),
        decode_max_blocks=CTX // BS, decode_lens=torch.full((B,), CTX), decode_mask=None, prefills=(),
        logits_rows=torch.zeros(0, dtype=torch.int64),
    )
    q = torch.randn(B, H, D, dtype=dtype)
    dense_k = [kv.gather(0, tables[b])[0].unsqueeze(0) for b in range(B)]  # [1, KV, CTX, D] each
    dense_v = [kv.gather(0, tables[b])[1].unsqueeze(0) for b in range(B)]
    return kv, ctx, q, dense_k, dense_v


def _kv_bytes(dtype: torch.dtype) -> int:
    return 2 * B * CTX * KVH * D * torch.empty((), dtype=dtype).element_size()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def bench_paged_grouped_matmul(benchmark, dtype):
    kv, ctx, q, _, _ = _setup(dtype)
    benchmark(cpu_attention.decode_attention_torch, q, kv, 0, ctx, D**-0.5)
    benchmark.extra_info.update(cpu=cpu_capability(), dtype=str(dtype), kv_bytes=_kv_bytes(dtype),
                                gb_per_s=_kv_bytes(dtype) / benchmark.stats["mean"] / 1e9)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def bench_paged_native(benchmark, dtype):
    """The engine's decode path: halo._core.CpuAttention reading the scattered blocks in place."""
    kernel = cpu_attention.native_kernel(torch.get_num_threads())
    if kernel is None:
        pytest.skip("halo._core has no CpuAttention")
    kv, ctx, q, _, _ = _setup(dtype)
    benchmark(cpu_attention.decode_attention, q, kv, 0, ctx, D**-0.5)
    benchmark.extra_info.update(cpu=cpu_capability(), isa=kernel.isa, dtype=str(dtype), kv_bytes=_kv_bytes(dtype),
                                gb_per_s=_kv_bytes(dtype) / benchmark.stats["mean"] / 1e9)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def bench_dense_per_sequence_sdpa(benchmark, dtype):
    _, _, q, dense_k, dense_v = _setup(dtype)

    def run():
        return [F.scaled_dot_product_attention(q[b].view(1, H, 1, D), dense_k[b], dense_v[b], enable_gqa=True)
                for b in range(B)]

    benchmark(run)
    benchmark.extra_info.update(cpu=cpu_capability(), dtype=str(dtype), kv_bytes=_kv_bytes(dtype),
                                gb_per_s=_kv_bytes(dtype) / benchmark.stats["mean"] / 1e9)


def test_paths_agree():
    kv, ctx, q, dense_k, dense_v = _setup(torch.float32)
    paged = cpu_attention.decode_attention_torch(q, kv, 0, ctx, D**-0.5)
    native = cpu_attention.decode_attention(q, kv, 0, ctx, D**-0.5)
    for b in range(0, B, 7):
        ref = F.scaled_dot_product_attention(q[b].view(1, H, 1, D), dense_k[b], dense_v[b], enable_gqa=True)
        torch.testing.assert_close(paged[b], ref.reshape(-1), rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(native[b], ref.reshape(-1), rtol=1e-4, atol=1e-5)
