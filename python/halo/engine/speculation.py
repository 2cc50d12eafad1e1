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

``auto`` (the default) drafts while it pays: a draft row costs the step ``c`` more seconds; an
accepted draft saves the sequence a sampled token's share of a step, ``a`` (both fitted to the timed
decode steps, `StepCost`). A sequence (and a request group, e.g. one workflow node) whose measured
acceptance stays below ``c / a`` stops drafting, and tries again after a back-off.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from halo.engine.draft_state import Acceptance, DraftState
from halo.engine.prompt_lookup import NgramIndex
from halo.engine.sequence import Sequence, SequenceStatus
from halo.engine.speculative_modes import SPECULATIVE_MODES
from halo.errors import InvalidRequestError


@dataclass
class StepCost:
    """The cost model auto mode decides with, fitted to the decode steps the engine times.

    A decode step's seconds ~ ``a * sampled + c * drafts``: ``a`` is what a sampled token costs, ``c``
    what a draft row adds (least squares over exponentially decayed sums of the timed steps). A draft
    row's FLOPs at the dtype probe's rate is ``c``'s prior, so with few drafted steps timed the probe
    decides; measured steps take over (on a CPU a few extra rows can cost far more than their FLOPs:
    a 1-row product runs a matrix-vector kernel, a 5-row one a matrix-matrix kernel)."""

    flops_per_token: float
    attention_flops_per_position: float  # per query row and context position
    flops_per_second: float
    DECAY = 0.97  # per timed step: the fit follows the batch as it changes
    PRIOR_WEIGHT = 1.0  # the prior on c counts as one step that drafted one row
    _sums: list[float] = field(default_factory=lambda: [0.0] * 5)  # S_BB, S_BD, S_DD, S_Bt, S_Dt

    def row_seconds(self, context: int) -> float:
        """A draft row's FLOPs (matmuls, attention over ``context`` positions) at the probe's rate."""
        return (self.flops_per_token + self.attention_flops_per_position * context) / self.flops_per_second

    def observe(self, seconds: float, sampled: int, drafts: int) -> None:
        """A timed decode step that sampled ``sampled`` sequences and computed ``drafts`` draft rows."""
        if sampled < 1:
            return
        b, d, t = float(sampled), float(drafts), seconds
        self._sums = [x * self.DECAY for x in self._sums]
        for i, v in enumerate((b * b, b * d, d * d, b * t, d * t)):
            self._sums[i] += v

    def fit(self, context: int) -> tuple[float, float] | None:
        """(a, c) in seconds, None before any step was timed."""
        bb, bd, dd, bt, dt = self._sums
        if bb <= 0:
            return None
        lam, c0 = self.PRIOR_WEIGHT, self.row_seconds(context)
        det = bb * (dd + lam) - bd * bd
        a = (bt * (dd + lam) - bd * (dt + lam * c0)) / det
        c = (bb * (dt + lam * c0) - bd * bt) / det
        if a <= 0:
            a = bt / bb  # degenerate fit: fall back to seconds per sampled token
        return a, max(c, 0.0)

    def break_even(self, context: int) -> float:
        """The acceptance rate (accepted / drafted) above which drafting makes decoding faster."""
        fitted = self.fit(context)
        if fitted is None:
            return 0.0  # no step timed yet: let the first drafts measure
        a, c = fitted
        return c / a


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

    @staticmethod
    def eligible(seq: Sequence) -> bool:
        """Greedy free text only; the module docstring says why."""
        return seq.params.greedy and seq.matcher is None and seq.score_from is None

    def state(self, seq: Sequence) -> DraftState:
        if seq.draft is None:
            st = DraftState(NgramIndex(self.min_ngram, self.max_ngram), seq.group, backoff=self.FIRST_BACKOFF)
            g = self.groups.get(seq.group) if seq.group is not None else None
            judged = self.mode == "auto" and g is not None and g.proposed >= self.GROUP_WARMUP
            if judged and g.rate * self.MARGIN < self.cost.break_even(seq.num_tokens):
                st.resume_at = len(seq.output_ids) + st.backoff  # the group's measured figure: start off
            seq.draft = st
        return seq.draft

    def propose(self, running: list[Sequence]) -> int:
        """Set ``draft_ids`` of every running, decoding, eligible sequence whose lookup finds a match;
        returns the tokens drafted."""
        if self.mode == "off":
            return 0
        drafted = 0
        for seq in running:
            seq.draft_ids = []
            if seq.status is not SequenceStatus.RUNNING or seq.num_uncomputed != 1 or not seq.output_ids:
                continue
            if not self.eligible(seq):
                continue
            st = self.state(seq)
            if len(seq.output_ids) < st.resume_at:
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
        if st.window.rate * self.MARGIN < self.cost.break_even(seq.num_tokens):
            st.resume_at = len(seq.output_ids) + st.backoff
            st.backoff *= 2
            st.window = Acceptance()

    def tokens_per_step(self) -> float:
        """Tokens a drafting sequence gains per verify step on average (1 + accepted per verify), the
        figure a planner's decode cost could divide by; 1.0 before any draft was verified."""
        return 1.0 + self.total.accepted / self.total.verifies if self.total.verifies else 1.0
