"""Choice scoring: rank a request's options by the log-probability of their tokens after its prompt.

A scoring request (``SamplingParams(choice_mode="score")``) runs as prefill only, through the same
scheduler and steps as generation. Its parts are ordinary `Sequence`s with ``score_from`` set:

1. the **prompt part** computes the prompt; the logits of its last position give every option's
   first-token log-probability;
2. then one **option part** per option of two or more tokens, whose tokens are prompt + option[:-1],
   is *forked* from the finished prompt: it takes the prompt's full KV blocks by reference and a copy
   of the partly filled last block, so it computes only its option's tokens (all but the last, whose
   logits no option needs). Without a free block for the copy it is queued instead and reuses the
   prompt's full blocks through the prefix cache (then it recomputes the prompt's last partial block).

A part finishes when its tokens are computed; nothing is sampled. Exact semantics: docs/structured_outputs.md.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class OptionScore:
    """One option: its tokens after the prompt and their log-probabilities (full vocabulary, no mask)."""

    text: str
    token_ids: tuple[int, ...]
    token_logprobs: tuple[float, ...]

    @property
    def num_tokens(self) -> int:
        return len(self.token_ids)

    @property
    def logprob(self) -> float:
        """log P(option's tokens | prompt): the sum of its tokens' logprobs."""
        return math.fsum(self.token_logprobs)

    @property
    def mean_logprob(self) -> float:
        return self.logprob / self.num_tokens


@dataclass(frozen=True)
class ChoiceScores:
    """Every option's score and the pick. ``scores[i]`` is option i's logprob (``length_normalized``:
    its mean logprob per token); ``chosen`` is the first option of the highest score; ``probabilities``
    is the softmax of the scores (unnormalised scores: each option's probability renormalised over the
    options); ``confidence`` is the chosen option's."""

    options: tuple[OptionScore, ...]
    length_normalized: bool
    scores: tuple[float, ...]
    probabilities: tuple[float, ...]
    chosen: int
    confidence: float

    @property
    def chosen_text(self) -> str:
        return self.options[self.chosen].text

    @classmethod
    def of(cls, options: tuple[OptionScore, ...], length_normalized: bool) -> ChoiceScores:
        scores = tuple(o.mean_logprob if length_normalized else o.logprob for o in options)
        probabilities = tuple(torch.softmax(torch.tensor(scores, dtype=torch.float64), 0).tolist())
        chosen = max(range(len(scores)), key=lambda i: (scores[i], -i))
        return cls(options, length_normalized, scores, probabilities, chosen, probabilities[chosen])


class ScoringRequest:
    """One scoring request's state: the option tokens' log-probabilities seen so far, and how many of
    its parts are still running. ``logprobs``: SamplingParams.logprobs (k > 0: keep k alternatives per token).

    Logprobs are recorded by token position, so a part preempted and recomputed records the same
    values again instead of appending twice."""

    def __init__(
        self,
        request_id: str,
        prompt_ids: list[int],
        options: tuple[str, ...],
        option_ids: list[list[int]],
        logprobs: int | None = None,
        length_normalized: bool = False,
    ) -> None:
        self.request_id = request_id
        self.prompt_ids = prompt_ids
        self.options = options
        self.option_ids = option_ids
        self.logprobs_wanted = logprobs  # SamplingParams.logprobs: None, or how many alternatives per token
        self.length_normalized = length_normalized
        self.logprobs: list[list[float | None]] = [[None] * len(ids) for ids in option_ids]
        self.top: list[list[list[tuple[int, float]]]] = [[[] for _ in ids] for ids in option_ids]
        self.parts_left = 1  # the prompt part; its end adds the option parts
        self.cached_tokens = 0  # prompt tokens the prefix cache served (set when the prompt part ends)

    def option_request_id(self, index: int) -> str:
        return f"{self.request_id}#option{index}"

    def observe(self, option: int | None, first_position: int, rows: torch.Tensor) -> None:
        """Record the logprobs that logits ``rows [count, V]`` (positions from ``first_position``) give
        option tokens: of the prompt part (``option`` None), whose one row is the prompt's last position
        and scores every option's first token, or of option ``option``'s part."""
        lp = torch.log_softmax(rows.float(), dim=-1)
        n = len(self.prompt_ids)
        k = self.logprobs_wanted or 0
        top_v, top_i = torch.topk(lp, k, dim=-1) if k else (None, None)
        if option is None:
            targets = [(i, 0, 0) for i in range(len(self.option_ids))]
        else:
            targets = [(option, p - n + 1, p - first_position) for p in range(first_position, first_position + len(lp))]
        for i, at, row in targets:
            self.logprobs[i][at] = float(lp[row, self.option_ids[i][at]])
            if top_v is not None and top_i is not None:
                self.top[i][at] = list(zip(top_i[row].tolist(), top_v[row].tolist(), strict=True))

    def option_parts(self) -> list[tuple[int, list[int]]]:
        """(option index, tokens) of the option parts to run once the prompt is computed."""
        return [(i, self.prompt_ids + ids[:-1]) for i, ids in enumerate(self.option_ids) if len(ids) > 1]

    def scores(self) -> ChoiceScores:
        options = []
        for text, ids, lps in zip(self.options, self.option_ids, self.logprobs, strict=True):
            assert all(x is not None for x in lps), f"{self.request_id}: option {text!r} was not fully scored"
            options.append(OptionScore(text, tuple(ids), tuple(float(x) for x in lps if x is not None)))
        return ChoiceScores.of(tuple(options), self.length_normalized)
