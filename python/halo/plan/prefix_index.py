"""A token-prefix trie over a batch's prompts, in its compact form: sorted sequences plus LCPs.

Sorting the token sequences lexicographically puts every set of sequences that share a prefix in
one contiguous run, and a trie's node count equals the sum over the sorted list of
`len(s[i]) - lcp(s[i-1], s[i])`. So sorting plus one longest-common-prefix per neighbour gives the
exact number of distinct prefix tokens (what a perfect prefix cache must prefill), how many tokens
each request finds already cached when requests are prefilled in this order, and the prefix groups
(the LCP intervals: maximal runs whose members all share a prefix of a given length).

Sequences are packed as 4-byte tokens into `bytes`, so sorting and prefix comparison run in C; any
consistent byte order is a valid lexicographic order for this purpose.
"""

from __future__ import annotations

from array import array
from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class PrefixGroup:
    """Requests (physical node ids) that all start with the same `tokens` prompt tokens."""

    tokens: int
    members: tuple[int, ...]


class PrefixIndex:
    """Prefix sharing among one model's prompts."""

    def __init__(self, ids: Sequence[int], sequences: Sequence[Sequence[int]], min_group_tokens: int = 1):
        if len(ids) != len(sequences):
            raise ValueError("ids and sequences differ in length")
        packed = [array("I", seq).tobytes() for seq in sequences]
        order = sorted(range(len(packed)), key=packed.__getitem__)
        self.order: list[int] = [ids[i] for i in order]  # physical ids in prefill order
        self.lengths: dict[int, int] = {ids[i]: len(sequences[i]) for i in range(len(ids))}
        lcps = [0] * len(order)
        for k in range(1, len(order)):
            lcps[k] = _common_prefix(packed[order[k - 1]], packed[order[k]])
        self.cached: dict[int, int] = {self.order[k]: lcps[k] for k in range(len(order))}
        self.total_tokens: int = sum(len(s) for s in sequences)
        self.unique_tokens: int = self.total_tokens - sum(lcps)
        self.groups: list[PrefixGroup] = _intervals(self.order, lcps, min_group_tokens)


def _common_prefix(a: bytes, b: bytes) -> int:
    """Longest common prefix in tokens (4 bytes each), by binary search over C-level comparisons."""
    lo, hi = 0, min(len(a), len(b)) // 4
    if a[: 4 * hi] == b[: 4 * hi]:
        return hi
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if a[: 4 * mid] == b[: 4 * mid]:
            lo = mid
        else:
            hi = mid - 1
    return lo


def _intervals(order: list[int], lcps: list[int], min_tokens: int) -> list[PrefixGroup]:
    """The LCP intervals (internal nodes of the trie with two or more requests below them).

    Bottom-up with a stack of open intervals (lcp value, left bound), closing each one when the
    neighbour LCP drops below its value.
    """
    groups: list[PrefixGroup] = []
    stack: list[list[int]] = [[0, 0]]
    for k in range(1, len(order) + 1):
        lcp = lcps[k] if k < len(order) else -1
        left = k - 1
        while stack and lcp < stack[-1][0]:
            value, left = stack.pop()
            if value >= min_tokens:
                groups.append(PrefixGroup(value, tuple(order[left:k])))
        if lcp >= 0 and (not stack or lcp > stack[-1][0]):
            stack.append([lcp, left])
    groups.sort(key=lambda g: (-len(g.members), -g.tokens))
    return groups
