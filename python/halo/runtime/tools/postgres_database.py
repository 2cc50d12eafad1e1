"""One PostgreSQL database a workflow queries through psycopg 3: a connection per tool thread.

Every query runs in its own read-only transaction (`SET TRANSACTION READ ONLY` by psycopg, so the
server itself refuses writes, even from functions called inside a SELECT) under a statement timeout,
and is rolled back afterwards: nothing a node runs can change the database or hold locks past its call.
A query is read through a server-side cursor (`DECLARE`, then `FETCH max_rows + 1`), so an
over-long result never lands in client memory whole and the server stops producing it.

What a SELECT can read is up to the DSN's role: a superuser (or a member of `pg_read_server_files`,
`pg_execute_server_program`) can read server files with `pg_read_file(:path)`, and a path can come
from a row. Connect as a role granted SELECT on the tables the workflow needs, nothing more.
"""

from __future__ import annotations

import threading
from typing import Any

import psycopg

from halo.runtime.tools.sql_params import bind_params
from halo.spec.sql_statement import lex

# What DECLARE ... CURSOR FOR takes; anything else validation admits (EXPLAIN, SHOW) answers in a few rows.
_CURSOR_QUERIES = frozenset({"SELECT", "WITH", "VALUES", "TABLE"})


class PostgresDatabase:
    """Connections to one DSN, opened lazily, one per thread (psycopg connections serialize queries)."""

    def __init__(self, dsn: str, statement_timeout_s: float) -> None:
        self.dsn = dsn
        self.statement_timeout_ms = max(1, int(statement_timeout_s * 1000))
        self._local = threading.local()
        self._connections: list[psycopg.Connection[Any]] = []
        self._lock = threading.Lock()

    def query(self, query: str, params: dict[str, Any], max_rows: int) -> tuple[list[str], list[tuple[Any, ...]]]:
        """(column names, rows) of a parameterized query; at most `max_rows + 1` rows are fetched, so
        the caller can tell an over-long result."""
        bound = bind_params(query, params, "postgres")
        statements = lex(query).statements
        server_side = bool(statements) and statements[0][0] in _CURSOR_QUERIES
        connection = self._connection()
        try:
            # A named cursor lives in the transaction _end rolls back; it is closed with it.
            with connection.cursor(name="halo_node_query") if server_side else connection.cursor() as cursor:
                cursor.execute(bound.text, bound.params)
                columns = [column.name for column in cursor.description or ()]
                rows = cursor.fetchmany(max_rows + 1) if cursor.description else []
            return columns, rows
        finally:
            self._end(connection)

    def explain_cost(self, query: str, params: dict[str, Any]) -> float:
        """The planner's total cost of the query (`EXPLAIN (FORMAT JSON)`), in PostgreSQL's cost units
        (arbitrary, scaled so that reading one page sequentially costs `seq_page_cost` = 1.0)."""
        bound = bind_params(query, params, "postgres")
        connection = self._connection()
        try:
            with connection.cursor() as cursor:
                cursor.execute("EXPLAIN (FORMAT JSON) " + bound.text, bound.params)
                row = cursor.fetchone()
        finally:
            self._end(connection)
        assert row is not None
        return float(row[0][0]["Plan"]["Total Cost"])

    def close(self) -> None:
        with self._lock:
            for connection in self._connections:
                connection.close()
            self._connections.clear()

    def _connection(self) -> psycopg.Connection[Any]:
        connection: psycopg.Connection[Any] | None = getattr(self._local, "connection", None)
        if connection is None or connection.broken or connection.closed:
            connection = psycopg.connect(
                self.dsn, options=f"-c statement_timeout={self.statement_timeout_ms}", connect_timeout=10
            )
            connection.read_only = True  # applies to every transaction this connection opens
            with self._lock:
                self._connections.append(connection)
            self._local.connection = connection
        return connection

    def _end(self, connection: psycopg.Connection[Any]) -> None:
        # Reads only: rolling back ends the transaction cheaply and releases its snapshot and locks.
        if not connection.broken and not connection.closed:
            connection.rollback()
