"""Plain torch reference versions of the paged-KV kernels: obviously correct, fp32 inside.

The Triton kernels (and any CPU fast path) are tested against these. The attention references
loop over sequences and gather each one's keys and values into a dense tensor, so every line can
be checked by eye; the block copy is one indexed copy and doubles as `copy_blocks`' CPU path.
Layout: see `layout.py`. Softmax math runs in fp32 and the result is cast back to `q.dtype`.
"""

from __future__ import annotations

import torch

from .layout import require


def gather_tokens(cache: torch.Tensor, block_table: torch.Tensor, num_tokens: int) -> torch.Tensor:
    """The first `num_tokens` positions of one sequence as a dense [num_tokens, kv_heads, head_dim]."""
    _, block_size, heads, head_dim = cache.shape
    num_blocks = -(-num_tokens // block_size)
    blocks = cache[block_table[:num_blocks].long()]
    return blocks.reshape(num_blocks * block_size, heads, head_dim)[:num_tokens]


def store_kv_ref(k: torch.Tensor, v: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
                 slot_mapping: torch.Tensor) -> None:
    """Write k, v [T, kv_heads, head_dim] into the caches at flat slots; slot -1 means skip."""
    block_size = k_cache.shape[1]
    for t, slot in enumerate(slot_mapping.tolist()):
        if slot < 0:
            continue
        k_cache[slot // block_size, slot % block_size] = k[t]
        v_cache[slot // block_size, slot % block_size] = v[t]


def paged_decode_attention_ref(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
                               block_tables: torch.Tensor, context_lens: torch.Tensor,
                               scale: float) -> torch.Tensor:
    """One query token per sequence, q [B, H, D], attending to all its context_lens[b] cached tokens.

    A sequence with context length 0 gets a zero output.
    """
    out = torch.zeros_like(q)
    for b in range(q.shape[0]):
        n = int(context_lens[b])
        if n == 0:
            continue
        keys, values = _dense_kv(k_cache, v_cache, block_tables[b], n, q.shape[1])
        scores = torch.einsum("hd,nhd->hn", q[b].float(), keys) * scale
        out[b] = torch.einsum("hn,nhd->hd", scores.softmax(-1), values).to(q.dtype)
    return out


def paged_prefill_attention_ref(q: torch.Tensor, cu_seqlens_q: torch.Tensor, k_cache: torch.Tensor,
                                v_cache: torch.Tensor, block_tables: torch.Tensor,
                                context_lens: torch.Tensor, scale: float) -> torch.Tensor:
    """Causal attention for packed new tokens q [T, H, D] over cached prefix + themselves.

    Sequence b owns q rows cu_seqlens_q[b]:cu_seqlens_q[b+1]; they are the LAST n of its
    context_lens[b] positions, and their K/V are already in the cache. New token j sits at position
    ctx - n + j and sees positions 0..ctx - n + j.
    """
    out = torch.zeros_like(q)
    cu = cu_seqlens_q.tolist()
    for b in range(len(cu) - 1):
        start, end, ctx = cu[b], cu[b + 1], int(context_lens[b])
        n = end - start
        if n == 0:
            continue
        require(ctx >= n, f"sequence {b}: context length {ctx} < {n} new tokens")
        keys, values = _dense_kv(k_cache, v_cache, block_tables[b], ctx, q.shape[1])
        scores = torch.einsum("thd,nhd->htn", q[start:end].float(), keys) * scale
        query_pos = torch.arange(ctx - n, ctx, device=q.device).unsqueeze(1)
        key_pos = torch.arange(ctx, device=q.device).unsqueeze(0)
        scores = scores.masked_fill(key_pos > query_pos, float("-inf"))
        out[start:end] = torch.einsum("htn,nhd->thd", scores.softmax(-1), values).to(q.dtype)
    return out


def copy_blocks_ref(src_k: torch.Tensor, src_v: torch.Tensor, dst_k: torch.Tensor, dst_v: torch.Tensor,
                    src_ids: torch.Tensor, dst_ids: torch.Tensor) -> None:
    """dst[dst_ids[i]] = src[src_ids[i]] for whole K and V blocks: `copy_blocks`' torch path.

    Unlike the references above this one is also the production path on CPU, so it is one indexed
    copy per tensor, never a loop over blocks. It indexes the block dimension of the
    `[num_kv_heads, num_blocks, block_size, head_dim]` order (the KV-head-major pool's memory order,
    where each block of a head is one contiguous run); any strides give the same result. Callers
    check the arguments (`layout.check_block_copy`); ids must be on the pools' device or the host.
    """
    src = src_ids.to(src_k.device, torch.int64)
    dst = dst_ids.to(dst_k.device, torch.int64)
    whole_src = _is_identity(src, src_k.shape[0])
    whole_dst = _is_identity(dst, dst_k.shape[0])
    for source, dest in ((src_k, dst_k), (src_v, dst_v)):
        source, dest = source.permute(2, 0, 1, 3), dest.permute(2, 0, 1, 3)
        if whole_src:  # scattering a whole staging buffer: its blocks are already in order
            dest.index_copy_(1, dst, source)
        elif whole_dst and dest.is_contiguous():  # gathering into a whole staging buffer
            torch.index_select(source, 1, src, out=dest)
        else:  # index_select makes a copy, so reads see the old values even within one pool
            dest.index_copy_(1, dst, source.index_select(1, src))


def _is_identity(ids: torch.Tensor, num_blocks: int) -> bool:
    """Whether ids (on the host) are exactly 0..num_blocks-1; ids on a GPU are not read."""
    return ids.device.type == "cpu" and ids.numel() == num_blocks and torch.equal(ids, torch.arange(num_blocks))


def _dense_kv(k_cache: torch.Tensor, v_cache: torch.Tensor, block_table: torch.Tensor, n: int,
              num_heads: int) -> tuple[torch.Tensor, torch.Tensor]:
    """fp32 keys and values [n, num_heads, D] with KV heads repeated for GQA (head h -> h // group)."""
    group = num_heads // k_cache.shape[2]
    keys = gather_tokens(k_cache, block_table, n).float().repeat_interleave(group, dim=1)
    values = gather_tokens(v_cache, block_table, n).float().repeat_interleave(group, dim=1)
    return keys, values
