"""One request's state inside the engine: its tokens, its KV blocks and how far its computation has got."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch

from halo.engine.sampling_params import SamplingParams

if TYPE_CHECKING:
    import llguidance

    from halo.engine.draft_state import DraftState


class SequenceStatus(enum.Enum):
    WAITING = "waiting"  # not admitted, or preempted and waiting to be recomputed
    RUNNING = "running"
    FINISHED = "finished"


@dataclass(eq=False)
class Sequence:
    """A request. Invariant: ``tokens[:num_computed]`` have their KV in ``block_table``'s blocks.

    There are no prefill or decode phases: each step computes some of the tokens not yet computed
    (a chunk of the prompt, or the one token sampled last step) until all are and one more is sampled.
    """

    request_id: str
    prompt_ids: list[int]
    params: SamplingParams
    arrival: int  # admission order; older requests are admitted first and preempted last
    max_len: int  # prompt + generated tokens may not exceed this (context window)
    output_ids: list[int] = field(default_factory=list)
    status: SequenceStatus = SequenceStatus.WAITING
    block_table: list[int] = field(default_factory=list)
    num_computed: int = 0
    num_cached: int = 0  # prompt tokens served from the prefix cache at first admission
    num_published_blocks: int = 0  # leading blocks of block_table already offered to the prefix cache
    num_preemptions: int = 0
    finish_reason: str | None = None
    text: str | None = None  # set when finished (stop strings applied)
    generator: torch.Generator | None = None
    # Constrained decoding (engine/grammar.py): the grammar state after output_ids, advanced over every
    # appended token, sampled or forced; None for free text.
    matcher: llguidance.LLMatcher | None = None
    output_complete: bool = True  # False: a constrained output ended before its format accepted it
    format_error: str | None = None  # why output_complete is False
    forced_end: int = 0  # tokens[:forced_end] include every jump-forward token appended so far
    token_logprobs: list[float] = field(default_factory=list)  # per output token, when params.logprobs is set
    top_logprobs: list[list[tuple[int, float]]] = field(default_factory=list)
    # Choice scoring (engine/choice_scoring.py): a part of a scoring request. The model runner returns
    # the logits of every computed position >= score_from, and the sequence finishes once all its tokens
    # are computed, without sampling. None for generation.
    score_from: int | None = None
    # Speculative decoding (engine/speculation.py): tokens guessed to follow ``tokens``, computed with the
    # uncomputed token in this step and verified after it; never part of ``tokens`` until accepted.
    draft_ids: list[int] = field(default_factory=list)
    draft: DraftState | None = None  # the n-gram index and acceptance figures (None until first drafted)
    group: str | None = None  # request group (e.g. a workflow node) whose acceptance informs new members

    def __post_init__(self) -> None:
        if not self.params.greedy:
            self.generator = torch.Generator()
            seed = self.params.seed if self.params.seed is not None else torch.seed()
            self.generator.manual_seed(seed)

    @property
    def tokens(self) -> list[int]:
        return self.prompt_ids + self.output_ids

    @property
    def num_tokens(self) -> int:
        return len(self.prompt_ids) + len(self.output_ids)

    def step_tokens(self, start: int, end: int) -> list[int]:
        """Tokens ``[start, end)`` of ``tokens`` followed by the drafts: what a step computes. Sliced from
        the parts, so a decode step copies its one token, not the whole context."""
        prompt, output = self.prompt_ids, self.output_ids
        n = len(prompt)
        if end <= n:
            return prompt[start:end]
        m = n + len(output)
        head = prompt[start:] if start < n else []
        head += output[max(start - n, 0) : end - n]
        if end > m:
            head += self.draft_ids[max(start - m, 0) : end - m]
        return head

    @property
    def num_uncomputed(self) -> int:
        return self.num_tokens - self.num_computed

    @property
    def is_finished(self) -> bool:
        return self.status is SequenceStatus.FINISHED
