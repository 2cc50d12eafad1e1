"""The run journal: an append-only JSONL file of finished work, so an interrupted run resumes.

Records, one JSON object per line:
  {"type": "header", "fingerprint": ...}       the workflow + batch this journal belongs to
  {"type": "node", "sig": ..., "result": ...}  a finished physical node (its signature is stable
                                               across runs of the same workflow and batch)
  {"type": "row", "row": i, "output": {...}, "error": null | {"node": ..., "message": ...}}

A node's record is written before the record of any row it finishes, so a resumed run never needs
a result it does not have. Each record is written and flushed at once (a `kill -9` loses at most the
line being written, which `load` drops); fsync runs at most every `sync_every_s` and at close, to
survive a machine crash without paying a disk flush per record.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from halo.errors import HaloError


class JournalError(HaloError):
    """The journal cannot be used (belongs to another workflow or batch, unreadable)."""


@dataclass
class JournalState:
    """What an earlier run finished."""

    nodes: dict[str, Any] = field(default_factory=dict)  # signature -> result
    rows: dict[int, dict[str, Any]] = field(default_factory=dict)  # row -> {"output": ..., "error": ...}


def fingerprint(workflow_spec: Any, rows: list[Any]) -> str:
    h = hashlib.blake2b(digest_size=16)
    h.update(json.dumps(workflow_spec.model_dump(mode="json"), sort_keys=True, default=str).encode())
    h.update(json.dumps(rows, sort_keys=True, default=str).encode())
    return h.hexdigest()


def read_records(path: Path) -> list[dict[str, Any]]:
    """The JSON records of an append-only JSONL journal; a torn last line (a write a kill interrupted) is
    dropped. JournalError names the file and line of anything else unreadable."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise JournalError(f"cannot read journal {path}: {exc.strerror}") from None
    records = []
    for number, line in enumerate(lines, 1):
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            if number == len(lines):
                break
            raise JournalError(f"journal {path} line {number} is not valid JSON") from None
    return records


def load(path: Path, expected_fingerprint: str) -> JournalState:
    """Read a journal; a torn last line is ignored. Raises JournalError if it belongs to another run."""
    state = JournalState()
    for record in read_records(path):
        kind = record.get("type")
        if kind == "header":
            if record.get("fingerprint") != expected_fingerprint:
                raise JournalError(
                    f"journal {path} belongs to a different workflow or batch; "
                    "remove it or run without --resume to start over"
                )
        elif kind == "node":
            state.nodes[record["sig"]] = record["result"]
        elif kind == "row":
            state.rows[int(record["row"])] = {"output": record["output"], "error": record.get("error")}
    return state


class JournalWriter:
    """Appends records to a journal file; `fresh=True` truncates it and writes a new header."""

    def __init__(self, path: Path, run_fingerprint: str, *, fresh: bool, sync_every_s: float = 0.1) -> None:
        self.path = path
        self.sync_every_s = sync_every_s
        path.parent.mkdir(parents=True, exist_ok=True)
        self._file: IO[str] = path.open("w" if fresh else "a", encoding="utf-8")
        self._last_sync = time.monotonic()
        if fresh or path.stat().st_size == 0:
            self._write({"type": "header", "fingerprint": run_fingerprint})

    def node(self, signature: str, result: Any) -> None:
        self._write({"type": "node", "sig": signature, "result": result})

    def row(self, row: int, output: dict[str, Any], error: dict[str, str] | None) -> None:
        self._write({"type": "row", "row": row, "output": output, "error": error})

    def _write(self, record: dict[str, Any]) -> None:
        self._file.write(json.dumps(record, default=str, separators=(",", ":")) + "\n")
        self._file.flush()
        now = time.monotonic()
        if now - self._last_sync >= self.sync_every_s:
            os.fsync(self._file.fileno())
            self._last_sync = now

    def close(self) -> None:
        if not self._file.closed:
            self._file.flush()
            os.fsync(self._file.fileno())
            self._file.close()

    def __enter__(self) -> JournalWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
