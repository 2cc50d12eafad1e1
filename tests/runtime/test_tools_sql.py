"""SQL tools on real databases: DuckDB (file, in-memory + init script) and a throwaway PostgreSQL."""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path

import duckdb
import psycopg
import pytest
from halo.errors import ToolError
from halo.runtime.tools import ToolRunner
from halo.runtime.tools.duckdb_database import RefusedStatement
from halo.runtime.tools.sql_params import bind_params
from halo.spec.workflow import Workflow

# -- placeholder rewriting ------------------------------------------------------------------------

TRICKY = (
    "SELECT x::int, ':lit' AS a, E'it\\'s :esc' AS b, $$ :dollar $$ AS c, $t$ :tagged $t$ AS d,"
    ' "col:quoted", n % 2 -- :comment\n /* :block */ FROM t WHERE id = :id AND name LIKE :pat'
)


def test_placeholders_become_driver_syntax_outside_literals_casts_and_comments():
    duck = bind_params(TRICKY, {"id": 1, "pat": "a%", "unused": 0}, "duckdb")
    assert duck.params == {"id": 1, "pat": "a%"}  # DuckDB rejects unused named parameters
    assert duck.text.endswith("WHERE id = $id AND name LIKE $pat")
    for untouched in ("x::int", "':lit'", ":esc", "$$ :dollar $$", "$t$ :tagged $t$", '"col:quoted"', ":comment"):
        assert untouched in duck.text
    pg = bind_params(TRICKY, {"id": 1, "pat": "a%"}, "postgres")
    assert pg.text.endswith("WHERE id = %(id)s AND name LIKE %(pat)s")
    assert "n %% 2" in pg.text and "x::int" in pg.text  # psycopg reads a single % as a placeholder
    with pytest.raises(KeyError, match="id"):
        bind_params("SELECT :id", {}, "duckdb")


def _duckdb_workflow(tmp_path: Path, query: str, params: dict[str, object], **db: object) -> Workflow:
    spec = {"kind": "duckdb", **db}
    return Workflow.from_yaml(
        _write_yaml(
            tmp_path,
            {
                "name": "t",
                "inputs": ["v"],
                "databases": {"d": spec},
                "nodes": [{"id": "q", "kind": "sql", "db": "d", "query": query, "params": params}],
            },
        )
    )


def _write_yaml(tmp_path: Path, document: dict[str, object]) -> Path:
    import yaml

    path = tmp_path / "workflow.yaml"
    path.write_text(yaml.safe_dump(document))
    return path


# -- DuckDB ---------------------------------------------------------------------------------------


def test_duckdb_init_script_seeds_memory_database_from_files_beside_the_workflow(tmp_path, call):
    (tmp_path / "vendors.csv").write_text("id,name\n1,Acme\n2,Globex: :corp\n")
    (tmp_path / "init.sql").write_text("CREATE TABLE vendors AS FROM read_csv('vendors.csv');")
    query = "SELECT name, ':id' AS lit, id::varchar AS s FROM vendors WHERE id = :id"
    wf = _duckdb_workflow(tmp_path, query, {"id": "{{ v }}"}, init="init.sql")
    with ToolRunner(wf) as runner:
        result = call(runner, wf, "q", {"v": 2})
    assert result["columns"] == ["name", "lit", "s"]
    assert result["rows"] == [{"name": "Globex: :corp", "lit": ":id", "s": "2"}]
    assert result["output"] == result["rows"]


def test_duckdb_file_is_opened_read_only(tmp_path, call):
    with duckdb.connect(str(tmp_path / "kb.duckdb")) as con:
        con.execute("CREATE TABLE facts AS SELECT 1 AS id, 'sky is blue' AS fact")
    wf = _duckdb_workflow(tmp_path, "SELECT fact FROM facts WHERE id = :id", {"id": "{{ v }}"}, path="kb.duckdb")
    with ToolRunner(wf) as runner:
        assert call(runner, wf, "q", {"v": 1})["rows"] == [{"fact": "sky is blue"}]
        # Validation admits SELECTs only; so does the database at run time, and the file is attached
        # read-only beneath that (a raw cursor, past the SELECT-only guard, still cannot write).
        database = runner._sql.database("q", "d")
        for statement in ("INSERT INTO facts VALUES (2, 'x')", "CREATE TABLE t2 (i int)"):
            with pytest.raises(RefusedStatement, match="must be a read-only SELECT"):
                database.query(statement, {}, max_rows=10)
            cursor = database._con.cursor()
            cursor.execute("USE kb")
            with pytest.raises(duckdb.Error, match="read-only"):
                cursor.execute(statement)
            cursor.close()


def test_duckdb_error_and_missing_file_are_tool_errors(tmp_path, call):
    wf = _duckdb_workflow(tmp_path, "SELECT * FROM no_such_table WHERE id = :id", {"id": "{{ v }}"})
    with ToolRunner(wf) as runner, pytest.raises(ToolError, match=r"q: SQL error on database 'd'.*no_such_table"):
        call(runner, wf, "q", {"v": 1})
    wf = _duckdb_workflow(tmp_path, "SELECT :id AS id", {"id": "{{ v }}"}, path="missing.duckdb")
    with ToolRunner(wf) as runner, pytest.raises(ToolError, match="cannot open database 'd'"):
        call(runner, wf, "q", {"v": 1})


def test_duckdb_explain_cost_grows_with_table_size(tmp_path):
    path = tmp_path / "sizes.duckdb"
    with duckdb.connect(str(path)) as con:
        for rows in (100, 1_000, 10_000):
            con.execute(f"CREATE TABLE t{rows} AS SELECT range AS id, range % 10 AS grp FROM range({rows})")
    wf = _duckdb_workflow(tmp_path, "SELECT 1 AS one WHERE 1 = :v", {"v": "{{ v }}"}, path="sizes.duckdb")
    with ToolRunner(wf) as runner:
        costs = [
            runner.explain_cost("d", f"SELECT grp, count(*) FROM t{rows} WHERE id >= :lo GROUP BY grp", {"lo": 5})
            for rows in (100, 1_000, 10_000)
        ]
        assert costs[0] < costs[1] < costs[2]


# -- PostgreSQL -----------------------------------------------------------------------------------


def _pg_workflow(dsn: str, query: str, params: dict[str, object]) -> Workflow:
    return (
        Workflow("pg")
        .inputs("v")
        .database("pg", kind="postgres", dsn=dsn)
        .sql("q", query=query, db="pg", params=params)
        .outputs(rows="q.rows")
    )


def test_postgres_query_with_casts_percent_and_colon_literals(postgres_dsn, call):
    query = (
        "SELECT id, name, price, note, :v::int + 1 AS next, '50%' AS pct, ':v' AS lit"
        " FROM items WHERE note LIKE '%' || :pattern || '%' ORDER BY id"
    )
    wf = _pg_workflow(postgres_dsn, query, {"v": "{{ v }}", "pattern": ":not"})
    with ToolRunner(wf) as runner:
        result = call(runner, wf, "q", {"v": "41"})
    assert result["columns"] == ["id", "name", "price", "note", "next", "pct", "lit"]
    assert result["rows"] == [
        {
            "id": 1,
            "name": "apple",
            "price": Decimal("1.50"),
            "note": "fresh: :not_a_param",
            "next": 42,
            "pct": "50%",
            "lit": ":v",
        }
    ]


def test_postgres_connection_refuses_writes_and_times_out(postgres_dsn, call):
    wf = _pg_workflow(postgres_dsn, "SELECT name FROM items WHERE id = :v", {"v": "{{ v }}"})
    with ToolRunner(wf, statement_timeout_s=0.2) as runner:
        assert call(runner, wf, "q", {"v": 2})["output"] == [{"name": "pear"}]
        database = runner._sql.database("q", "pg")
        with pytest.raises(psycopg.errors.ReadOnlySqlTransaction):
            database.query("INSERT INTO items VALUES (9, 'plum', 1, NULL)", {}, 10)
        with pytest.raises(psycopg.errors.ReadOnlySqlTransaction):
            database.query("CREATE TABLE sneaky (i int)", {}, 10)
        # A SELECT that writes through a function: no parser sees it, the read-only transaction does.
        with pytest.raises(psycopg.errors.ReadOnlySqlTransaction):
            database.query("SELECT nextval('counter')", {}, 10)
        with pytest.raises(psycopg.errors.QueryCanceled):
            database.query("SELECT pg_sleep(2)", {}, 10)
        # The connection recovers after each failure (its transaction was rolled back).
        assert call(runner, wf, "q", {"v": 3})["output"] == [{"name": "fig"}]
    slow = _pg_workflow(postgres_dsn, "SELECT pg_sleep(:v)", {"v": "{{ v }}"})
    timed_out = r"^q: the query on database 'pg' ran longer than 0.2 s \(statement_timeout_s\) and was cancelled"
    with ToolRunner(slow, statement_timeout_s=0.2) as runner, pytest.raises(ToolError, match=timed_out):
        call(runner, slow, "q", {"v": 2})


def test_postgres_sql_error_names_node_and_database(postgres_dsn, call):
    wf = _pg_workflow(postgres_dsn, "SELECT nope FROM items WHERE id = :v", {"v": "{{ v }}"})
    with ToolRunner(wf) as runner, pytest.raises(ToolError, match=r"^q: SQL error on database 'pg': .*nope"):
        call(runner, wf, "q", {"v": 1})


def test_postgres_explain_cost_grows_with_table_size(postgres_dsn):
    wf = _pg_workflow(postgres_dsn, "SELECT :v AS v", {"v": "{{ v }}"})
    with ToolRunner(wf) as runner:
        costs = [
            runner.explain_cost("pg", f"SELECT grp, count(*) FROM {table} WHERE id >= :lo GROUP BY grp", {"lo": 5})
            for table in ("small_t", "medium_t", "large_t")
        ]
    assert costs[0] < costs[1] < costs[2]
    assert costs[2] > 5 * costs[0]  # cost units scale with pages read, not a constant per query


def test_postgres_connections_are_per_thread(postgres_dsn):
    wf = _pg_workflow(postgres_dsn, "SELECT pg_backend_pid() AS pid, pg_sleep(0.2), :v AS v", {"v": "{{ v }}"})
    node = wf.graph.node("q")
    with ToolRunner(wf, max_threads=4) as runner:
        futures = [runner.submit(node, wf.graph.render(node, {"v": str(i)})) for i in range(4)]
        pids = {future.result(timeout=30)["rows"][0]["pid"] for future in futures}
    assert len(pids) == 4  # four calls overlapped on four connections
