"""RoPE of a layer's q and k and the store of its k and v into the paged pool, in one native call on CPU.

The decoder's torch path for this is a dozen calls per layer (slices, a negation, a cat, two
multiplies and an add for rotate_half RoPE; views, transposes and two index copies for the store).
``halo._core.CpuRope`` does it in one, reading the fused QKV projection and the cos/sin tables in
place, and computes the same bits: each product and the sum are rounded as torch's separate calls
round them (tests/test_cpu_rope.py). The model builds a `RopeStore` once per step where it applies
(a CPU pool of the activations' dtype, fp32 or bf16, and no q/k norm between the projection and the
rotation) and calls it per layer; everywhere else it keeps the torch path (model.apply_rope,
KVCache.store).
"""

from __future__ import annotations

import torch

from halo.engine import native_kernels
from halo.engine.kv_cache import KVCache
from halo.engine.step_context import StepContext

_NATIVE_DTYPES = (torch.float32, torch.bfloat16)


def native_kernel(num_threads: int):
    """The process's ``halo._core.CpuRope`` for a thread count, or None (an older build of the core)."""
    return native_kernels.native_kernel("CpuRope", num_threads)


class RopeStore:
    """One step's rotate-and-store for every layer: ``step(qkv, layer, table) -> (q, k)``.

    ``qkv`` is the layer's fused projection ``[T, (H + 2 KV) * D]``; q ``[T, H, D]`` comes back rotated,
    k ``[T, KV, D]`` rotated when ``with_k`` (prefill spans attend to their fresh K directly) else None,
    and the pool holds rotated k and v at the step's slots.
    """

    __slots__ = ("kernel", "kv", "tables", "ctx", "heads", "with_k", "layer_bytes", "pool_slots")

    def __init__(self, kernel, kv: KVCache, tables: list[tuple[torch.Tensor, torch.Tensor]], ctx: StepContext,
                 heads: int) -> None:
        self.kernel, self.kv, self.tables, self.ctx, self.heads = kernel, kv, tables, ctx, heads
        self.with_k = bool(ctx.prefills)
        self.layer_bytes = kv.k.stride(0) * kv.k.element_size()
        self.pool_slots = kv.num_blocks * kv.block_size

    def __call__(self, qkv: torch.Tensor, layer: int, table: int) -> tuple[torch.Tensor, torch.Tensor | None]:
        kv, ctx = self.kv, self.ctx
        t, d, kvh = qkv.shape[0], kv.head_dim, kv.num_kv_heads
        if qkv.dim() != 2 or qkv.shape[1] != (self.heads + 2 * kvh) * d or qkv.dtype != kv.k.dtype:
            raise ValueError(f"qkv {tuple(qkv.shape)} {qkv.dtype} is not [T, (H + 2 KV) D] in {kv.k.dtype}")
        qkv = qkv.contiguous()  # a projection's output already is: no copy
        cos, sin = self.tables[table]
        q = torch.empty(t, self.heads, d, dtype=qkv.dtype)
        k = torch.empty(t, kvh, d, dtype=qkv.dtype) if self.with_k else None
        offset = layer * self.layer_bytes
        self.kernel.rotate_and_store(
            qkv.data_ptr(), cos.data_ptr(), sin.data_ptr(), ctx.positions.data_ptr(), ctx.slots.data_ptr(),
            q.data_ptr(), 0 if k is None else k.data_ptr(), kv.k.data_ptr() + offset, kv.v.data_ptr() + offset,
            t, self.heads, kvh, d, cos.shape[0], self.pool_slots, qkv.dtype == torch.bfloat16,
        )
        return q, k


def rope_store(kv: KVCache, tables: list[tuple[torch.Tensor, torch.Tensor]], ctx: StepContext,
               heads: int) -> RopeStore | None:
    """The step's `RopeStore`, or None where the torch path must serve (see the module docstring)."""
    pool = kv.k
    if pool.device.type != "cpu" or pool.dtype not in _NATIVE_DTYPES:
        return None
    if not (pool.is_contiguous() and kv.v.is_contiguous()) or kv.v.dtype != pool.dtype:
        return None
    if any(c.dtype != pool.dtype or not (c.is_contiguous() and s.is_contiguous()) for c, s in tables):
        return None
    if ctx.positions.dtype != torch.int64 or ctx.slots.dtype != torch.int64:
        return None
    kernel = native_kernel(torch.get_num_threads())
    if kernel is None:
        return None
    return RopeStore(kernel, kv, tables, ctx, heads)
