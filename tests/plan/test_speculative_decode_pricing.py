"""The planner's decode cost under speculative decoding: a node's decode steps are its output tokens over
the tokens per step earlier runs measured for it (with that mode), each step computing the measured rows
per sequence; with speculation off, or before any run drafted, decode is priced exactly as before."""

from __future__ import annotations

import pytest
from halo.plan import WhitespaceTokenizer, consolidate
from halo.plan.cost import DEFAULT_CURVES, PLAIN_DECODE, DecodeRate, OutputLengthHistory, decode_key
from halo.plan.plan_problem import build_plan_problem
from halo.spec import Workflow

MAX_TOKENS = 33  # 32 decode steps after the prefill's token


def _graph():
    wf = (
        Workflow("spec")
        .inputs("t")
        .llm("summary", prompt="Summarise {{ t }} now", max_tokens=MAX_TOKENS)
        .llm("label", prompt="Label {{ t }}", choices=["a", "b"], choice_mode="score")
        .outputs(s="summary.output", label="label.output")
    )
    return wf, consolidate(wf, [{"t": f"row {i} text"} for i in range(4)], WhitespaceTokenizer())


def _plain_decode_s(graph) -> float:
    counters = graph.counters["summary"]
    batch, prompt = counters.owned, counters.physical_prompt_tokens // counters.owned
    steps = MAX_TOKENS - 1
    return steps * DEFAULT_CURVES.decode_step_s(batch, prompt + (steps + 1) / 2)


def _history(wf, mode: str, tokens: int, steps: int, rows: int) -> OutputLengthHistory:
    history = OutputLengthHistory()
    node = wf.graph.node("summary")
    history.observe_decode(decode_key(node, wf.graph.model_source(node), mode), tokens, steps, rows)
    return history


def test_decode_steps_shrink_by_the_measured_tokens_per_step() -> None:
    wf, graph = _graph()
    model = wf.graph.model_source(wf.graph.node("summary"))
    history = _history(wf, "auto", tokens=300, steps=120, rows=180)  # 2.5 tokens and 1.5 rows per step
    plain = build_plan_problem(graph, lambda _m: DEFAULT_CURVES, output_history=history)
    drafted = build_plan_problem(graph, lambda _m: DEFAULT_CURVES, output_history=history, speculative={model: "auto"})
    assert plain.task("summary").decode_s == pytest.approx(_plain_decode_s(graph))  # off: the history's rate unused
    counters = graph.counters["summary"]
    batch, prompt = counters.owned, counters.physical_prompt_tokens // counters.owned
    steps = MAX_TOKENS - 1
    expected = steps / 2.5 * DEFAULT_CURVES.decode_step_s(batch * 1.5, prompt + (steps + 1) / 2)
    assert drafted.task("summary").decode_s == pytest.approx(expected)
    assert drafted.task("summary").decode_s < plain.task("summary").decode_s
    # prefill, output tokens and a scored node (it decodes nothing) are priced as before
    assert drafted.task("summary").prefill_s == plain.task("summary").prefill_s
    assert drafted.task("summary").output_tokens == plain.task("summary").output_tokens
    assert drafted.task("label").decode_s == plain.task("label").decode_s == 0.0
    # the plain way of running the batch drafts too: its per-call estimate shrinks with the same rate
    assert drafted.per_call_s < plain.per_call_s


def test_the_rate_of_one_mode_is_not_used_for_another_and_none_means_plain() -> None:
    wf, graph = _graph()
    model = wf.graph.model_source(wf.graph.node("summary"))
    history = _history(wf, "on", tokens=300, steps=100, rows=400)
    auto = build_plan_problem(graph, lambda _m: DEFAULT_CURVES, output_history=history, speculative={model: "auto"})
    assert auto.task("summary").decode_s == pytest.approx(_plain_decode_s(graph))  # nothing measured under auto
    unseen = build_plan_problem(
        graph, lambda _m: DEFAULT_CURVES, output_history=OutputLengthHistory(), speculative={model: "on"}
    )
    assert unseen.task("summary").decode_s == pytest.approx(_plain_decode_s(graph))


def test_split_shares_decode_at_the_measured_rate() -> None:
    wf, graph = _graph()
    model = wf.graph.model_source(wf.graph.node("summary"))
    history = _history(wf, "auto", tokens=200, steps=100, rows=100)  # 2 tokens per step, no extra rows
    plain = build_plan_problem(graph, lambda _m: DEFAULT_CURVES, workers=2, output_history=history)
    drafted = build_plan_problem(
        graph, lambda _m: DEFAULT_CURVES, workers=2, output_history=history, speculative={model: "auto"}
    )
    for a, b in zip(plain.task("summary").splits, drafted.task("summary").splits, strict=True):
        assert b.decode_s == pytest.approx(a.decode_s / 2)


def test_the_decode_rate_is_a_mean_over_steps_and_survives_a_save(tmp_path) -> None:
    history = OutputLengthHistory()
    assert history.decode_rate("k") == PLAIN_DECODE
    history.observe_decode("k", tokens=30, steps=10, rows=20)  # 3 tokens, 2 rows per step
    history.observe_decode("k", tokens=30, steps=30, rows=30)  # plain decoding: 1 and 1
    history.observe_decode("k", tokens=0, steps=0, rows=0)  # nothing decoded: nothing learnt
    assert history.decode_rate("k") == DecodeRate(60 / 40, 50 / 40)
    loaded = OutputLengthHistory.load(history.save(tmp_path / "h.json"))
    assert loaded.decode_rate("k") == history.decode_rate("k")
