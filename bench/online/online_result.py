"""What the online sweep measured: one `Cell` per (workload, target, rate), gathered in an `OnlineResult`.

`sweep.py` fills it; `report.py` writes it out and reads written ones back (`report.load`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from bench.online.load_generator import RateResult


@dataclass
class Cell:
    """One (workload, target, rate) measurement; `result.outputs` is dropped from the JSON."""

    workload: str
    target: str
    result: RateResult


@dataclass
class OnlineResult:
    config: dict[str, Any]
    environment: dict[str, Any]
    cells: list[Cell] = field(default_factory=list)
    output_check: dict[str, dict[str, float]] = field(default_factory=dict)  # workload -> target -> fraction equal
    files: dict[str, str] = field(default_factory=dict)
