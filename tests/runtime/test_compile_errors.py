"""`halo.compile` and `run` refuse bad arguments up front with messages that say what and where."""

from __future__ import annotations

import halo
import pytest
from halo.errors import InvalidRequestError, ToolError
from halo.spec import Workflow
from halo.spec.errors import SpecError


def _sql_only(tmp_path, init_sql: str) -> Workflow:
    (tmp_path / "init.sql").write_text(init_sql)
    (tmp_path / "wf.yaml").write_text(
        "name: lookups\n"
        "databases: {db: {kind: duckdb, init: init.sql}}\n"
        "inputs: [k]\n"
        "nodes:\n"
        "  - {id: find, kind: sql, db: db, query: 'SELECT v FROM t WHERE k = :k', params: {k: '{{ k }}'}}\n"
        "outputs: {v: find.rows}\n"
    )
    return Workflow.from_yaml(tmp_path / "wf.yaml")


def test_a_database_that_cannot_open_fails_compile(tmp_path):
    wf = _sql_only(tmp_path, "CREATE TABLE t AS FROM read_csv('missing.csv');")
    with pytest.raises(ToolError, match="cannot open database 'db'.*missing.csv"):
        halo.compile(wf)


def test_sql_only_workflow_runs_without_loading_a_model(tmp_path):
    (tmp_path / "t.csv").write_text("k,v\na,1\nb,2\n")
    wf = _sql_only(tmp_path, "CREATE TABLE t AS FROM read_csv('t.csv');")
    with halo.compile(wf) as app:
        res = app.run([{"k": "a"}, {"k": "b"}, {"k": "a"}, {"x": 1}])
    assert [o["v"] for o in res.outputs[:3]] == [[{"v": 1}], [{"v": 2}], [{"v": 1}]]
    assert res.outputs[3] == {"v": None}
    assert [(e.row, e.node) for e in res.errors] == [(3, "<input>")]
    assert res.stats.tool_calls_logical == 3 and res.stats.tool_calls_executed == 2


def test_bad_arguments(tmp_path):
    (tmp_path / "t.csv").write_text("k,v\na,1\n")
    wf = _sql_only(tmp_path, "CREATE TABLE t AS FROM read_csv('t.csv');")
    with pytest.raises(InvalidRequestError, match="plan must be"):
        halo.compile(wf, plan="fastest")
    with pytest.raises(InvalidRequestError, match="workers must be a positive integer"):
        halo.compile(wf, workers=0)
    with pytest.raises(InvalidRequestError, match="serial baseline runs on one worker"):
        halo.compile(wf, plan="serial", workers=2)
    with halo.compile(wf) as app, pytest.raises(InvalidRequestError, match="got dict"):
        app.run({"k": "a"})
    with pytest.raises(SpecError, match="cannot read workflow file"):
        halo.compile(tmp_path / "nope.yaml")
