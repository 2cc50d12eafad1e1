"""Whole-block KV copies with plain torch ops: across devices (swap) and the CPU path of copy_blocks.

`swap_blocks` gathers the source blocks with index_select, moves them with one `.to()`, and
scatters them with index_copy_. That is the host<->device path for offload and prefetch, and the
CPU path for copy-on-write, compaction and migration. No Triton is involved, so this module is
importable everywhere.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from .layout import check_kv_cache, require

BlockIds = torch.Tensor | Sequence[int]


def swap_blocks(src_k: torch.Tensor, src_v: torch.Tensor, dst_k: torch.Tensor, dst_v: torch.Tensor,
                src_ids: BlockIds, dst_ids: BlockIds) -> None:
    """dst[dst_ids[i]] = src[src_ids[i]] for whole K and V blocks; the pools may be on any devices.

    All source blocks are read before any destination block is written, so src and dst may be the
    same pool with overlapping ids. Destination ids must be unique.
    """
    src, dst = check_block_copy(src_k, src_v, dst_k, dst_v, src_ids, dst_ids)
    if src.numel() == 0:
        return
    src = src.to(src_k.device, torch.int64)
    dst = dst.to(dst_k.device, torch.int64)
    for source, dest in ((src_k, dst_k), (src_v, dst_v)):
        # A blocking .to(): a non_blocking device->host copy could still be in flight when
        # index_copy_ reads it on the CPU.
        dest.index_copy_(0, dst, source.index_select(0, src).to(dest.device))


def check_block_copy(src_k: torch.Tensor, src_v: torch.Tensor, dst_k: torch.Tensor, dst_v: torch.Tensor,
                     src_ids: BlockIds, dst_ids: BlockIds) -> tuple[torch.Tensor, torch.Tensor]:
    """Check two pools and their id lists; return the ids as 1-D integer tensors.

    Ids given on the host (a list, or a CPU tensor) are also checked for range and duplicate
    destinations, which costs nothing; ids already on a GPU are trusted, since reading them would
    synchronise with the device.
    """
    src_shape = check_kv_cache(src_k, src_v, "src")
    dst_shape = check_kv_cache(dst_k, dst_v, "dst")
    require(src_shape[1:] == dst_shape[1:],
            f"block shapes differ: src {tuple(src_k.shape[1:])}, dst {tuple(dst_k.shape[1:])}")
    require(src_k.dtype == dst_k.dtype, f"src dtype {src_k.dtype} != dst dtype {dst_k.dtype}")
    src = _as_ids(src_ids, "src_ids")
    dst = _as_ids(dst_ids, "dst_ids")
    require(src.shape == dst.shape, f"{src.numel()} src_ids but {dst.numel()} dst_ids")
    if src.device.type == "cpu":
        _check_range(src, src_shape.num_blocks, "src_ids")
    if dst.device.type == "cpu":
        _check_range(dst, dst_shape.num_blocks, "dst_ids")
        require(dst.unique().numel() == dst.numel(), f"dst_ids must be unique, got {dst.tolist()}")
    return src, dst


def _as_ids(ids: BlockIds, name: str) -> torch.Tensor:
    if not isinstance(ids, torch.Tensor):
        ids = torch.tensor(list(ids), dtype=torch.int64)
    require(ids.dim() == 1, f"{name} must be 1-D, got shape {tuple(ids.shape)}")
    require(ids.dtype in (torch.int32, torch.int64), f"{name} must be int32 or int64, got {ids.dtype}")
    return ids


def _check_range(ids: torch.Tensor, num_blocks: int, name: str) -> None:
    if ids.numel():
        lo, hi = int(ids.min()), int(ids.max())
        require(lo >= 0 and hi < num_blocks, f"{name} out of range [0, {num_blocks}): min {lo}, max {hi}")
