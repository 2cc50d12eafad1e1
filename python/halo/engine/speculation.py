"""Speculative decoding by prompt lookup: who drafts, how many tokens, and whether drafting still pays.

The life of a draft (invariants the engine, scheduler and runner keep):
1. Before scheduling, `Speculator.propose` gives an eligible decoding sequence ``draft_ids``: up to
   ``num_draft`` tokens guessed by its own n-gram index (engine/prompt_lookup.py).
2. The scheduler computes the sequence's one uncomputed token plus its drafts in this step, or trims
   the drafts to what the token budget and free blocks allow (drafts never preempt anything).
3. The runner computes them as decode rows over the paged KV (row j attends to the context up to its
   own position), so one forward yields the model's choice after each draft.
4. The engine accepts the longest prefix of the drafts that equals the model's greedy choices, plus
   the model's next token, appending them one at a time through the same stop checks as plain
   decoding; the K/V of the accepted drafts is kept, the rest of the slots are overwritten later and
   blocks past the computed tokens are freed. Only computed (verified) tokens ever reach the prefix
   cache, because ``num_computed`` counts nothing else.

Eligibility, and why: greedy free-text sequences only. A sampled sequence (temperature > 0) is not
drafted: its tokens come from its seeded generator one draw per token, and accepting drafts by
rejection sampling would consume that generator differently, so a seeded request would no longer
reproduce its plain-decoding output. A constrained sequence (output format) is not drafted: each
verify row would need the mask of the matcher state after the drafts before it (speculatively
advanced, then rolled back), and jump-forward already appends the tokens a grammar forces without
decode steps. Choice scoring never samples, so never drafts.

``auto`` drafts while it pays. A decode step costs ``F + r * rows``: a fixed part ``F`` (reading the
weights, dispatch) and ``r`` per row, a draft row costing what a sampled row does (`StepCost`, fitted
to the timed decode steps). With ``B`` sequences sampling, an accepted draft saves its sequence a
row and its share of a step, ``r + F / B``; a draft costs ``r``. A sequence (and a request group, e.g.
one workflow node) whose measured acceptance stays below ``r / (r + F / B)`` stops drafting, and tries
again after a back-off. So drafting pays at batch one (the fixed part dominates) at modest acceptance
and, in large batches, only where most drafts are accepted.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from halo.engine.draft_state import Acceptance, DraftState
from halo.engine.prompt_lookup import NgramIndex
from halo.engine.sequence import Sequence, SequenceStatus
from halo.engine.speculative_modes import SPECULATIVE_MODES
from halo.errors import InvalidRequestError


@dataclass
class StepCost:
    """The cost model auto mode decides with, fitted to the decode steps the engine times.

    A decode step's seconds ~ ``fixed + row * (sampled + drafts)``: decayed least squares with an
    intercept, and a prior on ``row`` (a row's FLOPs at the dtype probe's rate, weighted as one step)
    that decides it while the timed steps all had the same number of rows (then only their sum is
    known). An earlier fit without the fixed part folded it into the sampled tokens' cost and priced
    draft rows at a sixth of what they measured in batches of 20 (bench figures, issue 21)."""

    flops_per_token: float
    attention_flops_per_position: float  # per query row and context position
    flops_per_second: float
    DECAY = 0.97  # per timed step: the fit follows the batch as it changes
    PRIOR_WEIGHT = 1.0  # the prior on `row` counts as one step of one row
    _sums: list[float] = field(default_factory=lambda: [0.0] * 5)  # S_1, S_n, S_nn, S_t, S_nt

    def row_seconds(self, context: int) -> float:
        """A row's FLOPs (matmuls, attention over ``context`` positions) at the probe's rate."""
        return (self.flops_per_token + self.attention_flops_per_position * context) / self.flops_per_second

    def observe(self, seconds: float, sampled: int, drafts: int) -> None:
        """A timed decode step that sampled ``sampled`` sequences and computed ``drafts`` draft rows."""
        if sampled < 1:
            return
        n, t = float(sampled + drafts), seconds
        self._sums = [x * self.DECAY for x in self._sums]
        for i, v in enumerate((1.0, n, n * n, t, n * t)):
            self._sums[i] += v

    def fit(self, context: int) -> tuple[float, float] | None:
        """(fixed, row) seconds of a decode step, None before any step was timed."""
        s1, sn, snn, st, snt = self._sums
        if s1 <= 0:
            return None
        lam, r0 = self.PRIOR_WEIGHT, self.row_seconds(context)
        det = s1 * (snn + lam) - sn * sn
        fixed = (st * (snn + lam) - sn * (snt + lam * r0)) / det
        row = (s1 * (snt + lam * r0) - sn * st) / det
        if fixed < 0 or row <= 0:  # the probe's row is dearer than the steps measured: all of it per row
            fixed, row = 0.0, max((snt + lam * r0) / (snn + lam), 1e-12)
        return fixed, row

    def break_even(self, context: int, batch: int = 1) -> float:
        """The acceptance rate (accepted / drafted) above which drafting makes decoding faster, with
        ``batch`` sequences sampling in a step (the module docstring derives it)."""
        fitted = self.fit(context)
        if fitted is None:
            return 0.0  # no step timed yet: let the first drafts measure
        fixed, row = fitted
        return row / (row + fixed / max(1, batch))


class Speculator:
    """Proposes drafts for eligible sequences and keeps the acceptance figures ``auto`` decides by."""

    WARMUP = 16  # drafted tokens measured before auto judges a sequence
    GROUP_WARMUP = 64  # drafted tokens of a group before its figure decides for a new sequence
    FIRST_BACKOFF = 32  # generated tokens a sequence waits before drafting again; doubles each time
    MARGIN = 1.25  # acceptance must beat break-even by this factor to keep drafting

    def __init__(self, mode: str, num_draft: int, cost: StepCost, min_ngram: int = 1, max_ngram: int = 3) -> None:
        if mode not in SPECULATIVE_MODES:
            raise InvalidRequestError(f"speculative must be one of {SPECULATIVE_MODES}, got {mode!r}")
        if not isinstance(num_draft, int) or isinstance(num_draft, bool) or num_draft < 1:
            raise InvalidRequestError(f"num_speculative_tokens must be a positive integer, got {num_draft!r}")
        if not (isinstance(min_ngram, int) and isinstance(max_ngram, int) and 1 <= min_ngram <= max_ngram):
            raise InvalidRequestError(f"n-gram sizes need 1 <= min <= max, got {min_ngram}, {max_ngram}")
        self.mode = mode
        self.num_draft = num_draft
        self.cost = cost
        self.min_ngram = min_ngram
        self.max_ngram = max_ngram
        self.groups: dict[str, Acceptance] = {}
        self.total = Acceptance()
        self.batch = 1  # sequences decoding in the step being drafted for: break-even depends on it

    @staticmethod
    def eligible(seq: Sequence) -> bool:
        """Greedy free text only; the module docstring says why."""
        return seq.params.greedy and seq.matcher is None and seq.score_from is None

    def state(self, seq: Sequence) -> DraftState:
        if seq.draft is None:
            seq.draft = DraftState(NgramIndex(self.min_ngram, self.max_ngram), seq.group, backoff=self.FIRST_BACKOFF)
        return seq.draft

    def group_says_no(self, seq: Sequence, st: DraftState) -> bool:
        """auto: while a sequence's own figure is still warming up, its group's measured acceptance
        decides. Asked at every step, not only when the sequence starts: a batch's members of one node
        start together, before their group has any figure, and each would otherwise pay its own warm-up.
        A group judged not to pay stays judged while nobody in it drafts: a node's text, not the batch,
        sets its acceptance, and the break-even it is compared with follows the batch."""
        if self.mode != "auto" or st.window.proposed >= self.WARMUP:
            return False
        rate = self.group_rate(st)
        return rate is not None and rate * self.MARGIN < self.cost.break_even(seq.num_tokens, self.batch)

    def group_rate(self, st: DraftState) -> float | None:
        """The acceptance of the sequence's group once it has drafted enough to judge by, else None."""
        g = self.groups.get(st.group) if st.group is not None else None
        return g.rate if g is not None and g.proposed >= self.GROUP_WARMUP else None

    def beside_prompts_pays(self, seq: Sequence, st: DraftState, prompt_tokens: int) -> bool:
        """auto, in a step that also computes ``prompt_tokens`` of prefill: those rows share the step's
        fixed part too, so a draft saves little more than its own row and the break-even nears 1. Only
        a measured figure (the sequence's, else its group's) may beat it; without one, drafts wait for
        a step of decodes, the cheap place to measure them (bench: adversarial-reasoning at 20 rows
        spent 3 s of 23 on drafts computed beside children's prompts)."""
        rate = st.window.rate if st.window.proposed >= self.WARMUP else self.group_rate(st)
        shared = self.batch + prompt_tokens
        return rate is not None and rate * self.MARGIN >= self.cost.break_even(seq.num_tokens, shared)

    def propose(self, running: list[Sequence], pending_prompt_tokens: Callable[[], int] | None = None) -> int:
        """Set ``draft_ids`` of every running, decoding, eligible sequence whose lookup finds a match;
        returns the tokens drafted. ``pending_prompt_tokens`` (the scheduler's) says what the step will
        compute beside the decodes, which auto prices drafts by; asked once, and only in auto mode."""
        if self.mode == "off":
            return 0
        prompt_tokens = pending_prompt_tokens() if self.mode == "auto" and pending_prompt_tokens else 0
        drafted = 0
        decoding = [s for s in running if s.status is SequenceStatus.RUNNING and s.num_uncomputed == 1 and s.output_ids]
        self.batch = max(1, len(decoding))
        for seq in running:
            seq.draft_ids = []
        for seq in decoding:
            if not self.eligible(seq):
                continue
            st = self.state(seq)
            if len(seq.output_ids) < st.resume_at:
                continue
            if self.group_says_no(seq, st):
                st.resume_at = len(seq.output_ids) + st.backoff
                continue
            if prompt_tokens and not self.beside_prompts_pays(seq, st, prompt_tokens):
                continue
            # a run appends at most (drafts + 1) tokens: never draft past max_tokens or the context window
            room = min(
                self.num_draft, seq.params.max_tokens - len(seq.output_ids) - 1, seq.max_len - seq.num_tokens - 1
            )
            if room < 1:
                continue
            seq.draft_ids = st.index.propose(seq.tokens, room)
            drafted += len(seq.draft_ids)
        return drafted

    def record(self, seq: Sequence, proposed: int, accepted: int) -> None:
        """A verified draft: update the figures, and (auto) stop a sequence whose acceptance does not pay."""
        st = self.state(seq)
        figures = [st.window, self.total]
        if st.group is not None:
            figures.append(self.groups.setdefault(st.group, Acceptance()))
        for a in figures:
            a.proposed += proposed
            a.accepted += accepted
            a.verifies += 1
        if self.mode != "auto" or st.window.proposed < self.WARMUP:
            return
        if st.window.rate * self.MARGIN < self.cost.break_even(seq.num_tokens, self.batch):
            st.resume_at = len(seq.output_ids) + st.backoff
            st.backoff *= 2
            st.window = Acceptance()

    def tokens_per_step(self) -> float:
        """Tokens a drafting sequence gains per verify step on average (1 + accepted per verify), the
        figure a planner's decode cost could divide by; 1.0 before any draft was verified."""
        return 1.0 + self.total.accepted / self.total.verifies if self.total.verifies else 1.0
