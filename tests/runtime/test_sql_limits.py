"""SQL node queries are bounded in time and memory: a hostile row costs its own row, not the host.

A row reaches a query only as parameter values, but `range(:n)` with a huge `n` is enough to burn
CPU for hours or to fill memory. Every query runs under its database's `timeout_s` (the tool's
`statement_timeout_s` unless declared): DuckDB's is a watchdog interrupting the query's cursor (its
fetch included), PostgreSQL's its statement_timeout. Each DuckDB database is also bounded in memory,
spill and threads. All against real DuckDB and PostgreSQL, and once through `halo.compile`.
"""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import duckdb
import halo
import pytest
from halo.errors import ToolError
from halo.runtime.tools.sql import SqlTool
from halo.spec.document import DatabaseSpec
from halo.spec.errors import SpecError
from halo.spec.workflow import Workflow

TIMEOUT_S = 1.0
MARGIN_S = 10.0  # generous, so a loaded machine passes; uncancelled, these queries run for hours
ENDLESS = "SELECT count(*) AS c FROM range(:n) a, range(:n) b"  # n = 10**6: 10**12 pairs
ENDLESS_N = 10**6


def _run(tool: SqlTool, db: str | None, query: str, params: dict[str, object] | None = None) -> dict[str, object]:
    return tool.run("q", {"db": db, "query": query, "params": params or {}})


def _where(db: str | None) -> str:
    return f"database '{db}'" if db is not None else "the in-memory DuckDB"


def _cancelled(db: str | None, source: str = "its timeout_s", limit: float = TIMEOUT_S) -> str:
    return rf"^q: the query on {_where(db)} ran longer than {limit:g} s \({source}\) and was cancelled"


# -- time -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("db", ["d", None], ids=["declared", "db-null"])
def test_a_query_past_its_timeout_is_cancelled_and_the_database_answers_on(tmp_path, db):
    # A declared database takes its own timeout_s; `db: null` the tool's statement_timeout_s.
    if db is None:
        tool, source = SqlTool({}, tmp_path, statement_timeout_s=TIMEOUT_S), "statement_timeout_s"
    else:
        tool, source = SqlTool({"d": DatabaseSpec(timeout_s=TIMEOUT_S)}, tmp_path), "its timeout_s"
    try:
        for _ in range(2):  # the same thread, hence the same cursor: the interrupt does not linger
            started = time.monotonic()
            with pytest.raises(ToolError, match=_cancelled(db, source)):
                _run(tool, db, ENDLESS, {"n": ENDLESS_N})
            elapsed = time.monotonic() - started
            assert TIMEOUT_S <= elapsed < TIMEOUT_S + MARGIN_S
            assert _run(tool, db, ENDLESS, {"n": 300})["rows"] == [{"c": 90_000}]
    finally:
        tool.close()


def test_a_query_is_cancelled_while_its_result_is_fetched(tmp_path):
    # The first 200,000 rows come at once (more than DuckDB's stream buffer, so execute returns), the
    # rest never: the time goes in fetchmany, which the timeout covers too.
    tool = SqlTool({"d": DatabaseSpec(timeout_s=TIMEOUT_S, max_rows=300_000)}, tmp_path)
    query = "SELECT range AS i FROM range(:n) WHERE range < 200000 OR range = -1"
    try:
        started = time.monotonic()
        with pytest.raises(ToolError, match=_cancelled("d")):
            _run(tool, "d", query, {"n": 10**13})
        assert time.monotonic() - started < TIMEOUT_S + MARGIN_S
        assert len(_run(tool, "d", query, {"n": 250_000})["rows"]) == 200_000
    finally:
        tool.close()


def test_a_timeout_interrupts_only_its_own_query_among_concurrent_ones(tmp_path):
    # One database, one cursor per thread: two endless queries are cancelled while steady ones, before,
    # during and after the interrupts, all complete with the right answers.
    tool = SqlTool({"d": DatabaseSpec(timeout_s=TIMEOUT_S)}, tmp_path)

    def endless() -> tuple[str, float]:
        started = time.monotonic()
        try:
            _run(tool, "d", ENDLESS, {"n": ENDLESS_N})
        except ToolError as exc:
            return str(exc), time.monotonic() - started
        return "finished", time.monotonic() - started

    def steady(worker: int) -> list[bool]:
        answers = []
        deadline = time.monotonic() + TIMEOUT_S + 1.0  # keeps querying past the interrupts
        n = 100_000 + worker
        while time.monotonic() < deadline or len(answers) < 5:
            rows = _run(tool, "d", "SELECT sum(range) AS s FROM range(:n)", {"n": n})["rows"]
            answers.append(rows == [{"s": n * (n - 1) // 2}])
            n += 10
        return answers

    try:
        with ThreadPoolExecutor(5) as pool:
            hostile = [pool.submit(endless) for _ in range(2)]
            benign = [pool.submit(steady, worker) for worker in range(3)]
            for future in hostile:
                message, elapsed = future.result()
                assert message.startswith("q: the query on database 'd' ran longer than 1 s (its timeout_s)"), message
                assert elapsed < TIMEOUT_S + MARGIN_S
            for future in benign:
                answers = future.result()
                assert len(answers) >= 5 and all(answers)
    finally:
        tool.close()


def test_an_explain_past_its_timeout_fails_naming_the_database(tmp_path):
    # Planning folds constants; DuckDB checks for interrupts between vectors only, so a folded value
    # is computed to the end, and the EXPLAIN that ran past its timeout still fails, saying so.
    tool = SqlTool({"d": DatabaseSpec(timeout_s=0.2)}, tmp_path)
    try:
        with pytest.raises(ToolError, match=r"^explain: the query on database 'd' ran longer than 0.2 s"):
            tool.explain_cost("d", "SELECT length(repeat('x', :n)) AS l", {"n": 300_000_000})
        assert tool.explain_cost("d", ENDLESS, {"n": ENDLESS_N}) > 0  # planned, not run
    finally:
        tool.close()


def test_postgres_takes_the_databases_own_timeout(postgres_dsn):
    tool = SqlTool({"pg": DatabaseSpec(kind="postgres", dsn=postgres_dsn, timeout_s=0.5)}, Path("."))
    try:
        started = time.monotonic()
        with pytest.raises(ToolError, match=_cancelled("pg", limit=0.5)):
            _run(tool, "pg", "SELECT pg_sleep(:s)", {"s": 30})
        assert time.monotonic() - started < 0.5 + MARGIN_S
        assert _run(tool, "pg", "SELECT name FROM items WHERE id = :id", {"id": 1})["rows"] == [{"name": "apple"}]
    finally:
        tool.close()


# -- memory, spill, threads -------------------------------------------------------------------------


def _settings(tool: SqlTool, db: str | None) -> dict[str, object]:
    query = (
        "SELECT current_setting('memory_limit') AS memory, current_setting('max_temp_directory_size') AS spill,"
        " current_setting('threads') AS threads"
    )
    return _run(tool, db, query)["rows"][0]


def test_duckdb_databases_are_bounded_by_default_and_as_declared(tmp_path):
    # `init` runs under the bounds and may SET its own; the declaration still holds for node queries.
    (tmp_path / "init.sql").write_text("SET memory_limit = '8GB'; SET threads = 4; CREATE TABLE t AS SELECT 1 AS x;")
    declared = DatabaseSpec(init="init.sql", memory_limit="256MiB", max_temp_directory_size="1GiB", threads=2)
    tool = SqlTool({"d": declared}, tmp_path)
    try:
        defaults = {"memory": "953.6 MiB", "spill": "3.7 GiB", "threads": 1}  # 1GB and 4GB, in DuckDB's units
        assert _settings(tool, None) == defaults
        assert _settings(tool, "d") == {"memory": "256.0 MiB", "spill": "1.0 GiB", "threads": 2}
        cursor = tool.database("q", "d")._con.cursor()  # a raw cursor, past the SELECT-only guard
        for statement in ("SET memory_limit = '8GB'", "SET max_temp_directory_size = '1TB'", "SET threads = 8"):
            with pytest.raises(duckdb.InvalidInputException, match="the configuration has been locked"):
                cursor.execute(statement)
        cursor.close()
    finally:
        tool.close()


def test_an_init_script_cannot_move_the_spill_folder(tmp_path):
    # DuckDB lets node queries read its temp directory, so it stays Halo's private folder.
    (tmp_path / "init.sql").write_text(f"SET temp_directory = '{tmp_path}';")
    tool = SqlTool({"d": DatabaseSpec(init="init.sql")}, tmp_path)
    try:
        with pytest.raises(ToolError, match=r"^q: cannot open database 'd': the init script moved DuckDB's temp_dir"):
            _run(tool, "d", "SELECT 1")
    finally:
        tool.close()


@pytest.mark.parametrize(
    "query",
    [
        "SELECT length(string_agg(repeat('x', 1000), ',')) AS n FROM range(:n)",  # one huge aggregate
        "SELECT list(range) AS l FROM range(:n)",
    ],
)
def test_a_query_over_memory_limit_fails_its_row_naming_the_database(tmp_path, query):
    tool = SqlTool({"d": DatabaseSpec(memory_limit="64MB")}, tmp_path)
    try:
        with pytest.raises(
            ToolError, match=r"^q: the query on database 'd' ran out of memory \(memory_limit 64MB, .*Out of Memory"
        ):
            _run(tool, "d", query, {"n": 100_000_000})
        assert len(_run(tool, "d", query, {"n": 10})["rows"]) == 1  # the database answers on
    finally:
        tool.close()


def test_spilling_is_bounded_by_max_temp_directory_size(tmp_path):
    # Sorting n rows of ~110 bytes: a million (~110 MB) is past the 64 MB memory_limit but spills within
    # the 100 MB allowed (with 1 MB it fails); ten million spill past it and fail.
    query = (
        "SELECT max(r) AS r FROM (SELECT row_number() OVER (ORDER BY s DESC, i DESC) AS r"
        " FROM (SELECT range AS i, repeat('z', 100) AS s FROM range(:n)))"
    )
    tool = SqlTool({"d": DatabaseSpec(memory_limit="64MB", max_temp_directory_size="100MB")}, tmp_path)
    try:
        assert _run(tool, "d", query, {"n": 1_000_000})["rows"] == [{"r": 1_000_000}]
        with pytest.raises(
            ToolError,
            match=r"^q: the query on database 'd' ran out of memory \(memory_limit 64MB, spilling up to"
            r" max_temp_directory_size 100MB\): Out of Memory Error: failed to offload",
        ):
            _run(tool, "d", query, {"n": 10_000_000})
    finally:
        tool.close()
    tool = SqlTool({"d": DatabaseSpec(memory_limit="64MB", max_temp_directory_size="1MB")}, tmp_path)
    try:
        with pytest.raises(ToolError, match="ran out of memory"):
            _run(tool, "d", query, {"n": 1_000_000})
    finally:
        tool.close()


@pytest.mark.parametrize(
    ("fields", "complaint"),
    [
        ({"memory_limit": "lots"}, "'lots' is not a size"),
        ({"memory_limit": "80%"}, "'80%' is not a size"),
        ({"memory_limit": "-1"}, "'-1' is not a size"),  # DuckDB's "unlimited"
        ({"max_temp_directory_size": "0GB"}, "'0GB' is not a size"),
        ({"threads": 0}, "greater than or equal to 1"),
        ({"timeout_s": 0}, "greater than 0"),
        ({"kind": "postgres", "dsn": "postgresql://x", "memory_limit": "2GB"}, "'memory_limit' is for duckdb"),
        ({"kind": "postgres", "dsn": "postgresql://x", "threads": 4}, "'threads' is for duckdb"),
    ],
)
def test_bounds_are_validated_with_the_declaration(fields, complaint):
    with pytest.raises(ValueError, match=complaint):
        DatabaseSpec(**fields)
    with pytest.raises(SpecError, match=complaint):
        Workflow("w").database("d", **fields).sql("q", query="SELECT 1", db="d").outputs(r="q.rows").validate()


def test_sizes_in_duckdb_units_are_accepted():
    for size in ("1GB", "512 MiB", "0.5gb", "2TB"):
        assert DatabaseSpec(memory_limit=size).memory_limit == size
    assert DatabaseSpec(kind="postgres", dsn="postgresql://x", timeout_s=5).timeout_s == 5


# -- a whole run: the hostile row is cancelled, the others answer -----------------------------------


def test_a_run_cancels_a_hostile_row_and_answers_the_others(tmp_path):
    wf = (
        Workflow("bounded")
        .inputs("n")
        .database("d", timeout_s=TIMEOUT_S, memory_limit="64MB")
        .sql("pairs", query=ENDLESS, db="d", params={"n": "{{ n }}"})
        .outputs(c="pairs.rows")
    )
    rows = [{"n": n} for n in (10, ENDLESS_N, 20, 30, ENDLESS_N + 1, 40, 50)]
    started = time.monotonic()
    with halo.compile(wf) as app:
        result = app.run(rows)
    assert time.monotonic() - started < TIMEOUT_S + MARGIN_S
    errors = {error.row: error for error in result.errors}
    assert sorted(errors) == [1, 4]
    for error in errors.values():
        assert error.node == "pairs"
        assert error.message.startswith("pairs: the query on database 'd' ran longer than 1 s (its timeout_s)")
    for row, n in ((0, 10), (2, 20), (3, 30), (5, 40), (6, 50)):
        assert result.outputs[row] == {"c": [{"c": n * n}]}
