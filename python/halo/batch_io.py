"""Reading a batch of input rows from a file: JSON Lines, CSV or Parquet, chosen by extension."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

from halo.errors import HaloError


class BatchFileError(HaloError):
    """An input file could not be read (the message names the file and line)."""


def read_rows(path: str | Path) -> list[dict[str, Any]]:
    path = Path(path)
    if not path.is_file():
        raise BatchFileError(f"input file {path} does not exist")
    suffix = path.suffix.lower()
    if suffix in (".jsonl", ".ndjson"):
        rows = []
        with path.open(encoding="utf-8") as fh:
            for lineno, line in enumerate(fh, 1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as e:
                    raise BatchFileError(f"{path}:{lineno}: not valid JSON: {e.msg}") from None
                if not isinstance(row, dict):
                    raise BatchFileError(f"{path}:{lineno}: each line must be a JSON object, got {type(row).__name__}")
                rows.append(row)
        return rows
    if suffix == ".csv":
        with path.open(encoding="utf-8", newline="") as fh:
            return [dict(r) for r in csv.DictReader(fh)]
    if suffix == ".parquet":
        try:
            import pyarrow.parquet as pq
        except ImportError:
            raise BatchFileError(f"{path}: reading Parquet needs pyarrow (pip install pyarrow)") from None
        return pq.read_table(path).to_pylist()
    raise BatchFileError(f"{path}: unknown input format {suffix!r}; use .jsonl, .csv or .parquet")
