"""Random paged-KV batches and error measures shared by the kernel tests and micro-benchmarks.

A batch is built to catch kernels that read or write where they should not: blocks are handed
out in shuffled order, the caches are strided views (padded blocks, or a KV-head-major pool),
every cache slot that no sequence owns (the tail of each last block, unused blocks, and block 0,
which unused block-table entries point at) holds NaN, and queries are strided views into a
fused QKV-like tensor.
Importing this module does not import triton.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from .reference import paged_decode_attention_ref, paged_prefill_attention_ref


@dataclass(frozen=True)
class PagedKV:
    """One layer's poisoned paged cache plus the batch metadata that addresses it."""

    k_cache: torch.Tensor
    v_cache: torch.Tensor
    block_tables: torch.Tensor  # int32 [B, max_blocks]; unused entries are 0, a NaN block
    context_lens: torch.Tensor  # int32 [B]


def make_paged_kv(context_lens: list[int], block_size: int, num_kv_heads: int, head_dim: int,
                  dtype: torch.dtype, device: str | torch.device, seed: int, spare_blocks: int = 3,
                  poison: bool = True, head_major: bool = False) -> PagedKV:
    """Random K/V for sequences of the given lengths in shuffled blocks; see the module docstring.

    head_major lays the pool out as [num_kv_heads, num_blocks, block_size, head_dim] (the CPU
    engine's layout) and hands out permuted views; otherwise K and V are interleaved per block
    with padding, so the block stride is not the block size.
    """
    gen = torch.Generator().manual_seed(seed)
    blocks_per_seq = [-(-n // block_size) for n in context_lens]
    max_blocks = max([*blocks_per_seq, 1])
    num_blocks = 1 + sum(blocks_per_seq) + spare_blocks  # block 0 stays unowned
    fill = float("nan") if poison else 0.0
    shape = (num_blocks, block_size, num_kv_heads, head_dim)
    if head_major:
        pool = torch.full((2, num_kv_heads, num_blocks, block_size, head_dim), fill, dtype=dtype)
    else:
        pool = torch.full((num_blocks, 2, block_size * num_kv_heads * head_dim + 8), fill, dtype=dtype)
    k_cache, v_cache = _cache_views(pool, shape, head_major)
    order = (torch.randperm(num_blocks - 1, generator=gen) + 1).tolist()
    block_tables = torch.zeros(len(context_lens), max_blocks, dtype=torch.int32)
    for b, n in enumerate(context_lens):
        for i in range(blocks_per_seq[b]):
            block = order.pop()
            block_tables[b, i] = block
            used = min(block_size, n - i * block_size)
            k_cache[block, :used] = torch.randn((used, num_kv_heads, head_dim), generator=gen).to(dtype)
            v_cache[block, :used] = torch.randn((used, num_kv_heads, head_dim), generator=gen).to(dtype)
    k_cache, v_cache = _cache_views(pool.to(device), shape, head_major)
    return PagedKV(k_cache, v_cache, block_tables.to(device),
                   torch.tensor(context_lens, dtype=torch.int32, device=device))


def _cache_views(pool: torch.Tensor, shape: tuple[int, int, int, int],
                 head_major: bool) -> tuple[torch.Tensor, torch.Tensor]:
    if head_major:
        return pool[0].permute(1, 2, 0, 3), pool[1].permute(1, 2, 0, 3)
    inner = shape[1] * shape[2] * shape[3]
    return pool[:, 0, :inner].view(shape), pool[:, 1, :inner].view(shape)


def make_queries(num_tokens: int, num_heads: int, num_kv_heads: int, head_dim: int, dtype: torch.dtype,
                 device: str | torch.device, seed: int) -> torch.Tensor:
    """q [T, H, D] as the leading slice of a fused [T, H + 2*KVH, D] tensor (a strided view)."""
    gen = torch.Generator().manual_seed(seed)
    fused = torch.randn(num_tokens, num_heads + 2 * num_kv_heads, head_dim, generator=gen).to(dtype)
    return fused.to(device)[:, :num_heads]


def cu_seqlens(lengths: list[int], device: str | torch.device) -> torch.Tensor:
    """Exclusive prefix sums [0, l0, l0+l1, ...] as int32."""
    out = [0]
    for n in lengths:
        out.append(out[-1] + n)
    return torch.tensor(out, dtype=torch.int32, device=device)


def poisoned_like(t: torch.Tensor) -> torch.Tensor:
    """A NaN-filled tensor like t: any element a kernel forgets to write stays NaN."""
    return torch.full_like(t, float("nan"))


def rel_error(out: torch.Tensor, ref: torch.Tensor) -> float:
    """max |out - ref| / max |ref|, in fp64; NaN anywhere in out gives inf."""
    out, ref = out.double().cpu(), ref.double().cpu()
    if torch.isnan(out).any():
        return float("inf")
    return float((out - ref).abs().max() / ref.abs().max().clamp_min(1e-30))


def upcast(kv: PagedKV) -> PagedKV:
    """The same batch with fp32 caches: the reference's input for exact answers to 16-bit inputs."""
    return PagedKV(kv.k_cache.float(), kv.v_cache.float(), kv.block_tables, kv.context_lens)


TOLERANCE = {torch.float32: 1e-5, torch.float16: 1e-2, torch.bfloat16: 1e-2}


@dataclass(frozen=True)
class AttentionShape:
    block_size: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    head_major: bool = False  # cache layout, see make_paged_kv

    def __str__(self) -> str:
        layout = "-headmajor" if self.head_major else ""
        return f"bs{self.block_size}-h{self.num_heads}/{self.num_kv_heads}-d{self.head_dim}{layout}"


# Block sizes 4..16 and one that is not a power of 2, GQA groups of 1, 2, 3 and 8, head_dim 48,
# both cache layouts.
ATTENTION_SHAPES = (
    AttentionShape(4, 4, 2, 64),
    AttentionShape(8, 6, 2, 64, head_major=True),
    AttentionShape(16, 9, 3, 48),
    AttentionShape(16, 4, 4, 32, head_major=True),
    AttentionShape(8, 8, 1, 64),
    AttentionShape(6, 4, 2, 16, head_major=True),
)


def random_lengths(seed: int, batch: int = 3, max_context: int = 80) -> tuple[list[int], list[int]]:
    """(context_lens, new_lens) for a ragged batch: sequence 0 is a pure prefill (new == context),
    sequence 1 a single new token, the rest a random chunk after a random cached prefix."""
    gen = torch.Generator().manual_seed(seed)
    contexts = torch.randint(1, max_context + 1, (batch,), generator=gen).tolist()
    news = [contexts[0], 1] + [int(torch.randint(1, c + 1, (1,), generator=gen)) for c in contexts[2:]]
    return contexts, news[:batch]


Decode = Callable[..., torch.Tensor]


def decode_error(decode: Decode, shape: AttentionShape, context_lens: list[int], dtype: torch.dtype,
                 device: str | torch.device, seed: int) -> float:
    """rel_error of `decode` (paged_decode_attention's signature) against the fp32 reference."""
    kv = make_paged_kv(context_lens, shape.block_size, shape.num_kv_heads, shape.head_dim, dtype,
                       device, seed, head_major=shape.head_major)
    q = make_queries(len(context_lens), shape.num_heads, shape.num_kv_heads, shape.head_dim, dtype,
                     device, seed + 1)
    scale = shape.head_dim ** -0.5
    out = decode(q, kv.k_cache, kv.v_cache, kv.block_tables, kv.context_lens, scale, out=poisoned_like(q))
    ref_kv = upcast(kv)
    ref = paged_decode_attention_ref(q.float(), ref_kv.k_cache, ref_kv.v_cache, ref_kv.block_tables,
                                     ref_kv.context_lens, scale)
    return rel_error(out, ref)


def prefill_error(prefill: Decode, shape: AttentionShape, context_lens: list[int], new_lens: list[int],
                  dtype: torch.dtype, device: str | torch.device, seed: int) -> float:
    """rel_error of `prefill` (paged_prefill_attention's signature) against the fp32 reference."""
    kv = make_paged_kv(context_lens, shape.block_size, shape.num_kv_heads, shape.head_dim, dtype,
                       device, seed, head_major=shape.head_major)
    q = make_queries(sum(new_lens), shape.num_heads, shape.num_kv_heads, shape.head_dim, dtype,
                     device, seed + 1)
    cu = cu_seqlens(new_lens, device)
    scale = shape.head_dim ** -0.5
    out = prefill(q, cu, kv.k_cache, kv.v_cache, kv.block_tables, kv.context_lens, scale,
                  out=poisoned_like(q))
    ref_kv = upcast(kv)
    ref = paged_prefill_attention_ref(q.float(), cu, ref_kv.k_cache, ref_kv.v_cache, ref_kv.block_tables,
                                      ref_kv.context_lens, scale)
    return rel_error(out, ref)
