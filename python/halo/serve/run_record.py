"""`RunRecord`: one row of one workflow run, as the server reports it and the run journal keeps it.

`RunStore` (`run_store.py`) creates and changes records; `RunJournal` (`run_journal.py`) writes and reads
them back; both build on this module, so neither imports the other to know what a record is.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import Any

DONE = ("succeeded", "failed", "cancelled")


@dataclass
class RunRecord:
    """One row of one workflow, submitted by a client and run in some epoch."""

    id: str
    workflow: str
    row: dict[str, Any]
    submitted: float = field(default_factory=time.time)
    status: str = "queued"  # queued | running | succeeded | failed | cancelled
    epoch: int | None = None
    started: float | None = None
    finished: float | None = None
    output: dict[str, Any] | None = None
    error: dict[str, str] | None = None
    version: int = 0
    _waiters: list[tuple[asyncio.AbstractEventLoop, asyncio.Future[None]]] = field(default_factory=list, repr=False)

    @property
    def done(self) -> bool:
        return self.status in DONE

    def as_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "object": "workflow.run",
            "workflow": self.workflow,
            "status": self.status,
            "epoch": self.epoch,
            "submitted_at": self.submitted,
            "started_at": self.started,
            "finished_at": self.finished,
            "output": self.output,
            "error": self.error,
        }
