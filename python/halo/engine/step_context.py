"""Per-step metadata the model needs: which tokens are computed, where their KV goes, what is sampled."""

from __future__ import annotations

from dataclasses import dataclass, fields, replace
from functools import cached_property

import torch


@dataclass(frozen=True)
class PrefillSpan:
    """A sequence computing several tokens this step: rows ``[q_start, q_start + q_len)`` of the batch."""

    q_start: int
    q_len: int
    context_len: int  # cached + new tokens; the new ones are the last q_len positions
    blocks: torch.Tensor  # int64 block ids covering context_len tokens


@dataclass(frozen=True)
class StepContext:
    """Invariant: rows ``[0, num_decode)`` are one token each, attending to its own context (one per
    sequence, or one per token of a sequence verifying drafts); prefill spans follow in order."""

    input_ids: torch.Tensor  # [T] int64
    positions: torch.Tensor  # [T] int64
    slots: torch.Tensor  # [T] int64 KV slot of each new token
    num_decode: int
    decode_blocks: torch.Tensor  # [num_decode * decode_max_blocks] int64, padded with block 0
    decode_max_blocks: int
    decode_lens: torch.Tensor  # [num_decode] int64 context length of each decode row, its new token included
    decode_mask: torch.Tensor | None  # [num_decode, 1, 1, decode_max_blocks * block_size] bool, True = padding
    prefills: tuple[PrefillSpan, ...]
    logits_rows: torch.Tensor  # [S] int64 rows whose logits are sampled

    @cached_property
    def decode_max_len(self) -> int:
        """The longest decode row's context (0 without decode rows): whether a sliding window bites."""
        return int(self.decode_lens.max()) if self.num_decode else 0

    def to(self, device: torch.device) -> StepContext:
        """The same context with every tensor on ``device`` (built on the host, run on a GPU)."""
        moved = {
            f.name: getattr(self, f.name).to(device)
            for f in fields(self)
            if isinstance(getattr(self, f.name), torch.Tensor)
        }
        spans = tuple(replace(s, blocks=s.blocks.to(device)) for s in self.prefills)
        return replace(self, prefills=spans, **moved)
