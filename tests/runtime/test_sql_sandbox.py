"""SQL nodes are sandboxed: no file, URL, extension or setting is in reach of a node query or its rows.

The workflow's author is trusted (its `init` script reads files beside the workflow); the statement
a node runs and the parameters its rows supply are not. Every DuckDB function that touches the file
system is tried from the statement text and from a parameter, on an in-memory database (seeded by
`init`), a database file and the anonymous `db: null` one; then the opt-in `allowed_directories`,
the row bound `max_rows`, PostgreSQL's roles, and a whole run through `halo.compile`.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import duckdb
import halo
import psycopg
import pytest
import yaml
from halo.errors import ToolError
from halo.runtime.tools import ToolRunner
from halo.runtime.tools.sql import SqlTool
from halo.spec.document import DatabaseSpec
from halo.spec.errors import SpecError
from halo.spec.workflow import Workflow

SECRET = "TOP-SECRET-42"


@dataclass(frozen=True)
class Site:
    """A workflow folder `wf/` with seeds beside it, and secrets outside it in `outside/`."""

    root: Path
    workflow_dir: Path
    outside: Path

    def secret(self, suffix: str) -> str:
        return str(self.outside / f"secret.{suffix}")


@pytest.fixture
def site(tmp_path: Path) -> Site:
    workflow_dir, outside = tmp_path / "wf", tmp_path / "outside"
    workflow_dir.mkdir()
    outside.mkdir()
    (workflow_dir / "seed.csv").write_text("k,v\na,1\nb,2\n")
    (workflow_dir / "init.sql").write_text("CREATE TABLE t AS FROM read_csv('seed.csv');")
    with duckdb.connect(str(workflow_dir / "kb.duckdb")) as con:
        con.execute("CREATE TABLE t AS SELECT * FROM (VALUES ('a', 1), ('b', 2)) AS t(k, v)")
    # Secrets in every format a reader understands, so an unsandboxed read would succeed, not fail to parse.
    (outside / "secret.txt").write_text(SECRET + "\n")
    with duckdb.connect() as con:
        con.execute(f"CREATE TABLE s AS SELECT '{SECRET}' AS secret")
        for suffix, options in (("csv", "(HEADER)"), ("parquet", "(FORMAT parquet)"), ("json", "(FORMAT json)")):
            con.execute(f"COPY s TO '{outside / ('secret.' + suffix)}' {options}")
    with duckdb.connect(str(outside / "other.duckdb")) as con:
        con.execute(f"CREATE TABLE s AS SELECT '{SECRET}' AS secret")
    (outside / "fake.duckdb_extension").write_bytes(b"\0" * 1024)
    return Site(tmp_path, workflow_dir, outside)


# The three kinds of DuckDB a node can query: declared in-memory (seeded by init), a file, `db: null`.
DATABASES = {
    "memory": DatabaseSpec(init="init.sql"),
    "file": DatabaseSpec(path="kb.duckdb"),
}
TARGETS = ["memory", "file", None]


def _literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def _attacks(site: Site) -> dict[str, tuple[str, str, str]]:
    """name -> (statement with the target inline, the same with the target as :p, the value of p).

    Statements that take no parameters (COPY, ATTACH, INSTALL, LOAD) reach a parameter through
    `query(:p)`, which runs a statement text given as a value.
    """
    text = site.secret("txt")
    reads = {
        "read_csv": ("SELECT * FROM read_csv({})", site.secret("csv")),
        "read_text": ("SELECT content FROM read_text({})", text),
        "read_blob": ("SELECT size FROM read_blob({})", text),
        "read_parquet": ("SELECT * FROM read_parquet({})", site.secret("parquet")),
        "read_json": ("SELECT * FROM read_json({})", site.secret("json")),
        "glob": ("SELECT file FROM glob({})", str(site.outside / "*")),
        "glob_root": ("SELECT file FROM glob({})", "/root/**"),
        "etc_passwd": ("SELECT content FROM read_text({})", "/etc/passwd"),
        "query": ("SELECT * FROM query({})", f"SELECT content FROM read_text({_literal(text)})"),
    }
    attacks = {name: (sql.format(_literal(value)), sql.format(":p"), value) for name, (sql, value) in reads.items()}
    statements = {
        "copy": f"COPY (SELECT 42 AS x) TO {_literal(str(site.outside / 'written.csv'))}",
        "attach": f"ATTACH {_literal(str(site.outside / 'other.duckdb'))} AS other",
        "install": f"INSTALL {_literal(str(site.outside / 'fake.duckdb_extension'))}",
        "load": f"LOAD {_literal(str(site.outside / 'fake.duckdb_extension'))}",
    }
    for name, statement in statements.items():
        attacks[name] = (statement, "SELECT * FROM query(:p)", statement)
    return attacks


ATTACK_NAMES = [
    "read_csv",
    "read_text",
    "read_blob",
    "read_parquet",
    "read_json",
    "glob",
    "glob_root",
    "etc_passwd",
    "query",
    "copy",
    "attach",
    "install",
    "load",
]


def _run(tool: SqlTool, db: str | None, query: str, params: dict[str, object] | None = None) -> dict[str, object]:
    return tool.run("q", {"db": db, "query": query, "params": params or {}})


def _where(db: str | None) -> str:
    return f"database '{db}'" if db is not None else "the in-memory DuckDB"


@pytest.mark.parametrize("form", ["statement", "parameter"])
@pytest.mark.parametrize("db", TARGETS, ids=lambda db: db or "db-null")
@pytest.mark.parametrize("attack", ATTACK_NAMES)
def test_node_queries_reach_no_file_extension_or_database(site, attack, db, form):
    inline, placeholder, value = _attacks(site)[attack]
    query, params = (inline, {}) if form == "statement" else (placeholder, {"p": value})
    tool = SqlTool(DATABASES, site.workflow_dir)
    try:
        with pytest.raises(ToolError) as refused:
            _run(tool, db, query, params)
        message = str(refused.value)
        assert message.startswith("q: ") and _where(db) in message
        assert SECRET not in message
        # Refused by the sandbox, not merely failing: the file-access lock, the SELECT-only guard,
        # or (query() given a statement) DuckDB's own rule that query() runs one SELECT only.
        assert (
            "file access is disabled for node queries" in message
            or "a node query must be a read-only SELECT" in message
            or "Expected a single SELECT statement" in message
        ), message
        # The database still answers, and nothing was written or attached.
        if db is not None:
            assert _run(tool, db, "SELECT v FROM t WHERE k = :k", {"k": "b"})["rows"] == [{"v": 2}]
        assert not (site.outside / "written.csv").exists()
        with pytest.raises(ToolError, match="other"):
            _run(tool, db, "SELECT * FROM other.s")
    finally:
        tool.close()


@pytest.mark.parametrize("db", TARGETS, ids=lambda db: db or "db-null")
@pytest.mark.parametrize(
    "statement",
    [
        "SET enable_external_access = true",
        "RESET enable_external_access",
        "SET lock_configuration = false",
        "SET GLOBAL allowed_directories = ['/']",
        "PRAGMA enable_profiling",
        "DETACH kb",
        "USE memory",
        "CREATE TABLE sneaky (i int)",
        "EXPORT DATABASE '/tmp'",
        "EXPLAIN ANALYZE CREATE TABLE sneaky (i int)",
        "SELECT 1; SELECT 2",
    ],
)
def test_node_queries_cannot_change_settings_or_the_database(site, statement, db):
    tool = SqlTool(DATABASES, site.workflow_dir)
    try:
        with pytest.raises(ToolError, match=rf"^q: refused on {_where(db)}: a node query must be"):
            _run(tool, db, statement)
        assert _run(tool, db, "SELECT current_setting('enable_external_access') AS on")["rows"] == [{"on": False}]
    finally:
        tool.close()


def test_the_settings_are_locked_even_for_a_statement_past_the_guard(site):
    # The SELECT-only guard is one layer; the locked configuration is the other (a raw cursor skips the guard).
    tool = SqlTool(DATABASES, site.workflow_dir)
    try:
        database = tool.database("q", "memory")
        cursor = database._con.cursor()
        for statement in ("SET enable_external_access = true", "RESET lock_configuration", "SET threads = 1"):
            with pytest.raises(duckdb.InvalidInputException, match="the configuration has been locked"):
                cursor.execute(statement)
        with pytest.raises(duckdb.PermissionException):
            cursor.execute(f"SELECT content FROM read_text({_literal(site.secret('txt'))})")
        cursor.close()
    finally:
        tool.close()


def test_the_spill_folder_is_private_and_not_the_working_directory(site, monkeypatch):
    # DuckDB lets queries read its temp directory; by default that is `.tmp` under the working directory.
    monkeypatch.chdir(site.root)
    (site.root / ".tmp").mkdir()
    (site.root / ".tmp" / "note.txt").write_text(SECRET)
    tool = SqlTool(DATABASES, site.workflow_dir)
    try:
        with pytest.raises(ToolError, match="file access is disabled"):
            _run(tool, None, "SELECT content FROM read_text(:p)", {"p": str(site.root / ".tmp" / "note.txt")})
        spill = _run(tool, None, "SELECT current_setting('temp_directory') AS d")["rows"][0]["d"]
        assert Path(spill).is_dir() and "halo-duckdb-" in spill
    finally:
        tool.close()
    assert not Path(spill).exists()  # removed with the database


def test_init_reads_files_beside_the_workflow_but_node_queries_do_not(site):
    tool = SqlTool(DATABASES, site.workflow_dir)
    try:
        assert _run(tool, "memory", "SELECT v FROM t WHERE k = :k", {"k": "a"})["rows"] == [{"v": 1}]
        with pytest.raises(ToolError, match="file access is disabled for node queries on database 'memory'"):
            _run(tool, "memory", "SELECT * FROM read_csv(:p)", {"p": "seed.csv"})  # the very file init read
    finally:
        tool.close()


def test_hostile_queries_pass_validation_and_are_refused_at_run_time(site, call):
    # The spec checks a node's statement (one SELECT, named parameters); it cannot see what a row passes.
    hostile = {
        "SELECT content FROM read_text(:p)": site.secret("txt"),
        "SELECT * FROM query(:p)": f"SELECT content FROM read_text({_literal(site.secret('txt'))})",
    }
    for query, value in hostile.items():
        wf = (
            Workflow("w")
            .inputs("p")
            .database("d", path=str(site.workflow_dir / "kb.duckdb"))
            .sql("q", query=query, db="d", params={"p": "{{ p }}"})
            .outputs(rows="q.rows")
        )
        assert wf.spec is not None  # validation admits it
        with ToolRunner(wf) as runner, pytest.raises(ToolError, match="^q: file access is disabled for node queries"):
            call(runner, wf, "q", {"p": value})
    for statement in ("COPY t TO 'x.csv'", "ATTACH 'x.duckdb'", "INSTALL httpfs", "SET threads = 1", "PRAGMA version"):
        with pytest.raises(SpecError, match="read-only"):
            Workflow("w").database("d", path="kb.duckdb").sql("q", query=statement, db="d").outputs(
                r="q.rows"
            ).validate()


# -- allowed_directories: the opt-in ----------------------------------------------------------------


@pytest.fixture
def docs_site(site: Site) -> Site:
    docs = site.workflow_dir / "docs"
    (docs / "sub").mkdir(parents=True)
    (docs / "a.txt").write_text("alpha")
    (docs / "sub" / "b.txt").write_text("beta")
    (docs / "link.txt").symlink_to(site.outside / "secret.txt")
    (docs / "linkdir").symlink_to(site.outside, target_is_directory=True)
    (site.workflow_dir / "docs2").mkdir()  # shares the prefix "docs"
    (site.workflow_dir / "docs2" / "x.txt").write_text(SECRET)
    (site.workflow_dir / "beside.txt").write_text(SECRET)
    (site.workflow_dir / "alias").symlink_to(docs, target_is_directory=True)
    return site


def _docs_tool(site: Site, directory: str = "docs") -> SqlTool:
    return SqlTool({"d": DatabaseSpec(allowed_directories=(directory,))}, site.workflow_dir)


# DuckDB checks a relative name against the working directory, so node queries name files under an
# allowed directory by absolute path; the workflow's folder is `current_setting('file_search_path')`.
BESIDE_THE_WORKFLOW = "SELECT content FROM read_text(current_setting('file_search_path') || '/' || :p)"


def test_allowed_directories_admits_exactly_that_directory(docs_site):
    site, docs = docs_site, docs_site.workflow_dir / "docs"
    tool = _docs_tool(site)
    try:
        for path, content in (("docs/a.txt", "alpha"), ("docs/sub/b.txt", "beta"), ("docs//./a.txt", "alpha")):
            assert _run(tool, "d", BESIDE_THE_WORKFLOW, {"p": path})["rows"] == [{"content": content}], path
        read = "SELECT content FROM read_text(:p)"
        assert _run(tool, "d", read, {"p": str(docs / "a.txt")})["rows"] == [{"content": "alpha"}]
        listed = _run(tool, "d", "SELECT file FROM glob(:p) ORDER BY file", {"p": str(docs / "**")})["rows"]
        assert [Path(row["file"]).relative_to(docs).as_posix() for row in listed] == ["a.txt", "sub/b.txt"]
        refused = [
            "docs/../beside.txt",  # `..` out of it
            "docs/sub/../../beside.txt",
            "docs/link.txt",  # a symlink to a file outside
            "docs/linkdir/secret.txt",  # through a symlinked folder
            "docs2/x.txt",  # a sibling sharing the prefix
            "beside.txt",
            "../outside/secret.txt",
        ]
        for path in refused:
            with pytest.raises(ToolError, match="file access is disabled for node queries on database 'd'"):
                _run(tool, "d", BESIDE_THE_WORKFLOW, {"p": path})
        for path in (site.secret("txt"), "/etc/passwd", "docs/a.txt"):  # relative: against the working directory
            with pytest.raises(ToolError, match="file access is disabled for node queries on database 'd'"):
                _run(tool, "d", read, {"p": path})
        for pattern in (str(docs.parent / "*"), str(docs / "linkdir" / "*"), str(docs / ".." / "*")):
            with pytest.raises(ToolError, match="file access is disabled"):
                _run(tool, "d", "SELECT file FROM glob(:p)", {"p": pattern})
        # Reading is all it opens: writing there is refused.
        with pytest.raises(ToolError, match="must be a read-only SELECT; DuckDB classifies this one as COPY"):
            _run(tool, "d", f"COPY (SELECT 1) TO {_literal(str(docs / 'out.csv'))}")
        assert not (docs / "out.csv").exists()
    finally:
        tool.close()


def test_an_allowed_directory_given_through_a_symlink_admits_its_target(docs_site):
    tool = _docs_tool(docs_site, "alias")
    try:
        assert _run(tool, "d", BESIDE_THE_WORKFLOW, {"p": "alias/a.txt"})["rows"] == [{"content": "alpha"}]
        assert _run(tool, "d", BESIDE_THE_WORKFLOW, {"p": "docs/a.txt"})["rows"] == [{"content": "alpha"}]
        with pytest.raises(ToolError, match="file access is disabled"):
            _run(tool, "d", BESIDE_THE_WORKFLOW, {"p": "alias/../beside.txt"})
    finally:
        tool.close()


def test_allowed_directories_must_exist_and_is_for_duckdb_only(site):
    tool = SqlTool({"d": DatabaseSpec(allowed_directories=("nope",))}, site.workflow_dir)
    with pytest.raises(ToolError, match=r"^q: cannot open database 'd': allowed_directories: 'nope' is not a dir"):
        _run(tool, "d", "SELECT 1")
    tool.close()
    with pytest.raises(ValueError, match="'allowed_directories' is for duckdb databases only"):
        DatabaseSpec(kind="postgres", dsn="postgresql://x", allowed_directories=("docs",))


# -- max_rows: a bound on what one query returns -----------------------------------------------------


@pytest.mark.parametrize("db", TARGETS, ids=lambda db: db or "db-null")
def test_results_over_max_rows_fail_the_row_and_exactly_max_rows_pass(site, db):
    specs = {name: spec.model_copy(update={"max_rows": 3}) for name, spec in DATABASES.items()}
    tool = SqlTool(specs if db is not None else DATABASES, site.workflow_dir)
    limit = 3 if db is not None else 10_000
    try:
        assert len(_run(tool, db, "SELECT range AS i FROM range(:n)", {"n": limit})["rows"]) == limit
        assert _run(tool, db, "SELECT range AS i FROM range(0)")["columns"] == ["i"]
        with pytest.raises(ToolError, match=rf"^q: the query on {_where(db)} returned more than {limit} rows"):
            _run(tool, db, "SELECT range AS i FROM range(:n)", {"n": limit + 1})
    finally:
        tool.close()


def test_an_endless_duckdb_result_is_cut_without_being_fetched(site):
    tool = SqlTool({"d": DatabaseSpec(max_rows=10)}, site.workflow_dir)
    try:
        started = time.monotonic()
        with pytest.raises(ToolError, match="returned more than 10 rows"):
            _run(tool, "d", "SELECT range AS i, repeat('x', 100) AS pad FROM range(1000000000000)")
        assert time.monotonic() - started < 10  # fetching it all would take hours
    finally:
        tool.close()


def test_max_rows_must_be_positive():
    with pytest.raises(ValueError, match="greater than or equal to 1"):
        DatabaseSpec(max_rows=0)


# -- PostgreSQL: the transaction is read-only, the role decides what else ----------------------------


def test_postgres_results_over_max_rows_are_cut_without_being_fetched(postgres_dsn):
    spec = DatabaseSpec(kind="postgres", dsn=postgres_dsn, max_rows=5)
    tool = SqlTool({"pg": spec}, Path("."), statement_timeout_s=30)
    try:
        assert len(_run(tool, "pg", "SELECT g FROM generate_series(1, :n) AS g", {"n": 5})["rows"]) == 5
        started = time.monotonic()
        with pytest.raises(ToolError, match=r"^q: the query on database 'pg' returned more than 5 rows"):
            # In the select list the series is produced row by row (in FROM, PostgreSQL would build it first).
            _run(tool, "pg", "SELECT generate_series(1, 1000000000000) AS g")
        assert time.monotonic() - started < 10  # read through a cursor, not run to the 30 s timeout
        assert _run(tool, "pg", "SELECT name FROM items WHERE id = :id", {"id": 1})["rows"] == [{"name": "apple"}]
        empty = _run(tool, "pg", "SELECT name FROM items WHERE id < 0")
        assert empty["rows"] == [] and empty["columns"] == ["name"]
        assert len(_run(tool, "pg", "SHOW statement_timeout")["rows"]) == 1  # not a cursor query: fetched plainly
    finally:
        tool.close()


@pytest.fixture(scope="module")
def reader_dsn(postgres_dsn: str) -> str:
    """A DSN for a role that may SELECT from `items` and nothing more (the test cluster's own role is a superuser)."""
    with psycopg.connect(postgres_dsn, autocommit=True) as connection:
        exists = connection.execute("SELECT 1 FROM pg_roles WHERE rolname = 'halo_reader'").fetchone()
        if not exists:
            connection.execute("CREATE ROLE halo_reader LOGIN")
        connection.execute("GRANT SELECT ON items TO halo_reader")
    return psycopg.conninfo.make_conninfo(postgres_dsn, user="halo_reader")


@pytest.mark.parametrize(
    ("query", "params", "refusal"),
    [
        ("SELECT pg_read_file(:p)", {"p": "/etc/passwd"}, "permission denied for function pg_read_file"),
        ("SELECT pg_read_binary_file(:p)", {"p": "/etc/passwd"}, "permission denied for function pg_read_binary"),
        ("SELECT pg_ls_dir(:p)", {"p": "/"}, "permission denied for function pg_ls_dir"),
        ("SELECT lo_import(:p)", {"p": "/etc/passwd"}, "read-only transaction|permission denied"),
        ("COPY items FROM PROGRAM 'id'", {}, "read-only transaction|superuser|pg_execute_server_program"),
        ("COPY (SELECT 1) TO PROGRAM 'id'", {}, "superuser|pg_execute_server_program"),
        ("COPY (SELECT 1) TO '/tmp/halo-pg-copy.csv'", {}, "superuser|pg_write_server_files"),
    ],
)
def test_postgres_role_without_file_privileges_refuses_server_files(reader_dsn, query, params, refusal):
    tool = SqlTool({"pg": DatabaseSpec(kind="postgres", dsn=reader_dsn)}, Path("."))
    try:
        with pytest.raises(ToolError, match=rf"^q: SQL error on database 'pg': .*({refusal})"):
            _run(tool, "pg", query, params)
        assert _run(tool, "pg", "SELECT name FROM items WHERE id = :id", {"id": 2})["rows"] == [{"name": "pear"}]
    finally:
        tool.close()


# -- a whole run: the hostile row fails, the others answer ------------------------------------------


def test_a_run_gives_hostile_rows_errors_and_answers_the_others(site):
    docs = site.workflow_dir / "docs"
    docs.mkdir()
    (docs / "a.txt").write_text("alpha")
    document = {
        "name": "sandboxed",
        "databases": {
            "erp": {"kind": "duckdb", "init": "init.sql", "max_rows": 2},
            "docs": {"kind": "duckdb", "allowed_directories": ["docs"]},
        },
        "inputs": ["k", "doc", "n"],
        "nodes": [
            {
                "id": "lookup",
                "kind": "sql",
                "db": "erp",
                "query": "SELECT v FROM t WHERE k = :k",
                "params": {"k": "{{ k }}"},
            },
            {
                "id": "read",
                "kind": "sql",
                "db": "docs",
                "query": BESIDE_THE_WORKFLOW,
                "params": {"p": "{{ doc }}"},
            },
            {
                "id": "many",
                "kind": "sql",
                "db": "erp",
                "query": "SELECT range AS i FROM range(:n)",
                "params": {"n": "{{ n }}"},
            },
        ],
        "outputs": {"v": "lookup.rows", "text": "read.rows", "many": "many.rows"},
    }
    path = site.workflow_dir / "sandboxed.yaml"
    path.write_text(yaml.safe_dump(document))
    rows = [
        {"k": "a", "doc": "docs/a.txt", "n": 1},
        {"k": "b", "doc": "../outside/secret.txt", "n": 1},  # a file outside the allowed directory
        {"k": "a", "doc": "docs/../init.sql", "n": 1},  # `..` out of it
        {"k": "b", "doc": "docs/a.txt", "n": 3},  # more rows than erp's max_rows
    ]
    with halo.compile(Workflow.from_yaml(path)) as app:
        result = app.run(rows)
    assert result.outputs[0] == {"v": [{"v": 1}], "text": [{"content": "alpha"}], "many": [{"i": 0}]}
    errors = {error.row: error for error in result.errors}
    assert sorted(errors) == [1, 2, 3]
    for row in (1, 2):
        assert errors[row].node == "read"
        assert "file access is disabled for node queries on database 'docs'" in errors[row].message
        assert SECRET not in errors[row].message
    assert errors[3].node == "many"
    assert "returned more than 2 rows" in errors[3].message
