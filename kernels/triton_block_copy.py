"""Triton gather/scatter of whole KV blocks by index lists, within one device: `copy_blocks` on a GPU.

`block_copy.copy_blocks` checks the arguments and calls `copy_blocks_triton` on CUDA tensors (or on
any tensors under TRITON_INTERPRET=1 when asked for backend="triton"). The two pools may differ in
layout and block count: each pool's strides are honoured, so a KV pool and a staging buffer are
both pools here. Each program copies one chunk of one (src block -> dst block) pair for both K and
V; elements are moved as loaded, never computed on, so the copy is exact for every dtype.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from triton.runtime.interpreter import InterpretedFunction

from .layout import next_power_of_2, require, require_launchable

__all__ = ["copy_blocks_triton"]

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


def copy_blocks_triton(src_k: torch.Tensor, src_v: torch.Tensor, dst_k: torch.Tensor, dst_v: torch.Tensor,
                       src_ids: torch.Tensor, dst_ids: torch.Tensor) -> None:
    """Launch the copy; the caller (`block_copy.copy_blocks`) has run `layout.check_block_copy`."""
    device = src_k.device
    require(dst_k.device == device, f"src on {device}, dst on {dst_k.device}: one device only")
    require(src_ids.shape == dst_ids.shape and src_ids.dim() == 1, "src_ids and dst_ids must be 1-D, same length")
    require_launchable(device, _INTERPRETED)
    if src_ids.numel() == 0:
        return
    src = src_ids.to(device).contiguous()
    dst = dst_ids.to(device).contiguous()
    _, block_size, num_kv_heads, head_dim = src_k.shape
    block_numel = block_size * num_kv_heads * head_dim
    chunk = min(next_power_of_2(block_numel), _CHUNK)
    grid = (src.numel(), triton.cdiv(block_numel, chunk))
    _copy_blocks_kernel[grid](
        src_k, src_v, dst_k, dst_v, src, dst, *src_k.stride()[:3], *dst_k.stride()[:3],
        BLOCK_SIZE=block_size, NUM_KV_HEADS=num_kv_heads, HEAD_DIM=head_dim, CHUNK=chunk,
    )
