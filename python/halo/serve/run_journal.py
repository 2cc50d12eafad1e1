"""`RunJournal`: the server's append-only record of admitted runs and their ends, so none is lost on restart.

One JSON object per line in `<dir>/runs.jsonl`, written and flushed at once (like the runtime journal,
`runtime/journal.py`: a kill loses at most the line being written, which `load` drops):
  {"type": "admitted", "id": ..., "workflow": ..., "row": {...}, "submitted": t}
  {"type": "ended", "id": ..., "status": ..., "output": ..., "error": ..., "epoch": e, "started": t, "finished": t}

A run admitted and never ended (the server stopped first: its run was cancelled at the end of the
shutdown grace period, or the process died) is queued again by a server restarted on the same folder,
under the same id; an ended one is answered from the journal. `load` rewrites the file with only what
it still needs (the newest `keep_finished` ended runs and every unended one).
"""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path
from typing import IO, Any

from halo.runtime.journal import read_records
from halo.serve.run_record import RunRecord

FILE = "runs.jsonl"


class RunJournal:
    """Appends run records to `<folder>/runs.jsonl` (see the module doc); safe from any thread."""

    def __init__(self, folder: str | os.PathLike[str]) -> None:
        self.path = Path(folder) / FILE
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._file: IO[str] | None = None

    def load(self, keep_finished: int) -> tuple[list[RunRecord], list[RunRecord]]:
        """(ended runs, runs to queue again) from an earlier server, oldest first; compacts the file."""
        runs: dict[str, RunRecord] = {}
        for record in read_records(self.path) if self.path.exists() else []:
            if record["type"] == "admitted":
                runs[record["id"]] = RunRecord(
                    record["id"], record["workflow"], record["row"], submitted=record["submitted"]
                )
            elif record["type"] == "ended" and record["id"] in runs:
                run = runs[record["id"]]
                run.status, run.output, run.error = record["status"], record["output"], record["error"]
                run.epoch, run.started, run.finished = record["epoch"], record["started"], record["finished"]
        ended = [r for r in runs.values() if r.done][-keep_finished:]
        pending = [r for r in runs.values() if not r.done]
        tmp = self.path.with_suffix(".tmp")
        with tmp.open("w", encoding="utf-8") as out:
            for run in ended:
                out.write(_line(_admitted(run)) + _line(_ended(run)))
            for run in pending:
                out.write(_line(_admitted(run)))
            out.flush()
            os.fsync(out.fileno())
        tmp.replace(self.path)
        return ended, pending

    def admitted(self, records: list[RunRecord]) -> None:
        self._write("".join(_line(_admitted(r)) for r in records))

    def ended(self, record: RunRecord) -> None:
        self._write(_line(_ended(record)))

    def close(self) -> None:
        with self._lock:
            if self._file is not None:
                self._file.flush()
                os.fsync(self._file.fileno())
                self._file.close()
                self._file = None

    def _write(self, text: str) -> None:
        with self._lock:
            if self._file is None:
                self._file = self.path.open("a", encoding="utf-8")
            self._file.write(text)
            self._file.flush()


def _admitted(run: RunRecord) -> dict[str, Any]:
    return {"type": "admitted", "id": run.id, "workflow": run.workflow, "row": run.row, "submitted": run.submitted}


def _ended(run: RunRecord) -> dict[str, Any]:
    return {
        "type": "ended",
        "id": run.id,
        "status": run.status,
        "output": run.output,
        "error": run.error,
        "epoch": run.epoch,
        "started": run.started,
        "finished": run.finished,
    }


def _line(record: dict[str, Any]) -> str:
    return json.dumps(record, default=str, separators=(",", ":")) + "\n"
