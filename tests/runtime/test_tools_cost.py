"""ToolCostModel: fallbacks, signatures, EWMA convergence and drift, the SQL units fit, JSON round trip."""

from __future__ import annotations

import random

import duckdb
import pytest
from halo.plan.cost.tool_cost import DEFAULT_LATENCY_S, ToolCostModel, http_signature
from halo.runtime.tools import ToolRunner
from halo.spec.workflow import Workflow


def _tools() -> Workflow:
    return (
        Workflow("c")
        .inputs("v")
        .http("user", url="https://api.example.com/users/{{ v }}/orders", expected_latency_s=0.8)
        .http("search", url="https://api.example.com/search")
        .python("score", function="math:sqrt", args=["{{ v }}"])
        .sql("lookup", query="SELECT   *\n FROM t WHERE id = :v", params={"v": "{{ v }}"})
        .rule("pick", input="{{ v }}", regex="x")
    )


def test_fallbacks_expected_latency_then_kind_default():
    wf, model = _tools(), ToolCostModel()
    assert model.estimate_s(wf.graph.node("user")) == 0.8
    assert model.estimate_s(wf.graph.node("search"), wf.graph.render(wf.graph.node("search"), {})) == 0.2
    for node_id, kind in (("score", "python"), ("lookup", "sql"), ("pick", "rule")):
        assert model.estimate_s(wf.graph.node(node_id)) == DEFAULT_LATENCY_S[kind]
    with pytest.raises(ValueError, match="not 'llm' nodes"):
        model.estimate_s(Workflow("l").inputs("v").llm("a", prompt="{{ v }}").graph.node("a"))


def test_signatures_normalize_ids_and_whitespace():
    wf, model = _tools(), ToolCostModel()
    user = wf.graph.node("user")
    ids = (7, 123456, "3f2a9c1e-1234-4abc-8def-0123456789ab")
    rendered = [model.signature(user, wf.graph.render(user, {"v": v})) for v in ids]
    assert set(rendered) == {model.signature(user)} == {"GET api.example.com/users/{id}/orders"}
    assert model.signature(wf.graph.node("lookup")) == "sql <memory> SELECT * FROM t WHERE id = :v"
    assert model.signature(wf.graph.node("score")) == "python math:sqrt"
    signature = http_signature("post", "http://127.0.0.1:8080/v2/items/abc123def456/x?q=1")
    assert signature == "POST 127.0.0.1:8080/v{id}/items/{id}/x"


def test_ewma_converges_and_follows_drift():
    wf, model = _tools(), ToolCostModel(alpha=0.3)
    user = wf.graph.node("user")
    noise = random.Random(7)
    for i in range(60):
        model.observe(user, wf.graph.render(user, {"v": i}), 0.3 * noise.uniform(0.9, 1.1))
    assert model.estimate_s(user, wf.graph.render(user, {"v": 999})) == pytest.approx(0.3, rel=0.1)
    assert model.estimate_s(user) == pytest.approx(0.3, rel=0.1)  # unrendered: the same signature
    for i in range(30):  # the service slows down; the estimate follows within a few calls
        model.observe(user, wf.graph.render(user, {"v": i}), 0.6 * noise.uniform(0.9, 1.1))
    assert model.estimate_s(user) == pytest.approx(0.6, rel=0.1)
    assert model.estimate_s(wf.graph.node("search")) == 0.2  # another path is another signature


def test_sql_fit_recovers_overhead_and_seconds_per_unit():
    # The explain callable is the injected dependency: here units are a function of the parameter.
    wf = _tools()
    lookup = wf.graph.node("lookup")
    model = ToolCostModel(lambda db, query, params: 1000.0 * float(params["v"]))
    noise = random.Random(3)
    for i in range(200):
        v = 1 + i % 50
        seconds = (0.002 + 1e-6 * 1000.0 * v) * noise.uniform(0.97, 1.03)
        model.observe(lookup, wf.graph.render(lookup, {"v": v}), seconds)
    overhead, per_unit = model.seconds_per_unit(None) or (0.0, 0.0)
    assert per_unit == pytest.approx(1e-6, rel=0.05) and overhead == pytest.approx(0.002, abs=5e-4)
    # An unseen parameter is priced by its units, not by the query's average.
    assert model.estimate_s(lookup, wf.graph.render(lookup, {"v": 400})) == pytest.approx(0.402, rel=0.05)


def test_sql_estimates_from_real_duckdb_explain_price_an_unseen_table_by_its_units(tmp_path):
    # How close the unseen table's estimate comes to its measured time is a timing: bench/sql_cost.py
    # (`--check`: within a factor of 3). Here: the model is bound to the real EXPLAIN, learns from what it
    # observed, and prices the table it never saw on that line from its own EXPLAIN units.
    with duckdb.connect(str(tmp_path / "sizes.duckdb")) as con:
        for rows in (100_000, 1_000_000, 3_000_000):
            con.execute(f"CREATE TABLE t{rows} AS SELECT range AS id, range % 97 AS g FROM range({rows})")
    (tmp_path / "wf.yaml").write_text(
        "name: c\ninputs: [v]\ndatabases: {d: {path: sizes.duckdb}}\nnodes:\n"
        + "".join(
            f"  - {{id: q{rows}, kind: sql, db: d, params: {{lo: '{{{{ v }}}}'}},"
            f" query: 'SELECT g, count(*), sum(id) FROM t{rows} WHERE id >= :lo GROUP BY g'}}\n"
            for rows in (100_000, 1_000_000, 3_000_000)
        )
    )
    wf = Workflow.from_yaml(tmp_path / "wf.yaml")
    with ToolRunner(wf, cost_model=ToolCostModel(), cache=False) as runner:
        assert runner.cost_model is not None and runner.cost_model.explain is not None  # bound to its EXPLAIN
        small, middle, large = (wf.graph.node(f"q{rows}") for rows in (100_000, 1_000_000, 3_000_000))
        for node in (small, large):  # the first read of a table from disk is not what the fit is of
            runner.submit(node, wf.graph.render(node, {"v": 0})).result(timeout=30)
        model = runner.cost_model = ToolCostModel(runner.explain_cost)
        for round_ in range(6):  # fit on the small and the large table only
            for node in (small, large):
                runner.submit(node, wf.graph.render(node, {"v": round_})).result(timeout=30)
        estimates = [model.estimate_s(node, wf.graph.render(node, {"v": 1})) for node in (small, middle, large)]
        request = wf.graph.render(middle, {"v": 1})
        rendered = [wf.graph.render(node, {"v": 1}) for node in (small, middle, large)]
        units = [runner.explain_cost("d", r["query"], r["params"]) for r in rendered]
    fit = model.seconds_per_unit("d")
    assert fit is not None
    overhead, per_unit = fit
    assert units[0] < units[1] < units[2]  # the database's own estimate grows with the table
    assert per_unit > 0 and estimates[0] < estimates[1] < estimates[2]
    assert estimates[1] == pytest.approx(overhead + per_unit * units[1])  # the fitted line at its units
    assert model.signature(middle, request) not in model.to_dict()["latency"]  # never observed


def test_save_and_load_keep_every_estimate(tmp_path):
    wf = _tools()
    model = ToolCostModel(lambda db, query, params: 10.0 * float(params["v"]))
    user, score, lookup = (wf.graph.node(n) for n in ("user", "score", "lookup"))
    for i in range(1, 6):
        model.observe(user, wf.graph.render(user, {"v": i}), 0.1 * i)
        model.observe(score, wf.graph.render(score, {"v": i}), 0.01)
        model.observe(lookup, wf.graph.render(lookup, {"v": i}), 0.001 * i)
    path = model.save(tmp_path / "costs" / "tools.json")
    loaded = ToolCostModel.load(path, explain=lambda db, query, params: 10.0 * float(params["v"]))
    for node, request in ((user, None), (score, None), (lookup, wf.graph.render(lookup, {"v": 9}))):
        assert loaded.estimate_s(node, request) == pytest.approx(model.estimate_s(node, request))
    assert loaded.to_dict() == model.to_dict()
