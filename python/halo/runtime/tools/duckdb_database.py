"""One DuckDB database a workflow queries: opened once per run, sandboxed, one cursor per tool thread.

The workflow's author is trusted like code, its rows (and `halo serve`'s clients) are not. So the
database is set up in two phases:

1. open: a private in-memory DuckDB instance, bounded from the start (`memory_limit`, `threads`, a
   private spill folder of at most `max_temp_directory_size`); a database file is ATTACHed
   `READ_ONLY` (and made the default catalog); the `init` script runs with file access, relative
   names resolving beside the workflow (`read_csv('vendors.csv')`).
2. lock, before any node query: external access off (no file, URL, extension install or load,
   replacement scan), extension autoloading off, only the declared `allowed_directories` (plus the
   database's own files and a private spill folder) readable, and the configuration locked so no
   statement can undo it (`SET`, `RESET`, `PRAGMA`).

Each node query must also be one SELECT by DuckDB's own parser (EXPLAIN without ANALYZE too), so
`COPY`, `ATTACH`/`DETACH`, `CREATE`, `USE`... are refused before they run, on in-memory databases
as well. DuckDB connections are not thread-safe, so each thread queries through its own cursor.

DuckDB has no statement timeout: each query (its fetch included) runs under a `QueryWatchdog`
deadline that interrupts its cursor, and raises `QueryTimeout` if it ran past it.
"""

from __future__ import annotations

import json
import shutil
import tempfile
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import duckdb

from halo.runtime.tools.query_watchdog import QueryWatchdog
from halo.runtime.tools.sql_params import bind_params
from halo.spec.document import DEFAULT_DUCKDB_THREADS, DEFAULT_MAX_TEMP_DIRECTORY_SIZE, DEFAULT_MEMORY_LIMIT
from halo.spec.sql_statement import lex

Rows = tuple[list[str], list[tuple[Any, ...]]]

# Catalog names a fresh DuckDB instance already uses: a file named like one is attached under another.
_TAKEN_CATALOGS = frozenset({"memory", "system", "temp"})

T = TypeVar("T")


@dataclass(frozen=True)
class DuckDbLimits:
    """What one database may take: seconds per query; memory, spill and threads of its whole instance."""

    timeout_s: float
    memory_limit: str = DEFAULT_MEMORY_LIMIT
    max_temp_directory_size: str = DEFAULT_MAX_TEMP_DIRECTORY_SIZE
    threads: int = DEFAULT_DUCKDB_THREADS


class RefusedStatement(Exception):
    """A node query that is not a single read-only SELECT (refused before DuckDB runs it)."""


class QueryTimeout(Exception):
    """A query that ran past its database's timeout_s and was interrupted."""

    def __init__(self, timeout_s: float) -> None:
        super().__init__(f"ran longer than {timeout_s:g} s")
        self.timeout_s = timeout_s


class DuckDbDatabase:
    """A sandboxed DuckDB instance shared by the run, queried through per-thread cursors."""

    def __init__(
        self,
        path: str | None,
        init: str | None,
        base_dir: Path,
        *,
        allowed_directories: tuple[str, ...] = (),
        limits: DuckDbLimits,
    ) -> None:
        self.base_dir = base_dir
        self.limits = limits
        self.allowed = _resolve_directories(base_dir, allowed_directories)  # checked before anything opens
        # A private instance (not DuckDB's per-file cache), so its locked settings are ours alone; a
        # private spill folder, since DuckDB lets queries read its temp directory (by default `.tmp`
        # under the working directory, which may hold anything).
        self._spill = tempfile.mkdtemp(prefix="halo-duckdb-")
        self._con = duckdb.connect(":memory:")
        try:
            self._catalog = self._open(path, init)
            self._lock_down()
        except BaseException:
            self._con.close()
            shutil.rmtree(self._spill, ignore_errors=True)
            raise
        self._local = threading.local()
        self._cursors: list[duckdb.DuckDBPyConnection] = []
        self._lock = threading.Lock()
        self._watchdog = QueryWatchdog()

    def query(self, query: str, params: dict[str, Any], max_rows: int) -> Rows:
        """(column names, rows) of a parameterized query; at most `max_rows + 1` rows are fetched, so
        the caller can tell an over-long result without DuckDB materializing it in Python."""
        bound = bind_params(query, params, "duckdb")
        cursor = self._cursor()

        def run() -> Rows:
            _check_select(cursor, bound.text)
            cursor.execute(bound.text, bound.params)
            columns = [column[0] for column in cursor.description or ()]
            return columns, cursor.fetchmany(max_rows + 1)  # a streamed result is computed here too

        return self._timed(cursor, run)

    def explain_cost(self, query: str, params: dict[str, Any]) -> float:
        """Estimated rows produced, summed over the plan's operators (DuckDB's own cardinality estimates).

        DuckDB has no cost unit of its own; the rows its operators are estimated to emit track the work
        done closely enough for the cost model, which fits seconds per unit per database.
        """
        bound = bind_params(query, params, "duckdb")
        cursor = self._cursor()

        def run() -> list[Any]:
            _check_select(cursor, bound.text)
            cursor.execute("EXPLAIN (FORMAT JSON) " + bound.text, bound.params)
            return cursor.fetchall()

        total = 0.0
        for _, plan in self._timed(cursor, run):
            for root in json.loads(plan):
                total += _cardinality(root)
        return total

    def close(self) -> None:
        self._watchdog.close()
        with self._lock:
            for cursor in self._cursors:
                cursor.close()
            self._cursors.clear()
        self._con.close()
        shutil.rmtree(self._spill, ignore_errors=True)

    def _open(self, path: str | None, init: str | None) -> str | None:
        """Phase 1 (trusted): attach the file, run `init`; returns the catalog node queries default to."""
        con = self._con
        # Relative file names in scripts (read_csv('vendors.csv')) resolve beside the workflow.
        con.execute("SET GLOBAL file_search_path = $dir", {"dir": str(self.base_dir)})
        con.execute("SET GLOBAL temp_directory = $dir", {"dir": self._spill})
        self._bound()
        # DuckDB's first parameterized statement in a process imports its converters (pandas, numpy,
        # pyarrow: about a second); here, not inside some row's timeout.
        con.execute("SELECT $warm", {"warm": 0})
        catalog = None
        if path is not None:
            file = self.base_dir / path
            if not file.is_file():  # READ_ONLY attach of a missing file would name DuckDB's internals
                raise OSError(f"no database file {file}")
            stem = file.stem or "db"
            catalog = stem if stem.lower() not in _TAKEN_CATALOGS else f"{stem}_file"
            literal = "'" + str(file).replace("'", "''") + "'"  # ATTACH takes no parameters
            con.execute(f"ATTACH {literal} AS {_quote(catalog)} (READ_ONLY)")
            con.execute(f"USE {_quote(catalog)}")
        if init is not None:
            con.execute((self.base_dir / init).read_text())
        return catalog

    def _lock_down(self) -> None:
        """Phase 2: from here on no statement reaches the file system, the network or an extension."""
        con = self._con
        self._bound()  # again: `init` is a script and may have SET them; the declaration holds
        # The spill folder cannot be set again once used, so an `init` that moved it is refused instead.
        (spill,) = con.execute("SELECT current_setting('temp_directory')").fetchone() or (None,)
        if spill != self._spill:
            raise OSError(f"the init script moved DuckDB's temp_directory to {spill!r}; leave it to Halo")
        # Order matters: DuckDB accepts allowed_directories only while external access is still on.
        con.execute("SET GLOBAL allowed_directories = $dirs", {"dirs": self.allowed})
        con.execute("SET GLOBAL enable_external_access = false")
        con.execute("SET GLOBAL autoinstall_known_extensions = false")
        con.execute("SET GLOBAL autoload_known_extensions = false")
        con.execute("SET GLOBAL lock_configuration = true")

    def _bound(self) -> None:
        """The instance's resource bounds (settings are global: every cursor shares them)."""
        con, limits = self._con, self.limits
        con.execute("SET GLOBAL memory_limit = $v", {"v": limits.memory_limit})
        con.execute("SET GLOBAL max_temp_directory_size = $v", {"v": limits.max_temp_directory_size})
        con.execute("SET GLOBAL threads = $v", {"v": limits.threads})

    def _timed(self, cursor: duckdb.DuckDBPyConnection, run: Callable[[], T]) -> T:
        """`run()` on `cursor` under the timeout: interrupted past it, and then QueryTimeout whatever it
        raised (the interrupt, or a failure it caused) or returned (it ended as the deadline passed)."""
        with self._watchdog.deadline(cursor, self.limits.timeout_s) as deadline:
            try:
                result = run()
            except duckdb.Error as exc:
                if deadline.expired:
                    raise QueryTimeout(self.limits.timeout_s) from exc
                raise
        if deadline.expired:
            raise QueryTimeout(self.limits.timeout_s)
        return result

    def _cursor(self) -> duckdb.DuckDBPyConnection:
        cursor = getattr(self._local, "cursor", None)
        if cursor is None:
            with self._lock:
                cursor = self._con.cursor()
                self._cursors.append(cursor)
            if self._catalog is not None:
                cursor.execute(f"USE {_quote(self._catalog)}")  # the default catalog is per connection
            self._local.cursor = cursor
        return cursor


def _check_select(cursor: duckdb.DuckDBPyConnection, text: str) -> None:
    """Refuse anything but one SELECT (DuckDB's parser decides; validation did too, this is the guard)."""
    statements = cursor.extract_statements(text)
    if len(statements) != 1:
        raise RefusedStatement(f"a node query must be one statement; DuckDB sees {len(statements)}")
    kind = statements[0].type.name
    if kind == "SELECT":
        return
    if kind == "EXPLAIN":
        words = {word for statement in lex(text).statements for word in statement}
        if not {"ANALYZE", "ANALYSE"} & words:  # EXPLAIN ANALYZE runs its statement, whatever it is
            return
        raise RefusedStatement("a node query must be a read-only SELECT; EXPLAIN ANALYZE runs its statement")
    raise RefusedStatement(f"a node query must be a read-only SELECT; DuckDB classifies this one as {kind}")


def _resolve_directories(base_dir: Path, directories: tuple[str, ...]) -> list[str]:
    """Absolute real paths, each ending in `/` (DuckDB matches prefixes: `docs` must not admit `docs2`).

    Resolving symlinks here means an allowed directory that is itself a link admits its target only.
    """
    resolved = []
    for directory in directories:
        real = (base_dir / directory).resolve()
        if not real.is_dir():
            raise OSError(f"allowed_directories: {directory!r} is not a directory (looked at {real})")
        resolved.append(str(real).rstrip("/") + "/")
    return resolved


def _quote(identifier: str) -> str:
    return '"' + identifier.replace('"', '""') + '"'


def _cardinality(operator: dict[str, Any]) -> float:
    info = operator.get("extra_info") or {}
    own = info.get("Estimated Cardinality", 0) if isinstance(info, dict) else 0
    try:
        value = float(own)
    except (TypeError, ValueError):
        value = 0.0
    return value + sum(_cardinality(child) for child in operator.get("children", ()))
