"""The run journal: an append-only JSONL file of finished work, so an interrupted run resumes.

Records, one JSON object per line:
  {"type": "header", "version": 2, "fingerprint": ..., "journal": ID, "key": K}
      the workflow + batch this journal belongs to, its random id and its record key
  {"type": "node", "sig": ..., "result": ..., "journal": ID, "mac": ...}
      a finished physical node (its signature is stable across runs of the same workflow and batch)
  {"type": "row", "row": i, "output": {...}, "error": null | {"node": ..., "message": ...}, "journal": ID, "mac": ...}

Every record after the header carries the journal's id and a MAC (keyed BLAKE2b, key K) over the
rest of the record, so `load` refuses, naming file:line, a record copied from another run's journal
("belongs to another run") or edited by hand ("was altered"): resume never uses work this run did
not journal. The key sits in the header, so this catches copies and edits, not a forger who reads it.

Values are written as valid JSON (`json_values`): a non-finite float is null in the record, and its
place and spelling are kept in the record's "nonfinite" list so a resumed run gets the exact value.

A node's record is written before the record of any row it finishes, so a resumed run never needs
a result it does not have. Each record is written and flushed at once (a `kill -9` loses at most the
line being written, which `load` drops and an appending writer cuts off); fsync runs at most every
`sync_every_s` and at close, to survive a machine crash without paying a disk flush per record.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import secrets
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from halo.errors import HaloError
from halo.runtime.json_values import json_safe, restore_nonfinite

VERSION = 2


class JournalError(HaloError):
    """The journal cannot be used (belongs to another workflow or batch, tampered with, unreadable)."""


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


def read_numbered_records(path: Path) -> list[tuple[int, dict[str, Any]]]:
    """(line number, record) of each JSON object line of an append-only JSONL journal; a torn last line
    (a write a kill interrupted: bad UTF-8 or JSON) is dropped. JournalError names file:line of
    anything else unreadable."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise JournalError(f"cannot read journal {path}: {exc.strerror}") from None
    lines = data.split(b"\n")
    if lines and lines[-1] == b"":
        lines.pop()
    records = []
    for number, raw in enumerate(lines, 1):
        last = number == len(lines)
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            if last:
                break
            raise JournalError(f"{path}:{number}: journal line is not UTF-8 (byte {exc.start + 1})") from None
        try:
            record = json.loads(text)
        except json.JSONDecodeError:
            if last:
                break
            raise JournalError(f"{path}:{number}: journal line is not valid JSON") from None
        if not isinstance(record, dict):
            raise JournalError(f"{path}:{number}: journal line is not a JSON object")
        records.append((number, record))
    return records


def read_records(path: Path) -> list[dict[str, Any]]:
    """The records of an append-only JSONL journal (see `read_numbered_records`); the server's run
    journal reads its file with this too."""
    return [record for _, record in read_numbered_records(path)]


def verify(path: Path) -> None:
    """Raise JournalError (file:line) unless every record of the journal at `path` belongs to it and
    is unaltered; a check `halo run --resume` makes before it loads any model."""
    _verified(path)


def load(path: Path, expected_fingerprint: str) -> JournalState:
    """Read a journal; a torn last line is ignored. Raises JournalError if it belongs to another
    workflow or batch, or if any record is foreign or altered (before any work is resumed)."""
    header, records = _verified(path)
    if header is not None and header.get("fingerprint") != expected_fingerprint:
        raise JournalError(
            f"journal {path} belongs to a different workflow or batch; remove it or run without --resume to start over"
        )
    state = JournalState()
    for number, record in records:
        try:
            if record["type"] == "node":
                state.nodes[str(record["sig"])] = record["result"]
            elif record["type"] == "row":
                error = record["error"]
                if error is not None:
                    error = {"node": str(error["node"]), "message": str(error["message"])}
                state.rows[int(record["row"])] = {"output": record["output"], "error": error}
            else:
                raise JournalError(f"{path}:{number}: unknown journal record type {record['type']!r}")
        except (KeyError, TypeError, ValueError):
            raise JournalError(f"{path}:{number}: malformed {record.get('type')} record") from None
    return state


class JournalWriter:
    """Appends records to a journal file; `fresh=True` truncates it and writes a new header (with a
    new id and key). Appending keeps the file's header, and first cuts off a torn last line."""

    def __init__(self, path: Path, run_fingerprint: str, *, fresh: bool, sync_every_s: float = 0.1) -> None:
        self.path = path
        self.sync_every_s = sync_every_s
        path.parent.mkdir(parents=True, exist_ok=True)
        header = None if fresh or not path.exists() else _append_header(path, run_fingerprint)
        self._file: IO[str] = path.open("a" if header else "w", encoding="utf-8")
        self._last_sync = time.monotonic()
        if header is None:
            header = {
                "type": "header",
                "version": VERSION,
                "fingerprint": run_fingerprint,
                "journal": secrets.token_hex(8),
                "key": secrets.token_hex(16),
            }
            self._file.write(json.dumps(header, separators=(",", ":")) + "\n")
            self._file.flush()
        self._id: str = header["journal"]
        self._key = bytes.fromhex(header["key"])

    def node(self, signature: str, result: Any) -> None:
        self._write({"type": "node", "sig": signature, "result": result})

    def row(self, row: int, output: dict[str, Any], error: dict[str, str] | None) -> None:
        self._write({"type": "row", "row": row, "output": output, "error": error})

    def _write(self, record: dict[str, Any]) -> None:
        nonfinite: list[tuple[tuple[str | int, ...], str]] = []
        signed = json_safe(record, nonfinite)
        if nonfinite:
            signed["nonfinite"] = [[list(path), spelling] for path, spelling in nonfinite]
        signed["journal"] = self._id
        body = _canonical(signed)
        mac = hashlib.blake2b(body.encode(), key=self._key, digest_size=16).hexdigest()
        self._file.write(f'{body[:-1]},"mac":"{mac}"}}\n')  # the body with "mac" added last
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


def _canonical(record: dict[str, Any]) -> str:
    """The text a record's MAC covers: its plain JSON values with sorted keys (a parsed record dumps
    back to the same text, so the reader recomputes the MAC exactly)."""
    return json.dumps(record, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False)


def _mac(key: bytes, record: dict[str, Any]) -> str:
    """The MAC of a parsed record: keyed BLAKE2b over the canonical text of all but its "mac" field."""
    body = _canonical({k: v for k, v in record.items() if k != "mac"})
    return hashlib.blake2b(body.encode(), key=key, digest_size=16).hexdigest()


def _header_of(path: Path, number: int, record: dict[str, Any]) -> dict[str, Any]:
    """The header record, checked to be one this version writes (its id and key usable)."""
    if record.get("type") != "header":
        raise JournalError(f"{path}:{number}: journal does not start with a header record")
    if record.get("version") != VERSION:
        raise JournalError(
            f"{path}:{number}: journal was written by another Halo version (format {record.get('version', 1)}, "
            f"this one reads {VERSION}); remove it or run without --resume to start over"
        )
    try:
        bytes.fromhex(record["key"])
        str(record["journal"])
    except (KeyError, TypeError, ValueError):
        raise JournalError(f"{path}:{number}: journal header has no valid id and key") from None
    return record


def _verified(path: Path) -> tuple[dict[str, Any] | None, list[tuple[int, dict[str, Any]]]]:
    """(header, the other records with their line numbers), each record checked to belong to this
    journal and to be unaltered; (None, []) for a journal with no complete line."""
    numbered = read_numbered_records(path)
    if not numbered:
        return None, []
    header = _header_of(path, *numbered[0])
    key = bytes.fromhex(header["key"])
    records = []
    for number, record in numbered[1:]:
        if record.get("journal") != header["journal"]:
            raise JournalError(
                f"{path}:{number}: record belongs to another run (journal {record.get('journal')!r}, not "
                f"{header['journal']!r}); the journal was tampered with: remove it or run without --resume"
            )
        if not hmac.compare_digest(str(record.get("mac", "")), _mac(key, record)):
            raise JournalError(
                f"{path}:{number}: record was altered (its MAC does not match); the journal was tampered with: "
                "remove it or run without --resume"
            )
        nonfinite = record.pop("nonfinite", [])
        for field_ in ("journal", "mac"):
            record.pop(field_)
        try:
            records.append((number, restore_nonfinite(record, [(tuple(p), s) for p, s in nonfinite])))
        except (KeyError, IndexError, TypeError, ValueError):
            raise JournalError(f"{path}:{number}: malformed nonfinite list in a journal record") from None
    return header, records


def _append_header(path: Path, run_fingerprint: str) -> dict[str, Any] | None:
    """The header of the journal an appending writer continues (None if it has no complete line, so a
    fresh one is written), after cutting off a torn last line so the next record starts a line."""
    with path.open("rb+") as f:
        first = f.readline()
        if not first.endswith(b"\n"):
            f.truncate(0)
            return None
        f.truncate(_end_of_last_line(f))
    try:
        record = json.loads(first.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise JournalError(f"{path}:1: journal header is not valid JSON") from None
    header = _header_of(path, 1, record if isinstance(record, dict) else {})
    if header.get("fingerprint") != run_fingerprint:
        raise JournalError(f"journal {path} belongs to a different workflow or batch; cannot append to it")
    return header


def _end_of_last_line(f: IO[bytes]) -> int:
    """The offset just past the file's last newline (its size when it ends with one)."""
    end = f.seek(0, os.SEEK_END)
    while end > 0:
        start = max(0, end - 65536)
        f.seek(start)
        block = f.read(end - start)
        newline = block.rfind(b"\n")
        if newline >= 0:
            return start + newline + 1
        end = start
    return 0
