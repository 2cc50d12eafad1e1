"""Triton paged attention over the block-table KV layout: decode, chunked prefill, and KV store.

Layout and metadata contracts: see `layout.py`. context_lens counts the tokens in the cache for a
sequence INCLUDING this step's new ones; query head h reads KV head h // (H // KVH) (GQA). An
optional sliding ``window`` lets the query at position p see only positions (p - window, p]; tiles
wholly before the window are skipped (their blocks stay in the cache, they are just not read).

One program owns one (sequence, KV head) pair and all the query heads that share that KV head, so
each K/V tile is loaded once per group. It walks the sequence's tokens in tiles, gathering each
token's address through the block table (so a tile may span several cache blocks and block_size
needs no relation to the tile), and keeps an online softmax in fp32. Loaded values are upcast to
fp32 before any arithmetic: bf16 arithmetic is wrong under TRITON_INTERPRET, and bf16/fp16 values
are exact in tf32, so on a GPU the tensor-core dot in tf32 loses nothing on the inputs.

The wrappers check shapes, dtypes, devices and strides (never the data: that would synchronise).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from triton.runtime.interpreter import InterpretedFunction

from .layout import (
    FLOAT_DTYPES,
    check_kv_cache,
    check_paged_batch,
    next_power_of_2,
    require,
    require_launchable,
)

# Registers per program on a GPU bound the fp32 working set; these keep it near 8K elements.
_DECODE_WORKING_SET = 8192
_PREFILL_ROWS = 64
_PREFILL_TILE = 32
_MIN_DOT = 16  # tl.dot needs every dimension >= 16


@triton.jit
def _decode_kernel(
    out_ptr, q_ptr, k_cache_ptr, v_cache_ptr, block_tables_ptr, context_lens_ptr, scale, window,
    stride_qb, stride_qh, stride_ob, stride_oh, stride_cb, stride_ct, stride_ch, stride_bt,
    GROUP: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK_SIZE: tl.constexpr,
    GROUP_PAD: tl.constexpr, HEAD_PAD: tl.constexpr, TILE: tl.constexpr,
):
    # Invariant: after each tile, acc / l is the softmax-weighted mean of V over the tokens seen,
    # with m the running max score (finite start so fully masked rows never produce NaN).
    seq = tl.program_id(0)
    kv_head = tl.program_id(1)
    ctx = tl.load(context_lens_ptr + seq)
    g = tl.arange(0, GROUP_PAD)
    d = tl.arange(0, HEAD_PAD)
    d_mask = d < HEAD_DIM
    q_mask = (g < GROUP)[:, None] & d_mask[None, :]
    heads = kv_head * GROUP + g
    q = tl.load(q_ptr + seq * stride_qb + heads[:, None] * stride_qh + d[None, :], mask=q_mask, other=0.0)
    q = q.to(tl.float32)

    m = tl.full([GROUP_PAD], -1e30, tl.float32)
    l = tl.zeros([GROUP_PAD], tl.float32)
    acc = tl.zeros([GROUP_PAD, HEAD_PAD], tl.float32)
    offs = tl.arange(0, TILE)
    head_off = kv_head.to(tl.int64) * stride_ch
    first = tl.maximum(ctx - window, 0)  # the query (position ctx - 1) sees [ctx - window, ctx)
    for start in range((first // TILE) * TILE, ctx, TILE):
        pos = start + offs
        valid = (pos < ctx) & (pos >= first)
        block = tl.load(block_tables_ptr + seq * stride_bt + pos // BLOCK_SIZE, mask=valid, other=0)
        kv_off = block.to(tl.int64) * stride_cb + (pos % BLOCK_SIZE) * stride_ct + head_off
        kv_mask = valid[:, None] & d_mask[None, :]
        k = tl.load(k_cache_ptr + kv_off[:, None] + d[None, :], mask=kv_mask, other=0.0).to(tl.float32)
        s = tl.sum(q[:, None, :] * k[None, :, :], axis=2) * scale
        s = tl.where(valid[None, :], s, float("-inf"))
        m_new = tl.maximum(m, tl.max(s, axis=1))
        alpha = tl.exp(m - m_new)
        p = tl.exp(s - m_new[:, None])
        l = l * alpha + tl.sum(p, axis=1)
        v = tl.load(v_cache_ptr + kv_off[:, None] + d[None, :], mask=kv_mask, other=0.0).to(tl.float32)
        acc = acc * alpha[:, None] + tl.sum(p[:, :, None] * v[None, :, :], axis=1)
        m = m_new
    out = acc / tl.where(l == 0.0, 1.0, l)[:, None]  # context length 0 -> zeros
    o_ptrs = out_ptr + seq * stride_ob + heads[:, None] * stride_oh + d[None, :]
    tl.store(o_ptrs, out.to(out_ptr.dtype.element_ty), mask=q_mask)


@triton.jit
def _prefill_kernel(
    out_ptr, q_ptr, k_cache_ptr, v_cache_ptr, block_tables_ptr, context_lens_ptr, cu_seqlens_ptr, scale, window,
    stride_qt, stride_qh, stride_ot, stride_oh, stride_cb, stride_ct, stride_ch, stride_bt,
    GROUP: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK_SIZE: tl.constexpr,
    GROUP_PAD: tl.constexpr, HEAD_PAD: tl.constexpr, BLOCK_Q: tl.constexpr, TILE: tl.constexpr,
    PRECISION: tl.constexpr,
):
    # Invariant: as in the decode kernel, per row; a row is one (new token, query head of the group)
    # pair, and new token t (0-based among this step's n) sits at position ctx - n + t.
    seq = tl.program_id(0)
    kv_head = tl.program_id(1)
    q_block = tl.program_id(2)
    q_start = tl.load(cu_seqlens_ptr + seq)
    n_new = tl.load(cu_seqlens_ptr + seq + 1) - q_start
    if q_block * BLOCK_Q >= n_new:
        return
    ctx = tl.load(context_lens_ptr + seq)

    ROWS: tl.constexpr = BLOCK_Q * GROUP_PAD
    r = tl.arange(0, ROWS)
    t = q_block * BLOCK_Q + r // GROUP_PAD
    g = r % GROUP_PAD
    d = tl.arange(0, HEAD_PAD)
    d_mask = d < HEAD_DIM
    row_mask = (t < n_new) & (g < GROUP)
    q_mask = row_mask[:, None] & d_mask[None, :]
    heads = kv_head * GROUP + g
    rows = (q_start + t).to(tl.int64)
    q = tl.load(q_ptr + rows[:, None] * stride_qt + heads[:, None] * stride_qh + d[None, :],
                mask=q_mask, other=0.0).to(tl.float32)
    q_pos = ctx - n_new + t

    m = tl.full([ROWS], -1e30, tl.float32)
    l = tl.zeros([ROWS], tl.float32)
    acc = tl.zeros([ROWS, HEAD_PAD], tl.float32)
    offs = tl.arange(0, TILE)
    head_off = kv_head.to(tl.int64) * stride_ch
    # Causal: no row of this program looks past the last new token it owns.
    end = ctx - n_new + tl.minimum(q_block * BLOCK_Q + BLOCK_Q, n_new)
    # Windowed: no row of this program looks before the window of its first new token.
    first = tl.maximum(ctx - n_new + q_block * BLOCK_Q - window + 1, 0)
    for start in range((first // TILE) * TILE, end, TILE):
        pos = start + offs
        valid = (pos < end) & (pos >= first)
        block = tl.load(block_tables_ptr + seq * stride_bt + pos // BLOCK_SIZE, mask=valid, other=0)
        kv_off = block.to(tl.int64) * stride_cb + (pos % BLOCK_SIZE) * stride_ct + head_off
        kv_mask = valid[:, None] & d_mask[None, :]
        k = tl.load(k_cache_ptr + kv_off[:, None] + d[None, :], mask=kv_mask, other=0.0).to(tl.float32)
        s = tl.dot(q, tl.trans(k), input_precision=PRECISION) * scale
        seen = (pos[None, :] <= q_pos[:, None]) & (pos[None, :] > q_pos[:, None] - window)
        s = tl.where(valid[None, :] & seen, s, float("-inf"))
        m_new = tl.maximum(m, tl.max(s, axis=1))
        alpha = tl.exp(m - m_new)
        p = tl.exp(s - m_new[:, None])
        l = l * alpha + tl.sum(p, axis=1)
        v = tl.load(v_cache_ptr + kv_off[:, None] + d[None, :], mask=kv_mask, other=0.0).to(tl.float32)
        acc = acc * alpha[:, None] + tl.dot(p, v, input_precision=PRECISION)
        m = m_new
    out = acc / tl.where(l == 0.0, 1.0, l)[:, None]
    o_ptrs = out_ptr + rows[:, None] * stride_ot + heads[:, None] * stride_oh + d[None, :]
    tl.store(o_ptrs, out.to(out_ptr.dtype.element_ty), mask=q_mask)


@triton.jit
def _store_kv_kernel(
    k_ptr, v_ptr, k_cache_ptr, v_cache_ptr, slot_mapping_ptr,
    stride_kt, stride_kh, stride_vt, stride_vh, stride_cb, stride_ct, stride_ch,
    BLOCK_SIZE: tl.constexpr, NUM_KV_HEADS: tl.constexpr, HEAD_DIM: tl.constexpr,
    HEADS_PAD: tl.constexpr, HEAD_PAD: tl.constexpr,
):
    # One program per token writes its [num_kv_heads, head_dim] tile; masked off for slot -1.
    t = tl.program_id(0).to(tl.int64)
    slot = tl.load(slot_mapping_ptr + t).to(tl.int64)
    h = tl.arange(0, HEADS_PAD)
    d = tl.arange(0, HEAD_PAD)
    mask = (h < NUM_KV_HEADS)[:, None] & (d < HEAD_DIM)[None, :] & (slot >= 0)
    dst = (slot // BLOCK_SIZE) * stride_cb + (slot % BLOCK_SIZE) * stride_ct
    dst = dst + h.to(tl.int64)[:, None] * stride_ch + d[None, :]
    k = tl.load(k_ptr + t * stride_kt + h[:, None] * stride_kh + d[None, :], mask=mask)
    tl.store(k_cache_ptr + dst, k, mask=mask)
    v = tl.load(v_ptr + t * stride_vt + h[:, None] * stride_vh + d[None, :], mask=mask)
    tl.store(v_cache_ptr + dst, v, mask=mask)


# The mode is fixed when the kernels are decorated, i.e. at this module's first import.
_INTERPRETED = isinstance(_decode_kernel, InterpretedFunction)
_NO_WINDOW = 1 << 30  # a window longer than any context: every earlier position is seen


def _window(window: int | None) -> int:
    require(window is None or (isinstance(window, int) and 0 < window < _NO_WINDOW),
            f"window must be a positive int or None, got {window!r}")
    return _NO_WINDOW if window is None else window


def paged_decode_attention(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
                           block_tables: torch.Tensor, context_lens: torch.Tensor, scale: float,
                           out: torch.Tensor | None = None, window: int | None = None) -> torch.Tensor:
    """Attention of one new token per sequence, q [B, H, D], over its paged context (its last
    ``window`` positions, when given) -> [B, H, D]."""
    shape = check_kv_cache(k_cache, v_cache)
    require(q.dim() == 3, f"q must be [B, H, D], got {tuple(q.shape)}")
    batch, heads, head_dim = q.shape
    _check_query(q, shape.num_kv_heads, shape.head_dim, k_cache)
    check_paged_batch(block_tables, context_lens, batch, q.device)
    out = _output(q, out)
    if batch == 0:
        return out
    group = heads // shape.num_kv_heads
    group_pad = next_power_of_2(group)
    head_pad = next_power_of_2(head_dim)
    # Largest power-of-two tile whose [group, tile, head_dim] product fits the working set.
    tile = 1 << (max(_DECODE_WORKING_SET // (group_pad * head_pad), 1).bit_length() - 1)
    tile = min(64, max(4, tile))
    _decode_kernel[(batch, shape.num_kv_heads)](
        out, q, k_cache, v_cache, block_tables, context_lens, float(scale), _window(window),
        q.stride(0), q.stride(1), out.stride(0), out.stride(1), *k_cache.stride()[:3],
        block_tables.stride(0), GROUP=group, HEAD_DIM=head_dim, BLOCK_SIZE=shape.block_size,
        GROUP_PAD=group_pad, HEAD_PAD=head_pad, TILE=tile,
    )
    return out


def paged_prefill_attention(q: torch.Tensor, cu_seqlens_q: torch.Tensor, k_cache: torch.Tensor,
                            v_cache: torch.Tensor, block_tables: torch.Tensor, context_lens: torch.Tensor,
                            scale: float, out: torch.Tensor | None = None,
                            max_seqlen_q: int | None = None, window: int | None = None) -> torch.Tensor:
    """Causal attention of packed new tokens q [T, H, D] over cached prefix + themselves -> [T, H, D].

    Sequence b owns rows cu_seqlens_q[b]:cu_seqlens_q[b+1], the last n of its context_lens[b]
    positions, whose K/V are already stored. Pass max_seqlen_q when known: computing it reads
    cu_seqlens_q on the host (a device sync). With ``window``, a token sees its last ``window``
    positions only (itself included).
    """
    shape = check_kv_cache(k_cache, v_cache)
    require(q.dim() == 3, f"q must be [T, H, D], got {tuple(q.shape)}")
    _, heads, head_dim = q.shape
    _check_query(q, shape.num_kv_heads, shape.head_dim, k_cache)
    require(cu_seqlens_q.dim() == 1 and cu_seqlens_q.shape[0] >= 1,
            f"cu_seqlens_q must be [B + 1], got {tuple(cu_seqlens_q.shape)}")
    require(cu_seqlens_q.dtype == torch.int32, f"cu_seqlens_q must be int32, got {cu_seqlens_q.dtype}")
    require(cu_seqlens_q.is_contiguous(), "cu_seqlens_q must be contiguous")
    require(cu_seqlens_q.device == q.device, f"cu_seqlens_q on {cu_seqlens_q.device}, expected {q.device}")
    batch = cu_seqlens_q.shape[0] - 1
    check_paged_batch(block_tables, context_lens, batch, q.device)
    out = _output(q, out)
    if max_seqlen_q is None:
        max_seqlen_q = int((cu_seqlens_q[1:] - cu_seqlens_q[:-1]).max()) if batch else 0
    if batch == 0 or max_seqlen_q == 0:
        return out
    group = heads // shape.num_kv_heads
    group_pad = next_power_of_2(group)
    block_q = max(1, _PREFILL_ROWS // group_pad)
    grid = (batch, shape.num_kv_heads, triton.cdiv(max_seqlen_q, block_q))
    _prefill_kernel[grid](
        out, q, k_cache, v_cache, block_tables, context_lens, cu_seqlens_q, float(scale), _window(window),
        q.stride(0), q.stride(1), out.stride(0), out.stride(1), *k_cache.stride()[:3],
        block_tables.stride(0), GROUP=group, HEAD_DIM=head_dim, BLOCK_SIZE=shape.block_size,
        GROUP_PAD=group_pad, HEAD_PAD=max(_MIN_DOT, next_power_of_2(head_dim)), BLOCK_Q=block_q,
        TILE=_PREFILL_TILE,
        # fp16/bf16 values are exact in tf32; fp32 inputs ask for full precision on the GPU.
        PRECISION="ieee" if q.dtype == torch.float32 else "tf32",
    )
    return out


def store_kv(k: torch.Tensor, v: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
             slot_mapping: torch.Tensor) -> None:
    """Write k, v [T, num_kv_heads, head_dim] into the caches at flat slots; slot -1 is skipped."""
    shape = check_kv_cache(k_cache, v_cache)
    require_launchable(k_cache.device, _INTERPRETED)
    for label, t in (("k", k), ("v", v)):
        require(t.dim() == 3 and t.shape[1:] == (shape.num_kv_heads, shape.head_dim),
                f"{label} must be [T, {shape.num_kv_heads}, {shape.head_dim}], got {tuple(t.shape)}")
        require(t.dtype == k_cache.dtype, f"{label} dtype {t.dtype} != cache dtype {k_cache.dtype}")
        require(t.device == k_cache.device, f"{label} on {t.device}, cache on {k_cache.device}")
        require(t.stride(2) == 1, f"{label} must be contiguous in head_dim (strides {tuple(t.stride())})")
    require(k.shape[0] == v.shape[0], f"k has {k.shape[0]} tokens, v has {v.shape[0]}")
    require(slot_mapping.shape == (k.shape[0],), f"slot_mapping must be [T={k.shape[0]}], got "
            f"{tuple(slot_mapping.shape)}")
    require(slot_mapping.dtype in (torch.int32, torch.int64),
            f"slot_mapping must be int32 or int64, got {slot_mapping.dtype}")
    require(slot_mapping.is_contiguous(), "slot_mapping must be contiguous")
    require(slot_mapping.device == k_cache.device, f"slot_mapping on {slot_mapping.device}")
    if k.shape[0] == 0:
        return
    _store_kv_kernel[(k.shape[0],)](
        k, v, k_cache, v_cache, slot_mapping, k.stride(0), k.stride(1), v.stride(0), v.stride(1),
        *k_cache.stride()[:3], BLOCK_SIZE=shape.block_size, NUM_KV_HEADS=shape.num_kv_heads,
        HEAD_DIM=shape.head_dim, HEADS_PAD=next_power_of_2(shape.num_kv_heads),
        HEAD_PAD=next_power_of_2(shape.head_dim),
    )


def _check_query(q: torch.Tensor, num_kv_heads: int, head_dim: int, k_cache: torch.Tensor) -> None:
    require(q.dtype in FLOAT_DTYPES, f"q dtype must be one of {FLOAT_DTYPES}, got {q.dtype}")
    require(q.dtype == k_cache.dtype, f"q dtype {q.dtype} != cache dtype {k_cache.dtype}")
    require(q.device == k_cache.device, f"q on {q.device}, cache on {k_cache.device}")
    require(q.shape[2] == head_dim, f"q head_dim {q.shape[2]} != cache head_dim {head_dim}")
    require(q.shape[1] % num_kv_heads == 0,
            f"query heads {q.shape[1]} must be a multiple of kv heads {num_kv_heads} (GQA)")
    require(q.stride(2) == 1, f"q must be contiguous in head_dim (strides {tuple(q.stride())})")
    require_launchable(q.device, _INTERPRETED)


def _output(q: torch.Tensor, out: torch.Tensor | None) -> torch.Tensor:
    if out is None:
        return torch.empty_like(q)
    require(out.shape == q.shape, f"out shape {tuple(out.shape)} != q shape {tuple(q.shape)}")
    require(out.dtype == q.dtype, f"out dtype {out.dtype} != q dtype {q.dtype}")
    require(out.device == q.device, f"out on {out.device}, q on {q.device}")
    require(out.stride(2) == 1, f"out must be contiguous in head_dim (strides {tuple(out.stride())})")
    return out
