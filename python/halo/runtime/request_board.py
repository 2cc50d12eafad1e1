"""`RequestBoard`: the pure llm requests in flight on one set of workers, so equal ones run once.

A request's key is (workers, model, rendered prompt, sampling params) of a pure llm node: equal keys
give equal outputs, so the first Processor to submit a key leads it and every later equal request,
of the same run or of another run on the same loop, joins it and is settled with the leader's
completion. Only one thread (the run loop's) touches a board.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class _Entry:
    leader: Any  # the Processor that submitted the request
    phys: int
    followers: list[tuple[Any, int]] = field(default_factory=list)  # (Processor, physical node)


@dataclass
class RequestBoard:
    entries: dict[tuple, _Entry] = field(default_factory=dict)

    def join(self, key: tuple, processor: Any, phys: int) -> Any | None:
        """Lead `key` (None) or join it: returns the leading Processor, and `phys` waits for its result."""
        entry = self.entries.get(key)
        if entry is None:
            self.entries[key] = _Entry(processor, phys)
            return None
        entry.followers.append((processor, phys))
        return entry.leader

    def finish(self, key: tuple) -> list[tuple[Any, int]]:
        """The leader's request finished: the followers to settle with its result."""
        entry = self.entries.pop(key, None)
        return entry.followers if entry is not None else []

    def leave(self, processor: Any) -> list[tuple[Any, int]]:
        """`processor` is cancelled: drop it from every entry. Returns the orphans, followers of other
        Processors whose leader it was; each must be submitted again (the first becomes the new leader)."""
        orphans: list[tuple[Any, int]] = []
        for key, entry in list(self.entries.items()):
            entry.followers = [(p, phys) for p, phys in entry.followers if p is not processor]
            if entry.leader is processor:
                del self.entries[key]
                orphans += entry.followers
        return orphans
