"""The Processor end to end on the real default model: fidelity against the serial baseline, exact
sharing counters, per-row errors, the public API's batch types and results."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import halo
import pytest
from halo.spec import Workflow

sys.path.insert(0, str(Path(__file__).parent))  # workflow_functions
ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples"

pytestmark = pytest.mark.slow


def _rows(name: str) -> list[dict]:
    return [json.loads(line) for line in (EXAMPLES / f"{name}.jsonl").read_text().splitlines() if line.strip()]


def _tools_and_llm() -> Workflow:
    """python + rule + llm, with the llm reading both tools' results."""
    return (
        Workflow("tools-llm")
        .inputs("text")
        .python("words", "workflow_functions:word_count", args=["{{ text }}"], pure=True)
        .rule("first", input="{{ text }}", regex=r"^(\w+)", group=1, default="")
        .llm(
            "summary",
            system="You summarise notes in a few words.",
            prompt="Note ({{ words.output }} words, starts with {{ first.output }}): {{ text }}\nSummary:",
            max_tokens=6,
        )
        .outputs(summary="summary.output", words="words.output", first="first.output")
    )


FIDELITY_CASES = {
    "chain": (lambda: Workflow.from_yaml(EXAMPLES / "invoice_audit.yaml"), lambda: _rows("invoice_audit")),
    "voting": (lambda: Workflow.from_yaml(EXAMPLES / "review_voting.yaml"), lambda: _rows("review_voting")),
    "tools+llm": (
        _tools_and_llm,
        lambda: [{"text": t} for t in ["buy milk and eggs", "call the bank today", "buy milk and eggs", "fix bike"]],
    ),
}


@pytest.mark.parametrize("case", sorted(FIDELITY_CASES))
def test_optimized_run_matches_the_serial_baseline(case):
    make_workflow, make_rows = FIDELITY_CASES[case]
    rows = make_rows()
    with halo.compile(make_workflow(), dtype="fp32") as app:
        serial = app.run(rows, plan="serial")
        optimized = app.run(rows)
        greedy = app.run(rows, plan="greedy", cache=False)  # executed, not answered by the result cache
    assert serial.errors == [] and optimized.errors == [] and greedy.errors == []
    assert optimized.outputs == serial.outputs
    assert greedy.outputs == serial.outputs
    assert len(optimized.outputs) == len(rows)
    # The serial baseline really is per call; the optimized run shares the duplicated rows' work.
    assert serial.stats.llm_calls_executed == serial.stats.llm_calls_logical
    assert optimized.stats.llm_calls_executed < optimized.stats.llm_calls_logical


def test_sharing_counters_are_exact():
    system = "You are a terse assistant. " * 12  # a long shared system prompt: a shared prefix
    wf = (
        Workflow("sharing")
        .inputs("q")
        .llm("answer", system=system, prompt="Question: {{ q }}", max_tokens=4)
        .llm("again", prompt="Repeat: {{ answer.output }}", max_tokens=3)
        .python("length", "workflow_functions:word_count", args=["{{ q }}"], pure=True)
        .outputs(answer="answer.output", again="again.output", n="length.output")
    )
    questions = ["why is the sky blue", "what is rust", "why is the sky blue", "what is rust", "what is rust", "hi"]
    rows = [{"q": q} for q in questions]
    with halo.compile(wf, dtype="fp32") as app:
        res = app.run(rows)
        tokenizer = app._tokenizers[app.model_sources[0]]
    s = res.stats
    assert res.errors == []
    assert s.llm_calls_logical == 12 and s.tool_calls_logical == 6
    # 3 distinct questions: 3 answers; `again` reads an answer, so equal answers share it too.
    assert s.llm_calls_executed == 6
    assert s.tool_calls_executed == 3
    assert [o["n"] for o in res.outputs] == [len(q.split()) for q in questions]
    assert res.outputs[0] == res.outputs[2] and res.outputs[1] == res.outputs[3] == res.outputs[4]
    # The 3 `answer` prompts share the system prompt: after the first, each reuses its full blocks.
    prompts = [
        tokenizer.encode(
            tokenizer.render_chat(
                [{"role": "system", "content": system}, {"role": "user", "content": f"Question: {q}"}]
            )
        )
        for q in dict.fromkeys(questions)
    ]
    shared = min(next(i for i, (a, b) in enumerate(zip(prompts[0], p, strict=False)) if a != b) for p in prompts[1:])
    assert shared > 64
    block = 16
    assert s.cached_tokens >= 2 * (shared // block) * block
    assert s.prefill_tokens + s.cached_tokens == s.prompt_tokens


def test_batch_types_and_result_shapes():
    pd = pytest.importorskip("pandas")
    pa = pytest.importorskip("pyarrow")
    wf = _tools_and_llm()
    rows = [{"text": "water the plants"}, {"text": "book flights"}]
    with halo.compile(wf, dtype="fp32") as app:
        from_list = app.run(rows)
        from_pandas = app.run(pd.DataFrame(rows))
        from_arrow = app.run(pa.Table.from_pylist(rows))
        plan_text = app.explain(rows)
    assert from_list.outputs == from_pandas.outputs == from_arrow.outputs
    frame = from_list.to_pandas()
    assert list(frame.columns) == ["summary", "words", "first", "_error_node", "_error"]
    assert frame["words"].tolist() == [3, 2]
    assert "EXECUTION PLAN" in plan_text and "summary" in plan_text
    assert from_list.stats.seconds_by_kind["llm"] > 0


def test_failing_rows_are_recorded_and_the_batch_completes():
    wf = (
        Workflow("bad-inputs")
        .inputs("text", "n")
        .python("flip", "workflow_functions:explode", args=["{{ text }}"])
        .sql("cast", "SELECT CAST(:n AS INTEGER) AS v", params={"n": "{{ n }}"})
        .http("ping", "http://127.0.0.1:9/unreachable/{{ n }}", timeout_s=2)
        .llm("echo", prompt="{{ text }}", max_tokens=2)
        .outputs(flip="flip.output", v="cast.rows", echo="echo.output")
    )
    ok_wf = wf  # same workflow; the http node fails for every row, so give it a fallback in a copy
    rows = [
        {"text": "fine", "n": "1"},
        {"text": "boom here", "n": "2"},  # python raises
        {"text": "fine too", "n": "abc"},  # SQL conversion error
        {"text": "word " * 9000, "n": "3"},  # over the context window
        {"n": "4"},  # missing input
    ]
    with halo.compile(ok_wf, dtype="fp32") as app:
        res = app.run(rows)
    by_row = {e.row: e for e in res.errors}
    assert set(by_row) == {0, 1, 2, 3, 4}  # the unreachable host fails every row that got that far
    assert by_row[4].node == "<input>" and "'text'" in by_row[4].message
    assert by_row[1].node == "flip" and "cannot handle" in by_row[1].message
    assert by_row[2].node in ("cast", "flip", "ping")
    assert len(res.outputs) == 5
    # Now with policies: the http node defaults, so only the genuinely bad rows fail.
    wf2 = Workflow.from_yaml(_policy_yaml())
    reported: list[tuple] = []
    with halo.compile(wf2, dtype="fp32") as app:
        res2 = app.run(rows, on_row=lambda *row: reported.append(row))
    # on_row: each row once, as it ended (the rejected input first), with the result's own values.
    assert sorted(i for i, _, _ in reported) == [0, 1, 2, 3, 4] and reported[0][0] == 4
    assert {i: (out, err) for i, out, err in reported} == {
        i: (res2.outputs[i], next((e for e in res2.errors if e.row == i), None)) for i in range(5)
    }
    by_row = {e.row: e for e in res2.errors}
    assert set(by_row) == {1, 2, 3, 4}
    assert by_row[1].node == "flip"
    assert by_row[2].node == "cast" and "abc" in by_row[2].message
    assert by_row[3].node == "echo" and "context window" in by_row[3].message
    assert res2.outputs[0]["flip"] == "enif" and res2.outputs[0]["v"] == [{"v": 1}]
    assert res2.outputs[0]["ping"] == "unreachable"
    assert res2.outputs[0]["echo"] is not None


def _policy_yaml() -> str:
    return """
name: bad-inputs-with-policies
inputs: [text, n]
nodes:
  - {id: flip, kind: python, function: "workflow_functions:explode", args: ["{{ text }}"]}
  - id: cast
    kind: sql
    query: "SELECT CAST(:n AS INTEGER) AS v"
    params: {n: "{{ n }}"}
  - id: ping
    kind: http
    url: "http://127.0.0.1:9/unreachable/{{ n }}"
    timeout_s: 2
    on_error: default
    fallback: unreachable
  - {id: echo, kind: llm, prompt: "{{ text }}", max_tokens: 2}
outputs: {flip: flip.output, v: cast.rows, ping: ping.output, echo: echo.output}
"""
