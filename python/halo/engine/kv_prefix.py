"""A cached prefix detached from any pool — its tokens and K/V — and its trip through shared memory.

This is what KV migration moves between engines: one engine exports the blocks of a prefix it has
cached, another imports them into its own pool and radix tree, so requests there starting with that
prefix skip its prefill. Both ends move the blocks with ``KVCache.read_blocks``/``write_blocks``,
the engine's one block copy (``halo.kernels.copy_blocks``). Between processes on one host the
tensors travel through a named POSIX shared-memory segment: the receiver maps it and copies
straight into its pool.
"""

from __future__ import annotations

from dataclasses import dataclass
from multiprocessing import shared_memory

import torch

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass(frozen=True)
class KVPrefix:
    """K and V of ``len(token_ids)`` tokens (a whole number of blocks), ``[layers, kv_heads, tokens, head_dim]``."""

    model: str
    token_ids: tuple[int, ...]
    k: torch.Tensor
    v: torch.Tensor

    @property
    def num_tokens(self) -> int:
        return len(self.token_ids)

    @property
    def nbytes(self) -> int:
        return self.k.nbytes + self.v.nbytes

    def to_shared_memory(self) -> SharedKVHandle:
        """Copy into a new shared-memory segment; the returned handle is small and picklable.

        The segment outlives this process until the receiver (or ``handle.unlink()``) removes it.
        """
        k, v = self.k.contiguous(), self.v.contiguous()
        shm = shared_memory.SharedMemory(create=True, size=max(1, k.nbytes + v.nbytes))
        try:
            buf = torch.frombuffer(shm.buf, dtype=torch.uint8, count=k.nbytes + v.nbytes)
            buf[: k.nbytes].copy_(k.view(-1).view(torch.uint8))
            buf[k.nbytes :].copy_(v.view(-1).view(torch.uint8))
            del buf
        except BaseException:
            shm.close()
            shm.unlink()  # a half-written segment must not outlive the failed export
            raise
        shm.close()
        return SharedKVHandle(shm.name, self.model, self.token_ids, tuple(k.shape), str(k.dtype).split(".")[-1])


@dataclass(frozen=True)
class SharedKVHandle:
    """Where an exported prefix lies in shared memory, and how to read it back."""

    name: str
    model: str
    token_ids: tuple[int, ...]
    shape: tuple[int, ...]
    dtype: str

    def load(self, unlink: bool = True) -> KVPrefix:
        """Map the segment, copy the tensors out, and (by default) remove the segment."""
        dtype = _DTYPES[self.dtype]
        count = 1
        for s in self.shape:
            count *= s
        shm = shared_memory.SharedMemory(name=self.name)
        try:
            flat = torch.frombuffer(shm.buf, dtype=dtype, count=2 * count).clone()
        finally:
            shm.close()
            if unlink:
                shm.unlink()
        return KVPrefix(self.model, self.token_ids, flat[:count].view(self.shape), flat[count:].view(self.shape))

    def unlink(self) -> None:
        shm = shared_memory.SharedMemory(name=self.name)
        shm.close()
        shm.unlink()
