"""The one whole-block KV copy, `copy_blocks`: dst[dst_ids[i]] = src[src_ids[i]] within one device.

Every KV block the engine moves goes through it: swap-out gathers a sequence's blocks from the pool
into a staging buffer on the pool's device, swap-in scatters a staging buffer back into fresh
blocks, and prefix migration does the same for export and import (`halo.engine.kv_cache`). Moving
a staging buffer between host and device is the caller's plain tensor copy.

It dispatches by backend: ``triton`` is the kernel in `triton_block_copy.py` (the default on a
CUDA device), ``torch`` is `reference.copy_blocks_ref`, one index_select/index_copy_ per tensor (the
default elsewhere), which is also the reference the Triton kernel is tested against. Importing this
module never imports triton.
"""

from __future__ import annotations

from typing import Literal

import torch

from .layout import BlockIds, check_block_copy, require
from .reference import copy_blocks_ref

CopyBackend = Literal["auto", "torch", "triton"]
_BACKENDS = ("auto", "torch", "triton")


def copy_backend_for(device: torch.device, backend: CopyBackend = "auto") -> Literal["torch", "triton"]:
    """The backend ``auto`` stands for on ``device``: Triton on CUDA, torch elsewhere."""
    require(backend in _BACKENDS, f"block copy backend must be one of {_BACKENDS}, got {backend!r}")
    if backend == "auto":
        return "triton" if device.type == "cuda" else "torch"
    return backend


def copy_blocks(src_k: torch.Tensor, src_v: torch.Tensor, dst_k: torch.Tensor, dst_v: torch.Tensor,
                src_ids: BlockIds, dst_ids: BlockIds, backend: CopyBackend = "auto") -> None:
    """dst[dst_ids[i]] = src[src_ids[i]] for whole K and V blocks; all four caches on one device.

    Caches are in the paged layout of `layout.py` (any strides with a contiguous head_dim), so a
    pool and a staging buffer of another block count can be each other's source and destination.
    Destination ids must be unique, and within one pool no id may be both a source and a
    destination. Host-side ids are checked for all of this; ids already on a GPU are trusted.
    ``backend="triton"`` on CPU tensors needs TRITON_INTERPRET=1 (the tests run it so).
    """
    src, dst = check_block_copy(src_k, src_v, dst_k, dst_v, src_ids, dst_ids)
    chosen = copy_backend_for(src_k.device, backend)
    if src.numel() == 0:
        return
    if chosen == "triton":
        # Deferred: triton is an optional dependency, imported only where its kernel runs.
        from .triton_block_copy import copy_blocks_triton

        copy_blocks_triton(src_k, src_v, dst_k, dst_v, src, dst)
    else:
        copy_blocks_ref(src_k, src_v, dst_k, dst_v, src, dst)
