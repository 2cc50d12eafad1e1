"""Prompt-lookup drafts: the tokens that followed the last earlier occurrence of a sequence's latest n-gram.

Extraction, rewriting and summarising copy spans of the prompt (or of the output so far) verbatim;
when the last few tokens already appeared earlier, what followed them then is a good guess for what
comes next. No second model is involved: the guess costs a dictionary lookup, and the engine verifies
it in one forward (engine/speculation.py).
"""

from __future__ import annotations


class NgramIndex:
    """For each n-gram (``min_n <= n <= max_n``) of a token list, where it last ended with a token after it.

    Built incrementally: ``extend`` indexes only the positions added since the last call, so a
    sequence's index costs O(max_n) dictionary writes per token over its whole life.
    Invariant: ``_last[g]`` is the largest ``i < indexed`` such that ``tokens[i - n + 1 : i + 1] == g``,
    and every indexed position ``i`` has a successor ``tokens[i + 1]``.
    """

    def __init__(self, min_n: int = 1, max_n: int = 3) -> None:
        if not 1 <= min_n <= max_n:
            raise ValueError(f"n-gram sizes need 1 <= min_n <= max_n, got {min_n}, {max_n}")
        self.min_n = min_n
        self.max_n = max_n
        self.indexed = 0  # positions [0, indexed) are in the index
        self._last: dict[tuple[int, ...], int] = {}

    def extend(self, tokens: list[int]) -> None:
        """Index every position of ``tokens`` that has a successor (all but the last)."""
        last = self._last
        for i in range(self.indexed, len(tokens) - 1):
            for n in range(self.min_n, min(self.max_n, i + 1) + 1):
                last[tuple(tokens[i - n + 1 : i + 1])] = i
        self.indexed = max(self.indexed, len(tokens) - 1)

    def propose(self, tokens: list[int], k: int) -> list[int]:
        """Up to ``k`` tokens that followed the latest earlier occurrence of the longest matching suffix
        n-gram of ``tokens`` (longest n first); [] when no suffix n-gram occurred before."""
        if k < 1 or len(tokens) < 2:
            return []
        self.extend(tokens)
        for n in range(min(self.max_n, len(tokens) - 1), self.min_n - 1, -1):
            end = self._last.get(tuple(tokens[-n:]))
            if end is not None:
                return tokens[end + 1 : end + 1 + k]
        return []
