"""What the workload suite measured: one `Measurement` per (workload, rows, system), in a `SuiteResult`.

`suite.py` fills it; `report.py` writes it out and reads written ones back (`report.load`).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass
class Measurement:
    workload: str
    rows: int
    system: str
    wall_s: float
    counters: dict[str, Any]
    row_errors: int
    fidelity_vs_serial: float | None = None
    fidelity_vs_per_call: float | None = None


@dataclass
class SuiteResult:
    config: dict[str, Any]
    environment: dict[str, Any]
    engines: dict[str, dict[str, Any]] = field(default_factory=dict)  # workload -> engine.describe()
    measurements: list[Measurement] = field(default_factory=list)
    files: dict[str, str] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)
