"""Token selection from logits: greedy, or temperature with top-k / top-p under a per-request generator.

The logits rows reaching here are already masked for constrained sequences (engine/grammar.py), so
both greedy and sampled tokens stay inside the format, and log-probabilities are those under the mask.
"""

from __future__ import annotations

import numpy as np
import torch

from halo.engine.sequence import Sequence

TokenLogprobs = tuple[float, list[tuple[int, float]]]  # the chosen token's logprob, the k best (id, logprob)


def greedy_tokens(logits: torch.Tensor) -> list[int]:
    """The argmax of each row of ``logits [S, V]``: the first maximal index, a NaN counting as maximal,
    as ``torch.argmax`` gives it. Host fp32 rows go through numpy's argmax, read in place: torch's CPU
    argmax reduces a row of a multi-row tensor with a scalar loop, ~15x slower at 8 rows of a 49k
    vocabulary and ~4x at 64 (bench/engine_throughput.py --profile, "sampling")."""
    if logits.device.type == "cpu" and logits.dtype == torch.float32 and logits.dim() == 2 and logits.shape[1]:
        return np.argmax(logits.numpy(), axis=1).tolist()
    return logits.argmax(dim=-1).tolist()


def sample(logits: torch.Tensor, seqs: list[Sequence]) -> list[int]:
    """One token per row of fp32 ``logits [S, V]`` for the matching sequence."""
    tokens = greedy_tokens(logits)
    for row, seq in enumerate(seqs):
        p = seq.params
        if p.greedy:
            continue
        scaled = logits[row] / p.temperature
        if p.top_k and p.top_k < scaled.numel():
            kth = torch.topk(scaled, p.top_k).values[-1]
            scaled = scaled.masked_fill(scaled < kth, float("-inf"))
        probs = torch.softmax(scaled, dim=-1)
        if p.top_p < 1.0:
            sorted_probs, order = torch.sort(probs, descending=True)
            # keep the smallest set whose mass reaches top_p (the token crossing the line included)
            drop = sorted_probs.cumsum(-1) - sorted_probs > p.top_p
            sorted_probs[drop] = 0.0
            probs = torch.zeros_like(probs).scatter_(0, order, sorted_probs)
        tokens[row] = int(torch.multinomial(probs, 1, generator=seq.generator).item())
    return tokens


def logprobs(logits: torch.Tensor, seqs: list[Sequence], tokens: list[int]) -> list[TokenLogprobs | None]:
    """For each row whose request asked (``params.logprobs`` not None): the chosen token's log-probability
    and the ``params.logprobs`` most likely tokens, from log_softmax of the row as given — after the
    format's mask, before temperature, top-k and top-p, so the figures do not depend on how the token
    was picked. Tokens the mask excludes (-inf) are never listed as alternatives."""
    rows = [i for i, s in enumerate(seqs) if s.params.logprobs is not None]
    out: list[TokenLogprobs | None] = [None] * len(seqs)
    if not rows:
        return out
    lp = torch.log_softmax(logits[rows].float(), dim=-1)
    k = max(seqs[i].params.logprobs or 0 for i in rows)
    top_v, top_i = torch.topk(lp, k, dim=-1) if k else (None, None)
    for j, i in enumerate(rows):
        chosen = float(lp[j, tokens[i]])
        best: list[tuple[int, float]] = []
        want = seqs[i].params.logprobs or 0
        if want and top_v is not None and top_i is not None:
            best = [
                (int(t), float(v))
                for t, v in zip(top_i[j, :want].tolist(), top_v[j, :want].tolist(), strict=True)
                if v != float("-inf")
            ]
        out[i] = (chosen, best)
    return out
