"""The paged KV layout and the checks every kernel wrapper runs before launch.

One layer's cache is two tensors, `k_cache` and `v_cache`, each indexed `[num_blocks, block_size,
num_kv_heads, head_dim]`. Only head_dim must be contiguous, and K and V must share their strides:
the caches may be views into a larger allocation (all layers, K and V interleaved per block) or
permuted views of a KV-head-major pool `[num_kv_heads, num_blocks, block_size, head_dim]`
(`pool.permute(1, 2, 0, 3)`; the CPU engine's layout). A sequence's token at position `p` lives
in block `block_tables[b, p // block_size]` at offset `p % block_size`; its flat slot is
`block * block_size + offset`.

The checks here look only at shapes, dtypes, devices and strides: nothing that needs the data,
so they never synchronise with a device.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import torch

BlockIds = torch.Tensor | Sequence[int]  # block ids: a 1-D int32/int64 tensor, or a list of ints

FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32)


class CacheShape(NamedTuple):
    num_blocks: int
    block_size: int
    num_kv_heads: int
    head_dim: int


def require(cond: bool, message: str) -> None:
    """Raise ValueError with `message` unless `cond` (unlike assert, survives python -O)."""
    if not cond:
        raise ValueError(message)


def require_launchable(device: torch.device, interpreted: bool) -> None:
    """Compiled Triton kernels need CUDA memory; interpreted ones (TRITON_INTERPRET=1) run anywhere."""
    require(device.type == "cuda" or interpreted,
            f"Triton kernels need CUDA tensors, got {device}; on CPU use the torch path, or set "
            "TRITON_INTERPRET=1 before the first import of a halo.kernels Triton module")


def next_power_of_2(n: int) -> int:
    return 1 << max(n - 1, 0).bit_length()


def check_kv_cache(k_cache: torch.Tensor, v_cache: torch.Tensor, name: str = "cache") -> CacheShape:
    """Check one layer's K/V pair and return its shape."""
    require(k_cache.dim() == 4, f"k_{name} must be [num_blocks, block_size, num_kv_heads, head_dim], "
            f"got shape {tuple(k_cache.shape)}")
    require(v_cache.shape == k_cache.shape,
            f"v_{name} shape {tuple(v_cache.shape)} != k_{name} shape {tuple(k_cache.shape)}")
    require(k_cache.dtype == v_cache.dtype,
            f"k_{name} dtype {k_cache.dtype} != v_{name} dtype {v_cache.dtype}")
    require(k_cache.device == v_cache.device,
            f"k_{name} on {k_cache.device} but v_{name} on {v_cache.device}")
    require(k_cache.stride() == v_cache.stride(),
            f"k_{name} strides {k_cache.stride()} != v_{name} strides {v_cache.stride()}")
    require(k_cache.stride(3) == 1 or k_cache.shape[3] == 1,
            f"k_{name}/v_{name} must be contiguous in head_dim (strides {k_cache.stride()})")
    return CacheShape(*k_cache.shape)


def check_paged_batch(block_tables: torch.Tensor, context_lens: torch.Tensor, batch: int,
                      device: torch.device) -> None:
    """Check the per-batch metadata: int32 block tables [B, max_blocks] and context lengths [B]."""
    require(block_tables.dim() == 2 and block_tables.shape[0] == batch,
            f"block_tables must be [B={batch}, max_blocks], got {tuple(block_tables.shape)}")
    require(block_tables.dtype == torch.int32, f"block_tables must be int32, got {block_tables.dtype}")
    require(block_tables.stride(1) == 1 or block_tables.shape[1] <= 1,
            "block_tables rows must be contiguous (stride(1) == 1)")
    require(context_lens.shape == (batch,), f"context_lens must be [B={batch}], got "
            f"{tuple(context_lens.shape)}")
    require(context_lens.dtype == torch.int32, f"context_lens must be int32, got {context_lens.dtype}")
    require(context_lens.is_contiguous(), "context_lens must be contiguous")
    for label, t in (("block_tables", block_tables), ("context_lens", context_lens)):
        require(t.device == device, f"{label} on {t.device}, expected {device}")


def check_block_copy(src_k: torch.Tensor, src_v: torch.Tensor, dst_k: torch.Tensor, dst_v: torch.Tensor,
                     src_ids: BlockIds, dst_ids: BlockIds) -> tuple[torch.Tensor, torch.Tensor]:
    """Check two pools (one device) and their id lists for a block copy; return the ids as 1-D tensors.

    Ids given on the host (a list, or a CPU tensor) are also checked for range, duplicate
    destinations and, within one pool, ids that are both source and destination (the Triton kernel
    copies blocks in parallel, so those would race); this reads no device memory. Ids already on a
    GPU are trusted, since reading them would synchronise with the device.
    """
    src_shape = check_kv_cache(src_k, src_v, "src")
    dst_shape = check_kv_cache(dst_k, dst_v, "dst")
    require(src_shape[1:] == dst_shape[1:],
            f"block shapes differ: src {tuple(src_k.shape[1:])}, dst {tuple(dst_k.shape[1:])}")
    require(src_k.dtype == dst_k.dtype, f"src dtype {src_k.dtype} != dst dtype {dst_k.dtype}")
    require(src_k.device == dst_k.device,
            f"src on {src_k.device}, dst on {dst_k.device}: copy blocks within one device (stage first)")
    src = _as_ids(src_ids, "src_ids")
    dst = _as_ids(dst_ids, "dst_ids")
    require(src.shape == dst.shape, f"{src.numel()} src_ids but {dst.numel()} dst_ids")
    if src.device.type == "cpu":
        _check_range(src, src_shape.num_blocks, "src_ids")
    if dst.device.type == "cpu":
        _check_range(dst, dst_shape.num_blocks, "dst_ids")
        require(dst.unique().numel() == dst.numel(), f"dst_ids must be unique, got {dst.tolist()}")
    on_host = src.device.type == "cpu" and dst.device.type == "cpu"
    if on_host and _same_storage(src_k, dst_k):
        overlap = set(src.tolist()) & set(dst.tolist())
        require(not overlap, f"copy within one pool with ids both source and destination: {sorted(overlap)}")
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


def _same_storage(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a.untyped_storage().data_ptr() == b.untyped_storage().data_ptr()
