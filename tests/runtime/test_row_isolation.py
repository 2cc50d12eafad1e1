"""One row's bad data fails that row only: at consolidation, at run-time rendering and in tools,
the other rows of the batch run and return what they would have returned alone."""

from __future__ import annotations

import json
import subprocess
import sys

import halo
import pytest
from halo.spec import Workflow

RULES = """
name: shout
inputs: [x]
nodes:
  - {id: up, kind: rule, input: "{{ x.upper() }}", regex: "(.*)"}
  - {id: tail, kind: rule, input: "{{ up.output }}!", regex: "(.*)"}
outputs: {v: tail.output}
"""


def _workflow(text: str) -> Workflow:
    return Workflow.from_yaml(text)


def test_a_template_failing_on_one_rows_data_fails_that_row_alone():
    rows = [{"x": "a"}, {"x": {"k": 1}}, {"x": "b"}, {"x": {"k": 1}}, {"x": "a"}]
    with halo.compile(_workflow(RULES)) as app:
        res = app.run(rows)
        serial = app.run(rows, plan="serial")
    assert [o["v"] for o in res.outputs] == ["A!", None, "B!", None, "A!"]
    assert [(e.row, e.node) for e in res.errors] == [(1, "up"), (3, "up")]
    assert "node 'up', template 'input'" in res.errors[0].message and "upper" in res.errors[0].message
    assert "row" not in res.errors[0].message  # the row is the RowError's, not repeated in its text
    # the per-call baseline agrees row for row, and the failed rows never reached the tool pool
    assert res.outputs == serial.outputs
    assert [(e.row, e.node) for e in serial.errors] == [(1, "up"), (3, "up")]
    assert res.stats.tool_calls_executed == 4  # up: a, b; tail: a, b (the failed row's tail is cancelled)


def test_on_error_default_applies_to_a_render_failure_as_in_the_serial_baseline():
    first = 'regex: "(.*)"}\n  - {id: tail'
    wf = RULES.replace(first, 'regex: "(.*)", on_error: default, fallback: "?"}\n  - {id: tail')
    rows = [{"x": "a"}, {"x": {"k": 1}}]
    with halo.compile(_workflow(wf)) as app:
        res = app.run(rows)
        serial = app.run(rows, plan="serial")
    assert [o["v"] for o in res.outputs] == ["A!", "?!"] == [o["v"] for o in serial.outputs]
    assert res.errors == [] and serial.errors == []


def test_a_run_time_render_failure_is_the_rows_error():
    # `tail` reads an upstream result: it renders at run time, from the row's own `up` result.
    wf = """
name: deferred
inputs: [x]
nodes:
  - {id: up, kind: rule, input: "{{ x }}", field: f}
  - {id: tail, kind: rule, input: "{{ up.output.upper() }}", regex: "(.*)"}
outputs: {v: tail.output}
"""
    rows = [{"x": '{"f": "ok"}'}, {"x": '{"f": {"nested": 1}}'}, {"x": '{"f": "fine"}'}]
    with halo.compile(_workflow(wf)) as app:
        res = app.run(rows)
    assert [o["v"] for o in res.outputs] == ["OK", None, "FINE"]
    assert [(e.row, e.node) for e in res.errors] == [(1, "tail")]


def test_a_failing_tool_call_fails_its_row_alone(tmp_path):
    (tmp_path / "init.sql").write_text("CREATE TABLE t AS SELECT 1 AS k, 'one' AS v;")
    (tmp_path / "wf.yaml").write_text(
        "name: lookups\n"
        "databases: {db: {kind: duckdb, init: init.sql}}\n"
        "inputs: [k]\n"
        "nodes:\n"
        "  - {id: find, kind: sql, db: db, query: 'SELECT v FROM t WHERE k = CAST(:k AS INTEGER)',"
        " params: {k: '{{ k }}'}}\n"
        "outputs: {v: find.rows}\n"
    )
    with halo.compile(tmp_path / "wf.yaml") as app:
        res = app.run([{"k": "1"}, {"k": "not a number"}, {"k": "1"}])
    assert [o["v"] for o in res.outputs] == [[{"v": "one"}], None, [{"v": "one"}]]
    assert [(e.row, e.node) for e in res.errors] == [(1, "find")]
    assert "SQL error" in res.errors[0].message


@pytest.mark.parametrize("strict", [False, True])
def test_halo_run_writes_every_row_when_one_rows_data_breaks_a_template(tmp_path, strict):
    (tmp_path / "wf.yaml").write_text(RULES)
    rows = [{"x": "a"}, {"x": {"k": 1}}, {"x": "b"}]
    (tmp_path / "in.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "out.jsonl"
    args = [sys.executable, "-m", "halo.cli", "run", str(tmp_path / "wf.yaml"), "--input", str(tmp_path / "in.jsonl"),
            "--output", str(out)] + (["--strict"] if strict else [])
    done = subprocess.run(args, capture_output=True, text=True, timeout=300)
    assert done.returncode == (1 if strict else 0), done.stderr
    written = [json.loads(line) for line in out.read_text().splitlines()]
    assert [w.get("v") for w in written] == ["A!", None, "B!"]
    assert written[1]["_error"]["node"] == "up" and "upper" in written[1]["_error"]["message"]
    assert "Traceback" not in done.stderr
