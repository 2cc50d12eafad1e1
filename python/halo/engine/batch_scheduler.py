"""Continuous batching: which sequences compute how many tokens each step, under token and KV budgets.

Inside one engine only; which workflow nodes are ready to run is the DAG's `halo._core.SchedulerCore`.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

from halo.engine.block_manager import BlockManager
from halo.engine.kv_swapper import KVSwapper
from halo.engine.sequence import Sequence, SequenceStatus


@dataclass(frozen=True)
class ScheduledBatch:
    """Sequences of one step and how many new tokens each computes. Decodes (1 token) come first."""

    seqs: list[Sequence]
    num_new: list[int]

    @property
    def num_tokens(self) -> int:
        return sum(self.num_new)


class BatchScheduler:
    """FCFS admission, chunked prefill under a per-step token budget, preemption by recompute.

    Invariant: a running sequence owns blocks for exactly its computed tokens (plus the tokens being
    computed in the current step, speculative drafts included). When blocks run out, cold prefix-cache
    blocks are evicted first; then the most recently admitted running sequence is preempted (its blocks
    freed, its tokens recomputed later, its prefix probably still in the cache), so the oldest requests
    always progress.
    """

    def __init__(self, block_manager: BlockManager, max_batch_tokens: int, max_num_seqs: int,
                 swapper: KVSwapper | None = None) -> None:
        self.bm = block_manager
        self.swapper = swapper
        self.max_batch_tokens = max_batch_tokens
        self.max_num_seqs = max_num_seqs
        self.waiting: deque[Sequence] = deque()
        self.running: list[Sequence] = []  # admission order, oldest first
        self.num_preemptions = 0

    def add(self, seq: Sequence) -> None:
        self.waiting.append(seq)

    def add_running(self, seq: Sequence) -> None:
        """Join a sequence that already owns the blocks of its computed tokens (a scored option forked
        from its finished prompt) to the running set, in arrival order so older work still preempts last.
        It may take the running set past max_num_seqs for a while; admissions wait until it shrinks."""
        seq.status = SequenceStatus.RUNNING
        at = next((i for i, s in enumerate(self.running) if s.arrival > seq.arrival), len(self.running))
        self.running.insert(at, seq)

    def has_unfinished(self) -> bool:
        return bool(self.waiting or self.running)

    def pending_prompt_tokens(self) -> int:
        """Prompt tokens the next step would compute (chunks in progress, then waiting prompts), at most
        the step's budget: speculation's auto mode prices a draft by what else shares the step."""
        pending = 0
        for seq in (*self.running, *self.waiting):
            if seq.num_uncomputed > 1 or seq.status is SequenceStatus.WAITING:
                pending += seq.num_uncomputed
                if pending >= self.max_batch_tokens:
                    return self.max_batch_tokens
        return pending

    def schedule(self) -> ScheduledBatch:
        budget = self.max_batch_tokens
        chosen: list[tuple[Sequence, int]] = []
        preempted = False
        for seq in list(self.running):
            if budget == 0:
                break
            if seq.status is not SequenceStatus.RUNNING:  # preempted earlier in this loop
                continue
            n = self._fit_drafts(seq, budget)
            while not self.bm.can_append(seq, n):
                victim = self._newest_running(newer_than=seq)
                self._preempt(victim or seq)
                preempted = True
                if victim is None:
                    break
            if seq.status is not SequenceStatus.RUNNING:
                continue
            self.bm.append(seq, n)
            chosen.append((seq, n))
            budget -= n
        # Admit new work only when nothing had to give way this step, so a freed block goes to the
        # preempted (older) sequence first rather than to a newcomer.
        i = scanned = 0
        while (not preempted and i < len(self.waiting) and budget > 0
               and len(self.running) < self.max_num_seqs and scanned < 2 * self.max_num_seqs):
            seq = self.waiting[i]
            scanned += 1
            if self.swapper is not None and self.swapper.has(seq):
                if not self._admit_swapped(seq, i, budget, chosen):
                    break
                budget -= chosen[-1][1]
                continue
            first_admission = seq.num_preemptions == 0
            cached = self.bm.match_prefix(seq)
            if self._prefix_in_flight(seq):
                self.bm.release(seq)
                i += 1
                continue
            n = min(seq.num_uncomputed, budget)
            if not self.bm.can_append(seq, n):
                self.bm.release(seq)
                break
            del self.waiting[i]
            if first_admission:
                seq.num_cached = cached
            seq.status = SequenceStatus.RUNNING
            self.bm.append(seq, n)
            self.running.append(seq)
            chosen.append((seq, n))
            budget -= n
        # decodes (one token, or one token and its drafts) first, stable otherwise
        chosen.sort(key=lambda sn: not (sn[1] == 1 or sn[0].draft_ids))
        return ScheduledBatch([s for s, _ in chosen], [n for _, n in chosen])

    def _fit_drafts(self, seq: Sequence, budget: int) -> int:
        """This step's tokens for a running sequence: its uncomputed ones, plus its drafts
        (engine/speculation.py) trimmed to the budget and to the blocks free now. Drafts are a guess:
        they never evict cached blocks or preempt a sequence, so without room they are dropped."""
        n = min(seq.num_uncomputed, budget)
        if seq.draft_ids:
            fit = min(len(seq.draft_ids), budget - n)
            # keep a free block per running sequence for its own next token, so drafts take no block
            # that would make a plain decode preempt
            spare = max(0, self.bm.num_free - len(self.running))
            free_slots = (len(seq.block_table) + spare) * self.bm.block_size - seq.num_computed - n
            fit = max(0, min(fit, free_slots))
            del seq.draft_ids[fit:]
        return n + len(seq.draft_ids)

    def _admit_swapped(self, seq: Sequence, index: int, budget: int, chosen: list[tuple[Sequence, int]]) -> bool:
        """Bring a swapped-out sequence back: blocks for its saved tokens plus this step's new ones."""
        saved = self.swapper.store[seq.request_id].num_tokens
        n = min(seq.num_tokens - saved, budget)
        if not self.bm.can_append(seq, saved + n):
            return False
        del self.waiting[index]
        self.bm.append(seq, saved + n)
        seq.num_computed = self.swapper.swap_in(seq, seq.block_table[: self.bm.blocks_for(saved)])
        seq.status = SequenceStatus.RUNNING
        self.running.append(seq)
        chosen.append((seq, n))
        return True

    def _prefix_in_flight(self, seq: Sequence) -> bool:
        """Whether a running sequence is still prefilling the block that follows seq's cached prefix.

        Such a sequence is held back a step or two: once that block is computed and published it is
        served from the cache instead of being prefilled twice (32 prompts sharing a long instruction
        prefill it once, not 32 times in parallel).
        """
        bs = self.bm.block_size
        start = seq.num_computed
        if not self.bm.enable_prefix_cache or start + bs > seq.num_tokens - 1:
            return False
        chunk = seq.tokens[start : start + bs]
        return any(
            other.num_computed < len(other.prompt_ids) and other.prompt_ids[start : start + bs] == chunk
            for other in self.running
        )

    def _newest_running(self, newer_than: Sequence) -> Sequence | None:
        # Only newer sequences give way: older ones may already be scheduled in this step.
        newest = self.running[-1] if self.running else None
        return newest if newest is not None and newest.arrival > newer_than.arrival else None

    def _preempt(self, seq: Sequence) -> None:
        seq.draft_ids = []
        if self.swapper is not None and self.swapper.should_swap(seq):
            self.swapper.swap_out(seq)
        self.bm.release(seq)
        seq.status = SequenceStatus.WAITING
        seq.num_preemptions += 1
        self.running.remove(seq)
        # Front of the queue, older first, so preempted work resumes before anything newer.
        self.waiting.appendleft(seq)
        self.waiting = deque(sorted(self.waiting, key=lambda s: s.arrival))
        self.num_preemptions += 1

    def finish(self, seq: Sequence) -> None:
        self.bm.publish(seq)
        self.bm.release(seq)
        seq.status = SequenceStatus.FINISHED
        self.running.remove(seq)

    def abort(self, seq: Sequence) -> None:
        seq.draft_ids = []
        if self.swapper is not None:
            self.swapper.drop(seq)
        if seq in self.waiting:
            self.waiting.remove(seq)
            self.bm.release(seq)
        elif seq in self.running:
            self.bm.release(seq)
            self.running.remove(seq)
        seq.status = SequenceStatus.FINISHED
