"""The sql tool: runs a node's parameterized read-only query on DuckDB or PostgreSQL.

Databases are opened on first use and kept for the run (`close` ends them). `db: null` is one
anonymous in-memory DuckDB shared by the run. Results are `{output, rows, columns}` with `rows` (and
`output`) a list of dicts in column order, values as the driver returns them.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import duckdb
import psycopg

from halo.errors import ToolError
from halo.runtime.tools.duckdb_database import DuckDbDatabase
from halo.runtime.tools.postgres_database import PostgresDatabase
from halo.spec.document import DatabaseSpec

Database = DuckDbDatabase | PostgresDatabase

DEFAULT_STATEMENT_TIMEOUT_S = 60.0


class SqlTool:
    """Every database of one workflow, opened lazily and shared by the tool threads."""

    def __init__(
        self,
        databases: Mapping[str, DatabaseSpec],
        base_dir: Path,
        *,
        statement_timeout_s: float = DEFAULT_STATEMENT_TIMEOUT_S,
    ) -> None:
        self.specs = dict(databases)
        self.base_dir = base_dir
        self.statement_timeout_s = statement_timeout_s
        self._open: dict[str | None, Database] = {}
        self._lock = threading.Lock()
        self._closed = False

    def target_key(self, db: str | None) -> str:
        """What identifies the database a query runs on (part of the coalescing and cache key)."""
        spec = self.specs.get(db) if db is not None else None
        return json.dumps(spec.model_dump(mode="json") if spec else {"kind": "duckdb", "path": None}, sort_keys=True)

    def run(self, node_id: str, request: Mapping[str, Any]) -> dict[str, Any]:
        db, query, params = request.get("db"), request["query"], dict(request.get("params") or {})
        database = self.database(node_id, db)
        try:
            columns, tuples = database.query(query, params)
        except KeyError as exc:
            raise ToolError(node_id, f"the query uses :{exc.args[0]} but params has no '{exc.args[0]}'") from None
        except (duckdb.Error, psycopg.Error) as exc:
            raise ToolError(node_id, f"SQL error on {_describe(db)}: {_first_line(exc)}") from exc
        rows = [dict(zip(columns, row, strict=True)) for row in tuples]
        return {"output": rows, "rows": rows, "columns": columns}

    def explain_cost(self, db: str | None, query: str, params: Mapping[str, Any]) -> float:
        """The database's own cost estimate of a query: PostgreSQL cost units, or for DuckDB the
        estimated rows emitted summed over the plan's operators. Raises ToolError naming the database."""
        database = self.database("explain", db)
        try:
            return database.explain_cost(query, dict(params))
        except KeyError as exc:
            raise ToolError("explain", f"the query uses :{exc.args[0]} but params has no '{exc.args[0]}'") from None
        except (duckdb.Error, psycopg.Error) as exc:
            raise ToolError("explain", f"EXPLAIN failed on {_describe(db)}: {_first_line(exc)}") from exc

    def database(self, node_id: str, db: str | None) -> Database:
        """The open database `db` names (opening it on first use)."""
        with self._lock:  # one open per database even when many threads ask first at once
            if self._closed:
                raise ToolError(node_id, "the sql tool is closed (its run has ended)")
            database = self._open.get(db)
            if database is None:
                database = self._connect(node_id, db)
                self._open[db] = database
            return database

    def close(self) -> None:
        with self._lock:
            self._closed = True
            for database in self._open.values():
                database.close()
            self._open.clear()

    def _connect(self, node_id: str, db: str | None) -> Database:
        if db is None:
            return DuckDbDatabase(None, None, self.base_dir)
        spec = self.specs.get(db)
        if spec is None:
            raise ToolError(node_id, f"unknown database '{db}' (declared: {', '.join(sorted(self.specs)) or 'none'})")
        try:
            if spec.kind == "postgres":
                assert spec.dsn is not None  # DatabaseSpec guarantees it
                return PostgresDatabase(spec.dsn, self.statement_timeout_s)
            return DuckDbDatabase(spec.path, spec.init, self.base_dir)
        except (duckdb.Error, OSError) as exc:
            raise ToolError(node_id, f"cannot open database '{db}': {_first_line(exc)}") from exc


def _describe(db: str | None) -> str:
    return f"database '{db}'" if db is not None else "the in-memory DuckDB"


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
