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

from typing import NamedTuple

import torch

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
