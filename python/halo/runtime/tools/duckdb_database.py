"""One DuckDB database a workflow queries: opened once per run, one cursor per tool thread.

A database file is opened with `read_only=True`, so no query can change it. An in-memory database
(a declared one without `path`, or the anonymous one `db: null` selects) runs its `init` script once
at open; node queries there are read-only by validation only. DuckDB connections are not
thread-safe, so each thread queries through its own cursor of the shared connection.
"""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Any

import duckdb

from halo.runtime.tools.sql_params import bind_params


class DuckDbDatabase:
    """A DuckDB connection shared by the run, queried through per-thread cursors."""

    def __init__(self, path: str | None, init: str | None, base_dir: Path) -> None:
        self.base_dir = base_dir
        if path is not None:
            self._con = duckdb.connect(str(base_dir / path), read_only=True)
        else:
            self._con = duckdb.connect(":memory:")
        # Relative file names in scripts and queries (read_csv('vendors.csv')) resolve beside the workflow.
        self._con.execute("SET GLOBAL file_search_path = $dir", {"dir": str(base_dir)})
        if init is not None:
            self._con.execute((base_dir / init).read_text())
        self._local = threading.local()
        self._cursors: list[duckdb.DuckDBPyConnection] = []
        self._lock = threading.Lock()

    def query(self, query: str, params: dict[str, Any]) -> tuple[list[str], list[tuple[Any, ...]]]:
        """(column names, rows) of a parameterized query."""
        bound = bind_params(query, params, "duckdb")
        cursor = self._cursor()
        cursor.execute(bound.text, bound.params)
        columns = [column[0] for column in cursor.description or ()]
        return columns, cursor.fetchall()

    def explain_cost(self, query: str, params: dict[str, Any]) -> float:
        """Estimated rows produced, summed over the plan's operators (DuckDB's own cardinality estimates).

        DuckDB has no cost unit of its own; the rows its operators are estimated to emit track the work
        done closely enough for the cost model, which fits seconds per unit per database.
        """
        bound = bind_params(query, params, "duckdb")
        cursor = self._cursor()
        cursor.execute("EXPLAIN (FORMAT JSON) " + bound.text, bound.params)
        total = 0.0
        for _, plan in cursor.fetchall():
            for root in json.loads(plan):
                total += _cardinality(root)
        return total

    def close(self) -> None:
        with self._lock:
            for cursor in self._cursors:
                cursor.close()
            self._cursors.clear()
        self._con.close()

    def _cursor(self) -> duckdb.DuckDBPyConnection:
        cursor = getattr(self._local, "cursor", None)
        if cursor is None:
            with self._lock:
                cursor = self._con.cursor()
                self._cursors.append(cursor)
            self._local.cursor = cursor
        return cursor


def _cardinality(operator: dict[str, Any]) -> float:
    info = operator.get("extra_info") or {}
    own = info.get("Estimated Cardinality", 0) if isinstance(info, dict) else 0
    try:
        value = float(own)
    except (TypeError, ValueError):
        value = 0.0
    return value + sum(_cardinality(child) for child in operator.get("children", ()))
