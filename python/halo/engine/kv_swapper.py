"""KV offload under pool pressure: a preempted sequence's blocks go to host memory and come back.

Blocks leave and enter the pool through ``KVCache.read_blocks``/``write_blocks`` (the one block copy,
``halo.kernels.copy_blocks``) into a staging buffer on the pool's device; between that buffer and host
memory, transfers go through ``halo._core.RingBuffer`` (page-locked when CUDA is present): one side
fills fixed-size slots, the other drains them, so on a GPU the device copy and the host copy overlap. A
sequence is swapped only when moving its KV out and back is predicted cheaper than recomputing it,
from a copy bandwidth measured through the ring at start-up and the model's prefill rate.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass

import torch

from halo.engine.kv_cache import KVCache
from halo.engine.sequence import Sequence


@dataclass
class SwappedKV:
    num_tokens: int  # computed tokens whose KV is saved
    num_blocks: int
    data: torch.Tensor  # uint8 host copy: K blocks then V blocks, each laid out as KVCache.staging_shape


@dataclass
class SwapStats:
    swapped_out: int = 0
    swapped_in: int = 0
    bytes_out: int = 0
    bytes_in: int = 0
    declined: int = 0  # preemptions where recompute was predicted cheaper, or the host budget was full


class KVSwapper:
    """Owns the host swap space and the staging ring. Single engine thread; transfers use one helper thread."""

    def __init__(self, kv: KVCache, prefill_tokens_per_s: float, host_budget_bytes: int,
                 slot_bytes: int = 1 << 20, num_slots: int = 8) -> None:
        from halo._core import RingBuffer  # imported here so the engine package imports without it

        self.kv = kv
        self.ring = RingBuffer(num_slots, slot_bytes)
        self.prefill_tokens_per_s = prefill_tokens_per_s
        self.host_budget_bytes = host_budget_bytes
        self.store: dict[str, SwappedKV] = {}
        self.stats = SwapStats()
        self.copy_bytes_per_s = self._measure_bandwidth()

    @property
    def host_bytes(self) -> int:
        return sum(s.data.numel() for s in self.store.values())

    def has(self, seq: Sequence) -> bool:
        return seq.request_id in self.store

    def predicted_costs(self, seq: Sequence) -> tuple[float, float]:
        """(seconds to swap out and back in, seconds to recompute) for the sequence's computed tokens."""
        nbytes = self._bytes_for(seq.num_computed)
        return 2 * nbytes / self.copy_bytes_per_s, seq.num_computed / self.prefill_tokens_per_s

    def should_swap(self, seq: Sequence) -> bool:
        if seq.num_computed == 0:
            return False
        swap_s, recompute_s = self.predicted_costs(seq)
        fits = self.host_bytes + self._bytes_for(seq.num_computed) <= self.host_budget_bytes
        if swap_s < recompute_s and fits:
            return True
        self.stats.declined += 1
        return False

    def swap_out(self, seq: Sequence) -> None:
        """Save the KV of the sequence's computed tokens; the caller frees its blocks afterwards."""
        nblocks = -(-seq.num_computed // self.kv.block_size)
        staging = torch.empty(self._bytes_for(seq.num_computed), dtype=torch.uint8, device=self.kv.k.device)
        self.kv.read_blocks(seq.block_table[:nblocks], out=self._halves(staging, nblocks))  # gather
        host = torch.empty(staging.numel(), dtype=torch.uint8)  # host memory even when the pool is on a GPU
        self._transfer(staging, host)
        self.store[seq.request_id] = SwappedKV(seq.num_computed, nblocks, host)
        self.stats.swapped_out += 1
        self.stats.bytes_out += host.numel()

    def swap_in(self, seq: Sequence, blocks: list[int]) -> int:
        """Restore saved KV into ``blocks`` (freshly allocated for it); returns the tokens restored."""
        saved = self.store.pop(seq.request_id)
        assert len(blocks) == saved.num_blocks
        staging = torch.empty(saved.data.numel(), dtype=torch.uint8, device=self.kv.k.device)
        self._transfer(saved.data, staging)
        self.kv.write_blocks(blocks, *self._halves(staging, saved.num_blocks))  # scatter
        self.stats.swapped_in += 1
        self.stats.bytes_in += saved.data.numel()
        return saved.num_tokens

    def drop(self, seq: Sequence) -> None:
        self.store.pop(seq.request_id, None)

    def _halves(self, staging: torch.Tensor, num_blocks: int) -> tuple[torch.Tensor, torch.Tensor]:
        """K and V views of a uint8 staging buffer: K blocks then V blocks, each ``kv.staging_shape``."""
        half = staging.numel() // 2
        shape = self.kv.staging_shape(num_blocks)
        dtype = self.kv.k.dtype
        return staging[:half].view(dtype).view(shape), staging[half:].view(dtype).view(shape)

    def _bytes_for(self, num_tokens: int) -> int:
        blocks = -(-num_tokens // self.kv.block_size)
        return 2 * self.kv.k[:, :, :1].numel() * blocks * self.kv.k.element_size()

    def _transfer(self, src: torch.Tensor, dst: torch.Tensor) -> None:
        """Copy uint8 ``src`` into ``dst`` through the ring: this thread fills slots, a helper drains them."""
        slot_bytes = self.ring.slot_bytes
        errors: list[BaseException] = []

        def drain() -> None:
            try:
                offset = 0
                while offset < dst.numel():
                    idx = self.ring.acquire_read(None)
                    n = self.ring.slot_nbytes(idx)
                    dst[offset : offset + n].copy_(torch.frombuffer(self.ring.slot(idx), dtype=torch.uint8, count=n))
                    self.ring.release_read()
                    offset += n
            except BaseException as e:  # surfaced in the engine thread below
                errors.append(e)

        consumer = threading.Thread(target=drain, name="halo-kv-swap", daemon=True)
        consumer.start()
        for offset in range(0, src.numel(), slot_bytes):
            chunk = src[offset : offset + slot_bytes]
            idx = self.ring.acquire_write(None)
            torch.frombuffer(self.ring.slot(idx), dtype=torch.uint8, count=chunk.numel()).copy_(chunk)
            self.ring.commit_write(chunk.numel())
        consumer.join()
        if errors:
            raise errors[0]

    def _measure_bandwidth(self) -> float:
        src = torch.ones(8 * self.ring.slot_bytes, dtype=torch.uint8)
        dst = torch.empty_like(src)
        self._transfer(src, dst)  # warm-up: thread start, page faults
        t0 = time.perf_counter()
        self._transfer(src, dst)
        return src.numel() / max(time.perf_counter() - t0, 1e-6)
