"""The paged KV pool: per-layer K and V tensors, laid out KV-head-major for the CPU attention path."""

from __future__ import annotations

import torch

from halo.engine.model_config import ModelConfig


class KVCache:
    """K and V of every layer as ``[num_layers, num_kv_heads, num_blocks, block_size, head_dim]``.

    KV-head-major layout: gathering a sequence's blocks for one head group yields a contiguous
    ``[kv_heads, tokens, head_dim]`` tensor that matmul consumes without a transpose copy.
    A token's slot is ``block * block_size + offset``.
    """

    def __init__(self, config: ModelConfig, num_blocks: int, block_size: int, dtype: torch.dtype,
                 device: torch.device | str = "cpu") -> None:
        shape = (config.num_layers, config.num_kv_heads, num_blocks, block_size, config.head_dim)
        # empty, not zeros: pages are touched only when blocks are first written.
        self.k = torch.empty(shape, dtype=dtype, device=device)
        self.v = torch.empty(shape, dtype=dtype, device=device)
        self.num_blocks = num_blocks
        self.block_size = block_size
        self.num_kv_heads = config.num_kv_heads
        self.head_dim = config.head_dim

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

    def read_blocks(self, blocks: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Copies of whole blocks across all layers, ``[layers, kv_heads, len(blocks) * block_size, head_dim]``."""
        n = blocks.numel() * self.block_size
        shape = (self.k.shape[0], self.num_kv_heads, n, self.head_dim)
        blocks = blocks.to(self.k.device)
        return self.k.index_select(2, blocks).view(shape), self.v.index_select(2, blocks).view(shape)

    def write_blocks(self, blocks: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> None:
        """Inverse of ``read_blocks``: k/v ``[layers, kv_heads, len(blocks) * block_size, head_dim]``."""
        shape = (self.k.shape[0], self.num_kv_heads, blocks.numel(), self.block_size, self.head_dim)
        blocks = blocks.to(self.k.device)
        self.k.index_copy_(2, blocks, k.reshape(shape).to(self.k.device))
        self.v.index_copy_(2, blocks, v.reshape(shape).to(self.v.device))
