"""Speculative decoding in workflow runs: each llm node is its engine's request group, and the planner
learns each node's decode rate from the runs that drafted.

The Processor names each llm node's requests with the node's output-length history key (`output_key`),
so the engine's speculation keeps acceptance per node (auto turns drafting off per node where it does
not pay), and the draft figures a run's nodes report add up to what the engine counted per group. A run
whose engines draft records each node's tokens and rows per decode step in the output-length history,
and the next plan prices the node's decode with them; a run that does not draft records nothing. The
runs use a tiny random model with the default model's tokenizer (tests/tiny_default_model.py), whose
outputs repeat themselves after a repetitive prompt (its seed 1 does, often), so prompt lookup drafts.
"""

from __future__ import annotations

from pathlib import Path

import halo
import pytest
from halo.plan.cost import OutputLengthHistory, decode_key, output_key
from halo.plan.plan_problem import build_plan_problem
from halo.spec import Workflow
from tiny_default_model import SOURCE, build_tiny_default

ENGINE = {"kv_blocks": 256, "swap_space_gb": 0, "num_threads": 1}


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_default(tmp_path_factory.mktemp("tiny") / "tiny", seed=1)


def _chain() -> Workflow:
    return (
        Workflow("chain")
        .inputs("i", "topic")
        .llm("draft", prompt="Write about {{ topic }}.", max_tokens=32)
        .llm("title", prompt="Title {{ i }} for: {{ draft.output }}", max_tokens=8)
        .outputs(title="title.output")
    )


def _rows(n: int, offset: int = 0) -> list[dict]:
    return [{"i": i, "topic": f"hello hello hello hello {i}"} for i in range(offset, offset + n)]


def test_each_llm_node_is_its_engines_request_group(tiny_model: Path, tmp_path: Path) -> None:
    wf = _chain()
    options = {**ENGINE, "speculative": "on"}
    with halo.compile(wf, models={SOURCE: str(tiny_model)}, dtype="fp32", engine_options=options) as app:
        app.costs.output_history = OutputLengthHistory(tmp_path / "lengths.json")
        engine = app._pool.engine(SOURCE)
        result = app.run(_rows(3))
        groups = dict(engine.speculator.groups)
        total = engine.stats()
    assert result.errors == []
    keys = {node: output_key(wf.graph.node(node), SOURCE) for node in ("draft", "title")}
    assert set(groups) <= set(keys.values())  # every group the engine measured is one of the run's nodes
    assert total.speculative_verifies > 0, "the tiny model's repetitive outputs draft"
    for node, key in keys.items():
        stats, measured = result.stats.nodes[node], groups.get(key)
        expected = (0, 0, 0) if measured is None else (measured.proposed, measured.accepted, measured.verifies)
        assert (stats.drafted, stats.accepted_drafts, stats.verifies) == expected, node
    assert sum(result.stats.nodes[n].drafted for n in keys) == total.speculative_proposed


def test_a_drafting_run_teaches_the_planner_its_nodes_decode_rate(tiny_model: Path, tmp_path: Path) -> None:
    wf = _chain()
    node = wf.graph.node("draft")
    key = decode_key(node, SOURCE, "on")
    options = {**ENGINE, "speculative": "on"}
    with halo.compile(wf, models={SOURCE: str(tiny_model)}, dtype="fp32", engine_options=options) as app:
        history = app.costs.output_history = OutputLengthHistory(tmp_path / "lengths.json")
        first = app.run(_rows(4))
        stats = first.stats.nodes["draft"]
        tokens = stats.decode_tokens - stats.replies  # the first token of each request is its prefill's
        assert stats.accepted_drafts > 0
        rate = history.decode_rate(key)
        assert rate.tokens_per_step == pytest.approx(tokens / (tokens - stats.accepted_drafts))
        steps = tokens - stats.accepted_drafts
        assert rate.rows_per_step == pytest.approx((steps + stats.drafted) / steps)
        assert rate.tokens_per_step > 1.0
        assert OutputLengthHistory.load(tmp_path / "lengths.json").decode_rate(key) == rate  # remembered
        second = app.run(_rows(4, offset=10))
    # the next plan's decode of the node is priced at the measured rate: less than plain decoding's
    plan = second.planned
    curves = app.costs.curves_for(SOURCE)
    plain = build_plan_problem(plan.graph, lambda _m: curves, output_history=history)
    assert plan.problem.task("draft").decode_s < plain.task("draft").decode_s


def test_a_run_that_does_not_draft_records_no_decode_rate(tiny_model: Path, tmp_path: Path) -> None:
    wf = _chain()
    with halo.compile(wf, models={SOURCE: str(tiny_model)}, dtype="fp32", engine_options=ENGINE) as app:
        history = app.costs.output_history = OutputLengthHistory(tmp_path / "lengths.json")
        result = app.run(_rows(2))
    assert result.errors == [] and result.stats.nodes["draft"].drafted == 0
    assert not [k for k in history.stats if "#decode:" in k]


@pytest.mark.parametrize("flag,options", [([], {}), (["--speculative", "auto"], {"speculative": "auto"})])
def test_halo_run_passes_the_speculative_mode_to_the_engines(flag: list[str], options: dict) -> None:
    from halo.cli import build_parser
    from halo.runtime.run_command import compile_options

    args = build_parser().parse_args(["run", "wf.yaml", "--input", "in.jsonl", "--output", "out.jsonl", *flag])
    assert compile_options(args)["engine_options"] == {"weights": "auto", **options}
    with pytest.raises(SystemExit) as refused:  # argparse names the choices
        build_parser().parse_args(["run", "wf.yaml", "--input", "i", "--output", "o", "--speculative", "always"])
    assert refused.value.code == 2


def test_explain_prices_decodes_with_the_speculative_mode_it_is_given(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`halo explain --speculative on` plans as a compiled app with that mode: the measured decode
    rate of the mode prices the node's decode (without the flag, the engine's default, off: plain)."""
    from halo.runtime.planning import fresh_planner

    monkeypatch.setenv("HALO_CACHE_DIR", str(tmp_path / "cache"))
    wf = _chain()
    history = OutputLengthHistory.load()
    history.observe_decode(decode_key(wf.graph.node("draft"), SOURCE, "on"), tokens=300, steps=100, rows=180)
    history.save()
    rows = _rows(3)
    default = fresh_planner(wf).prepare(rows, "dp").planned
    drafting = fresh_planner(wf, speculative="on").prepare(rows, "dp").planned
    assert default is not None and drafting is not None
    assert drafting.problem.task("draft").decode_s < default.problem.task("draft").decode_s
    assert drafting.problem.task("title").decode_s == default.problem.task("title").decode_s  # no rate for it
