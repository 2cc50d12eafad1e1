"""Turns a scheduled batch into model inputs and runs the forward pass; the engine masks and samples."""

from __future__ import annotations

from array import array
from collections.abc import Callable
from dataclasses import dataclass

import torch

from halo.engine.batch_scheduler import ScheduledBatch
from halo.engine.kv_cache import KVCache
from halo.engine.model import DecoderModel
from halo.engine.sequence import Sequence
from halo.engine.step_context import PrefillSpan, StepContext

LogitsObserver = Callable[[list[Sequence], torch.Tensor], None]


@dataclass(frozen=True)
class ScoredRows:
    """A scoring sequence's logits this step: rows ``[row, row + count)`` of the returned logits are
    positions ``[first_position, first_position + count)`` of its tokens."""

    seq: Sequence
    first_position: int
    row: int
    count: int


class ModelRunner:
    def __init__(self, model: DecoderModel, kv: KVCache) -> None:
        self.model = model
        self.kv = kv
        # Test hook: called after each forward with the sampling sequences (tokens not yet appended)
        # and their fp32 logits [S, V], row i for sequence i; a drafting sequence's accepted draft rows
        # follow, one call each, just before the token each chose is appended (LLMEngine._accept_run).
        # The fidelity tests compare these with transformers; nothing in the engine sets it.
        self.on_logits: LogitsObserver | None = None

    def prepare(self, batch: ScheduledBatch) -> tuple[StepContext, list[Sequence], list[ScoredRows]]:
        """Build the step context; also return the sequences that sample a token this step, and the
        scoring sequences' rows. Logits rows: one per sampler first (in order), then each drafting
        sampler's ``len(seq.draft_ids)`` draft rows (in sampler order; row j: the model's choice after
        draft j), then the scored rows.

        A drafting sequence (engine/speculation.py) computes its uncomputed token and its drafts as
        decode rows, row j attending to the context up to its own position: the step's K/V are stored
        before attention, so each row sees the drafts before it, and the paged decode kernel serves
        them batched with the other decodes. Only drafting and scoring sequences ask for more than
        their last row."""
        bs = self.kv.block_size
        ids: list[int] = []
        positions: list[int] = []
        slots: list[int] = []
        logits_rows: list[int] = []
        samplers: list[Sequence] = []
        decode_tables: list[list[int]] = []  # each decode row's whole block table ...
        decode_blocks_of: list[int] = []  # ... of which it reads this many blocks
        decode_lens: list[int] = []
        prefills: list[PrefillSpan] = []
        scored_rows: list[int] = []
        scored: list[ScoredRows] = []
        draft_rows: list[int] = []
        for seq, n in zip(batch.seqs, batch.num_new, strict=True):
            start = seq.num_computed
            end = start + n
            q_start = len(ids)
            drafting = bool(seq.draft_ids)
            ids.extend(seq.step_tokens(start, end))
            positions.extend(range(start, end))
            table = seq.block_table
            slots.extend(table[p // bs] * bs + p % bs for p in range(start, end))
            if n == 1 or drafting:
                assert len(decode_tables) == q_start, "decode rows must come first in the batch"
                assert not drafting or n == 1 + len(seq.draft_ids) == seq.num_uncomputed + len(seq.draft_ids)
                for row_end in range(start + 1, end + 1):
                    decode_tables.append(table)
                    decode_blocks_of.append(-(-row_end // bs))
                    decode_lens.append(row_end)
                if drafting:
                    logits_rows.append(q_start)
                    samplers.append(seq)
                    draft_rows.extend(range(q_start + 1, end - start + q_start))
                    continue
            else:
                blocks = torch.tensor(table[: -(-end // bs)], dtype=torch.int64)
                prefills.append(PrefillSpan(q_start, n, end, blocks))
            if seq.score_from is not None:
                first = max(start, seq.score_from)
                if first < end:
                    scored.append(ScoredRows(seq, first, len(scored_rows), end - first))
                    scored_rows.extend(range(q_start + first - start, q_start + n))
            elif end == seq.num_tokens:
                logits_rows.append(len(ids) - 1)
                samplers.append(seq)
        nd = len(decode_tables)
        max_blocks = max(decode_blocks_of, default=0)
        # Every int64 field in one host buffer and one tensor, the fields views of it: torch.tensor of a
        # list costs ~5 us a call and ~70 ns an element, an array ~20 ns (64 decode rows at a 2k context
        # pad 8k block ids: 4x faster preparation than a tensor per field from nested lists).
        data = array("q", ids)
        data.extend(positions)
        data.extend(slots)
        data.extend(logits_rows)
        data.extend(draft_rows)
        data.extend(scored_rows)
        data.extend(decode_lens)
        for table, k in zip(decode_tables, decode_blocks_of, strict=True):
            data.extend(table[:k])
            if k < max_blocks:
                data.frombytes(bytes(8 * (max_blocks - k)))  # zero block ids pad the table
        flat = torch.frombuffer(data, dtype=torch.int64) if data else torch.empty(0, dtype=torch.int64)
        t = len(ids)
        o = 3 * t + len(logits_rows) + len(draft_rows) + len(scored_rows)  # where decode_lens start
        lens = flat[o : o + nd]
        mask = None
        if nd and min(decode_lens) < max_blocks * bs:
            mask = (torch.arange(max_blocks * bs).unsqueeze(0) >= lens.unsqueeze(1)).view(nd, 1, 1, -1)
        ctx = StepContext(
            input_ids=flat[:t],
            positions=flat[t : 2 * t],
            slots=flat[2 * t : 3 * t],
            num_decode=nd,
            decode_blocks=flat[o + nd :],
            decode_max_blocks=max_blocks,
            decode_lens=lens,
            decode_mask=mask,
            prefills=tuple(prefills),
            logits_rows=flat[3 * t : o],
        )
        first_scored = len(samplers) + len(draft_rows)
        scored = [ScoredRows(r.seq, r.first_position, first_scored + r.row, r.count) for r in scored]
        return ctx, samplers, scored

    def run(self, batch: ScheduledBatch) -> tuple[list[Sequence], torch.Tensor, list[ScoredRows]]:
        """One forward step; returns the sequences that sample a token, the fp32 logits rows on the host
        (the samplers' rows first, then the scored rows) and where the scored rows are."""
        ctx, samplers, scored = self.prepare(batch)
        if self.model.device.type != "cpu":
            ctx = ctx.to(self.model.device)
        logits = self.model.forward(ctx, self.kv)
        if self.on_logits is not None and samplers:
            self.on_logits(samplers, logits[: len(samplers)])
        # masking and sampling run on the host: llguidance writes host memory, per-request generators
        # are CPU generators, and [S, V] is small
        return samplers, logits.cpu(), scored
