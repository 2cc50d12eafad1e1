"""A problem found by a whole-workflow check: where it is (document path), what, and which node."""

from __future__ import annotations

from dataclasses import dataclass

from halo.spec.source_map import DocPath


@dataclass(frozen=True)
class Problem:
    path: DocPath
    message: str
    node: str | None = None
