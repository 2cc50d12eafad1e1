"""Triton gather/scatter of whole KV blocks by index lists, within one device.

Uses: copy-on-write of a shared last block, compaction of a pool, migration between two pools on
one GPU (which may differ in layout: each pool's strides are honoured). Each program copies one
chunk of one (src block -> dst block) pair for both K and V; elements are moved as loaded, never
computed on, so the copy is exact for every dtype.

Across devices (host<->GPU offload and prefetch) use `swap_blocks`, re-exported here from
`block_swap.py`: a plain torch gather, transfer and scatter.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from triton.runtime.interpreter import InterpretedFunction

from .block_swap import BlockIds, check_block_copy, swap_blocks
from .layout import next_power_of_2, require, require_launchable

__all__ = ["copy_blocks", "swap_blocks"]

_CHUNK = 4096  # elements per program: big enough to stream, small enough for any block size


@triton.jit
def _copy_blocks_kernel(
    src_k_ptr, src_v_ptr, dst_k_ptr, dst_v_ptr, src_ids_ptr, dst_ids_ptr,
    src_sb, src_st, src_sh, dst_sb, dst_st, dst_sh,
    BLOCK_SIZE: tl.constexpr, NUM_KV_HEADS: tl.constexpr, HEAD_DIM: tl.constexpr, CHUNK: tl.constexpr,
):
    # Program (pair, chunk) copies elements [chunk * CHUNK, (chunk + 1) * CHUNK) of one block, counted
    # in [block_size, num_kv_heads, head_dim] order; each pool's strides place them in memory.
    pair = tl.program_id(0)
    e = tl.program_id(1) * CHUNK + tl.arange(0, CHUNK)
    mask = e < BLOCK_SIZE * NUM_KV_HEADS * HEAD_DIM
    t = e // (NUM_KV_HEADS * HEAD_DIM)
    h = ((e // HEAD_DIM) % NUM_KV_HEADS).to(tl.int64)
    d = e % HEAD_DIM
    src = tl.load(src_ids_ptr + pair).to(tl.int64) * src_sb + t * src_st + h * src_sh + d
    dst = tl.load(dst_ids_ptr + pair).to(tl.int64) * dst_sb + t * dst_st + h * dst_sh + d
    tl.store(dst_k_ptr + dst, tl.load(src_k_ptr + src, mask=mask), mask=mask)
    tl.store(dst_v_ptr + dst, tl.load(src_v_ptr + src, mask=mask), mask=mask)


_INTERPRETED = isinstance(_copy_blocks_kernel, InterpretedFunction)


def copy_blocks(src_k: torch.Tensor, src_v: torch.Tensor, dst_k: torch.Tensor, dst_v: torch.Tensor,
                src_ids: BlockIds, dst_ids: BlockIds) -> None:
    """dst[dst_ids[i]] = src[src_ids[i]] for whole K and V blocks, both pools on one device.

    src and dst may be the same pool, but then no id may be both a source and a destination (the
    blocks are copied in parallel). Destination ids must be unique. Host-side ids are checked
    for all of this; ids already on the GPU are trusted.
    """
    src, dst = check_block_copy(src_k, src_v, dst_k, dst_v, src_ids, dst_ids)
    device = src_k.device
    require(dst_k.device == device, f"src on {device}, dst on {dst_k.device}: use swap_blocks across devices")
    require_launchable(device, _INTERPRETED)
    one_pool = src_k.data_ptr() == dst_k.data_ptr()
    if one_pool and src.device.type == "cpu" and dst.device.type == "cpu":
        overlap = set(src.tolist()) & set(dst.tolist())
        require(not overlap, f"copy within one pool with ids both source and destination: {sorted(overlap)}")
    if src.numel() == 0:
        return
    src = src.to(device).contiguous()
    dst = dst.to(device).contiguous()
    _, block_size, num_kv_heads, head_dim = src_k.shape
    block_numel = block_size * num_kv_heads * head_dim
    chunk = min(next_power_of_2(block_numel), _CHUNK)
    grid = (src.numel(), triton.cdiv(block_numel, chunk))
    _copy_blocks_kernel[grid](
        src_k, src_v, dst_k, dst_v, src, dst, *src_k.stride()[:3], *dst_k.stride()[:3],
        BLOCK_SIZE=block_size, NUM_KV_HEADS=num_kv_heads, HEAD_DIM=head_dim, CHUNK=chunk,
    )
