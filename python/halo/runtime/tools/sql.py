"""The sql tool: runs a node's parameterized read-only query on DuckDB or PostgreSQL.

Databases are opened on first use and kept for the run (`close` ends them). `db: null` is one
anonymous in-memory DuckDB shared by the run, sandboxed like a declared one (`DatabaseSpec()`).
Results are `{output, rows, columns}` with `rows` (and `output`) a list of dicts in column order,
values as the driver returns them, at most the database's `max_rows` of them: a query returning
more fails its row. What the sandbox refuses (docs/security/sql.md) fails the row too, with a
ToolError naming the node, the database and what was refused; so does a query that runs past the
database's `timeout_s` (the tool's `statement_timeout_s` unless declared) or, on DuckDB, out of its
`memory_limit`.
"""

from __future__ import annotations

import json
import sys
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import duckdb

from halo.errors import ToolError
from halo.runtime.tools.duckdb_database import DuckDbDatabase, DuckDbLimits, QueryTimeout, RefusedStatement
from halo.spec.document import DatabaseSpec

if TYPE_CHECKING:  # psycopg loads with the first PostgreSQL database: a DuckDB-only run never pays its import
    from halo.runtime.tools.postgres_database import PostgresDatabase

    Database = DuckDbDatabase | PostgresDatabase

DEFAULT_STATEMENT_TIMEOUT_S = 60.0

_ANONYMOUS = DatabaseSpec()  # what `db: null` names: an in-memory DuckDB with every default


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
        spec = self._spec(db)
        max_rows = spec.max_rows
        try:
            columns, tuples = database.query(query, params, max_rows)
        except KeyError as exc:
            raise ToolError(node_id, f"the query uses :{exc.args[0]} but params has no '{exc.args[0]}'") from None
        except (RefusedStatement, QueryTimeout, duckdb.Error, *_postgres_errors("Error")) as exc:
            raise self._sql_error(node_id, db, exc) from exc
        if len(tuples) > max_rows:
            raise ToolError(
                node_id,
                f"the query on {_describe(db)} returned more than {max_rows} rows (its max_rows):"
                " add a LIMIT, or raise max_rows in the database's declaration",
            )
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
        except (RefusedStatement, QueryTimeout, duckdb.PermissionException, *_postgres_errors("QueryCanceled")) as exc:
            raise self._sql_error("explain", db, exc) from exc
        except (duckdb.Error, *_postgres_errors("Error")) as exc:
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

    def _spec(self, db: str | None) -> DatabaseSpec:
        # `db: null` is an undeclared in-memory DuckDB: the defaults of a declared one.
        return self.specs[db] if db is not None else _ANONYMOUS

    def _timeout_s(self, spec: DatabaseSpec) -> float:
        return spec.timeout_s if spec.timeout_s is not None else self.statement_timeout_s

    def _connect(self, node_id: str, db: str | None) -> Database:
        if db is not None and db not in self.specs:
            raise ToolError(node_id, f"unknown database '{db}' (declared: {', '.join(sorted(self.specs)) or 'none'})")
        spec = self._spec(db)
        try:
            if spec.kind == "postgres":
                from halo.runtime.tools.postgres_database import PostgresDatabase  # see `Database`

                assert spec.dsn is not None  # DatabaseSpec guarantees it
                return PostgresDatabase(spec.dsn, self._timeout_s(spec))
            limits = DuckDbLimits(
                timeout_s=self._timeout_s(spec),
                memory_limit=spec.memory_limit,
                max_temp_directory_size=spec.max_temp_directory_size,
                threads=spec.threads,
            )
            return DuckDbDatabase(
                spec.path, spec.init, self.base_dir, allowed_directories=spec.allowed_directories, limits=limits
            )
        except (duckdb.Error, OSError) as exc:
            raise ToolError(node_id, f"cannot open {_describe(db)}: {_first_line(exc)}") from exc

    def _sql_error(self, node_id: str, db: str | None, exc: Exception) -> ToolError:
        """A located error for a failed query, saying plainly when the sandbox or a bound (not the SQL)
        stopped it."""
        where, spec = _describe(db), self._spec(db)
        if isinstance(exc, RefusedStatement):
            return ToolError(node_id, f"refused on {where}: {exc}")
        if isinstance(exc, duckdb.PermissionException):
            return ToolError(
                node_id,
                f"file access is disabled for node queries on {where} (files, URLs and extensions are out of"
                f" reach; allowed_directories opens a directory): {_first_line(exc)}",
            )
        if isinstance(exc, QueryTimeout) or _is_statement_timeout(exc):
            declared = spec.timeout_s is not None
            source, advice = ("its timeout_s", "raise") if declared else ("statement_timeout_s", "set")
            return ToolError(
                node_id,
                f"the query on {where} ran longer than {self._timeout_s(spec):g} s ({source}) and was cancelled:"
                f" narrow the query, or {advice} timeout_s in the database's declaration",
            )
        if isinstance(exc, duckdb.OutOfMemoryException):
            return ToolError(
                node_id,
                f"the query on {where} ran out of memory (memory_limit {spec.memory_limit}, spilling up to"
                f" max_temp_directory_size {spec.max_temp_directory_size}): {_first_line(exc)}",
            )
        return ToolError(node_id, f"SQL error on {where}: {_first_line(exc)}")


def _postgres_errors(name: str) -> tuple[type[Exception], ...]:
    """psycopg's ``Error`` or ``errors.QueryCanceled`` once a PostgreSQL database has loaded psycopg;
    none before (no query can have raised one)."""
    psycopg = sys.modules.get("psycopg")
    if psycopg is None:
        return ()
    return (psycopg.Error,) if name == "Error" else (psycopg.errors.QueryCanceled,)


def _is_statement_timeout(exc: Exception) -> bool:
    # PostgreSQL cancels with 57014 for a user's or an admin's cancel too; only the timeout says so.
    return isinstance(exc, _postgres_errors("QueryCanceled")) and "statement timeout" in str(exc)


def _describe(db: str | None) -> str:
    return f"database '{db}'" if db is not None else "the in-memory DuckDB"


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
