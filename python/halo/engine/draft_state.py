"""A sequence's speculative-decoding state and acceptance figures (engine/speculation.py uses them)."""

from __future__ import annotations

from dataclasses import dataclass, field

from halo.engine.prompt_lookup import NgramIndex


@dataclass
class Acceptance:
    """Drafted and accepted token counts, of one sequence or one request group."""

    proposed: int = 0
    accepted: int = 0
    verifies: int = 0  # sequence-steps that verified a draft

    @property
    def rate(self) -> float:
        return self.accepted / self.proposed if self.proposed else 0.0


@dataclass
class DraftState:
    """A sequence's speculation state: its n-gram index, its acceptance, and when it may draft again."""

    index: NgramIndex
    group: str | None = None
    window: Acceptance = field(default_factory=Acceptance)  # since drafting (re)started
    resume_at: int = 0  # output length from which it may draft (auto back-off)
    backoff: int = 0  # tokens the next back-off lasts
