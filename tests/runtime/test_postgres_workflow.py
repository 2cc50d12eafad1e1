"""A workflow whose SQL nodes run on a real PostgreSQL server (started on loopback by conftest)."""

from __future__ import annotations

import halo
import pytest
from halo.spec import Workflow

pytestmark = pytest.mark.slow


def test_sql_nodes_on_postgres(postgres_dsn):
    wf = (
        Workflow("pg-prices")
        .database("shop", kind="postgres", dsn=postgres_dsn)
        .inputs("fruit")
        .sql(
            "price",
            "SELECT name, price::float AS price FROM items WHERE name = :fruit",
            db="shop",
            params={"fruit": "{{ fruit }}"},
        )
        .sql("count", "SELECT count(*) AS n FROM items", db="shop")
        .llm("pitch", prompt="Sell {{ fruit }} at {{ price.rows[0].price }} dollars in five words:", max_tokens=6)
        .outputs(price="price.rows", n="count.rows", pitch="pitch.output")
    )
    rows = [{"fruit": f} for f in ("apple", "pear", "apple", "fig")]
    with halo.compile(wf, dtype="fp32") as app:
        res = app.run(rows)
        serial = app.run(rows, plan="serial")
    assert res.errors == []
    assert [o["price"] for o in res.outputs] == [
        [{"name": "apple", "price": 1.5}],
        [{"name": "pear", "price": 2.25}],
        [{"name": "apple", "price": 1.5}],
        [{"name": "fig", "price": 4.0}],
    ]
    assert all(o["n"] == [{"n": 3}] for o in res.outputs)
    assert res.stats.tool_calls_logical == 8 and res.stats.tool_calls_executed == 4  # 3 prices + 1 count
    assert res.outputs == serial.outputs


def test_sql_errors_fail_only_their_rows_on_postgres(postgres_dsn):
    wf = (
        Workflow("pg-bad")
        .database("shop", kind="postgres", dsn=postgres_dsn)
        .inputs("id")
        .sql("lookup", "SELECT name FROM items WHERE id = CAST(:id AS int)", db="shop", params={"id": "{{ id }}"})
        .outputs(name="lookup.rows")
    )
    rows = [{"id": "1"}, {"id": "x"}, {"id": "2"}]
    with halo.compile(wf) as app:
        res = app.run(rows)
    assert [e.row for e in res.errors] == [1]
    assert res.errors[0].node == "lookup" and "x" in res.errors[0].message
    assert res.outputs[0]["name"] == [{"name": "apple"}] and res.outputs[2]["name"] == [{"name": "pear"}]
