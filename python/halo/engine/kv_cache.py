"""The paged KV pool: per-layer K and V tensors, laid out KV-head-major for the CPU attention path.

Whole blocks leave and enter the pool only through `read_blocks` (gather into a staging buffer on
the pool's device) and `write_blocks` (scatter a staging buffer back), both one call of
`halo.kernels.copy_blocks`: the Triton kernel on a GPU, one indexed torch copy on CPU. The swapper
(host offload) and prefix migration (export/import) use nothing else.
"""

from __future__ import annotations

import torch

from halo.engine.model_config import ModelConfig
from halo.kernels import BlockIds, CopyBackend, copy_backend_for, copy_blocks


class KVCache:
    """K and V of every layer as ``[num_layers, num_kv_heads, num_blocks, block_size, head_dim]``.

    KV-head-major layout: gathering a sequence's blocks for one head group yields a contiguous
    ``[kv_heads, tokens, head_dim]`` tensor that matmul consumes without a transpose copy.
    A token's slot is ``block * block_size + offset``.
    """

    def __init__(self, config: ModelConfig, num_blocks: int, block_size: int, dtype: torch.dtype,
                 device: torch.device | str = "cpu", copy_backend: CopyBackend = "auto") -> None:
        shape = (config.num_layers, config.num_kv_heads, num_blocks, block_size, config.head_dim)
        # empty, not zeros: pages are touched only when blocks are first written.
        self.k = torch.empty(shape, dtype=dtype, device=device)
        self.v = torch.empty(shape, dtype=dtype, device=device)
        self.num_blocks = num_blocks
        self.block_size = block_size
        self.num_kv_heads = config.num_kv_heads
        self.head_dim = config.head_dim
        # How whole blocks are copied (see halo.kernels.copy_blocks): "auto" is Triton on CUDA, torch elsewhere.
        self.copy_backend = copy_backend_for(self.k.device, copy_backend)

    @property
    def nbytes(self) -> int:
        return self.k.nbytes + self.v.nbytes

    @staticmethod
    def bytes_per_block(config: ModelConfig, block_size: int, dtype: torch.dtype) -> int:
        return config.kv_values_per_token * block_size * torch.empty((), dtype=dtype).element_size()

    def _flat(self, cache: torch.Tensor, layer: int) -> torch.Tensor:
        return cache[layer].view(self.num_kv_heads, self.num_blocks * self.block_size, self.head_dim)

    def store(self, layer: int, k: torch.Tensor, v: torch.Tensor, slots: torch.Tensor) -> None:
        """Write new tokens' K/V (``[tokens, kv_heads, head_dim]``) into their slots."""
        self._flat(self.k, layer).index_copy_(1, slots, k.transpose(0, 1))
        self._flat(self.v, layer).index_copy_(1, slots, v.transpose(0, 1))

    def gather(self, layer: int, blocks: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """K/V of the given blocks, ``[kv_heads, len(blocks) * block_size, head_dim]``, contiguous."""
        n = blocks.numel() * self.block_size
        k = self.k[layer].index_select(1, blocks).view(self.num_kv_heads, n, self.head_dim)
        v = self.v[layer].index_select(1, blocks).view(self.num_kv_heads, n, self.head_dim)
        return k, v

    def staging_shape(self, num_blocks: int) -> tuple[int, int, int, int]:
        """``num_blocks`` whole blocks outside the pool: ``[layers, kv_heads, num_blocks * block_size, head_dim]``."""
        return (self.k.shape[0], self.num_kv_heads, num_blocks * self.block_size, self.head_dim)

    def read_blocks(self, blocks: BlockIds,
                    out: tuple[torch.Tensor, torch.Tensor] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Gather: copies of whole blocks across all layers, ``staging_shape(len(blocks))``, on the pool's device.

        Written into ``out`` (two such tensors on the pool's device, e.g. views of one buffer) when given.
        """
        n = len(blocks)
        shape = self.staging_shape(n)
        if out is None:
            out = (torch.empty(shape, dtype=self.k.dtype, device=self.k.device),
                   torch.empty(shape, dtype=self.v.dtype, device=self.v.device))
        k, v = out
        if tuple(k.shape) != shape or tuple(v.shape) != shape:
            raise ValueError(f"staging for {n} blocks must be {shape}, got {tuple(k.shape)} and {tuple(v.shape)}")
        copy_blocks(*self._pool_view(), _paged(k, self.block_size), _paged(v, self.block_size),
                    blocks, torch.arange(n), self.copy_backend)
        return k, v

    def write_blocks(self, blocks: BlockIds, k: torch.Tensor, v: torch.Tensor) -> None:
        """Scatter, the inverse of ``read_blocks``: k/v ``staging_shape(len(blocks))``, on any device."""
        n = len(blocks)
        shape = self.staging_shape(n)
        if tuple(k.shape) != shape or tuple(v.shape) != shape:
            raise ValueError(f"KV for {n} blocks must be {shape}, got {tuple(k.shape)} and {tuple(v.shape)}")
        k, v = k.to(self.k.device), v.to(self.v.device)  # staged on the pool's device
        if not (_viewable(k) and k.stride() == v.stride()):
            k, v = k.contiguous(), v.contiguous()
        copy_blocks(_paged(k, self.block_size), _paged(v, self.block_size), *self._pool_view(),
                    torch.arange(n), blocks, self.copy_backend)

    def _pool_view(self) -> tuple[torch.Tensor, torch.Tensor]:
        flat = (self.k.shape[0], self.num_kv_heads, self.num_blocks * self.block_size, self.head_dim)
        return _paged(self.k.view(flat), self.block_size), _paged(self.v.view(flat), self.block_size)


def _paged(t: torch.Tensor, block_size: int) -> torch.Tensor:
    """``[layers, kv_heads, tokens, head_dim]`` as the kernels' ``[blocks, block_size, layers * kv_heads, head_dim]``.

    A view (never a copy, so writes land in ``t``): every layer's KV heads become heads of one cache,
    so a single copy moves a block across all layers.
    """
    layers, heads, tokens, head_dim = t.shape
    blocks = tokens // block_size
    split = t.view(layers, heads, blocks, block_size, head_dim)
    return split.permute(2, 3, 0, 1, 4).view(blocks, block_size, layers * heads, head_dim)


def _viewable(t: torch.Tensor) -> bool:
    """Whether ``_paged`` can view ``t``: layers and heads mergeable, head_dim contiguous."""
    return t.stride(0) == t.shape[1] * t.stride(1) and t.stride(3) == 1
