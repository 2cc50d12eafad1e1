"""Map (`foreach`), reduce (`kind: reduce`) and conditional (`when`) nodes, end to end.

A tiny random GGUF (tests/tiny_gguf.py, fp32, greedy) stands in for the model: what is checked is
which calls run and what each path returns, not the text's quality. Every path (planned, serial,
per-call, opwise) must return the same outputs for the same rows.
"""

from __future__ import annotations

from pathlib import Path

import halo
import pytest
from halo.spec import SpecError, Workflow
from tiny_gguf import write_tiny_gguf

from bench.systems import run_system

MAP_REDUCE = """\
name: per_document
models:
  t: {{source: {model}, dtype: fp32}}
inputs: [question, topic]
nodes:
  - id: retrieve
    kind: sql
    query: "SELECT title FROM (VALUES ('alpha', 'a'), ('beta', 'a'), ('gamma', 'b'), ('alpha', 'b')) d(title, topic)
            WHERE topic = :topic ORDER BY title"
    params: {{topic: "{{{{ topic }}}}"}}
  - id: answer
    kind: llm
    model: t
    foreach: "{{{{ retrieve.rows }}}}"
    as: doc
    prompt: "Document {{{{ doc.title }}}}. Question: {{{{ question }}}}"
    max_tokens: 4
  - id: joined
    kind: reduce
    input: "{{{{ answer.output }}}}"
    python: join_answers
  - id: summary
    kind: llm
    model: t
    prompt: "Answers: {{% for a in answer.output %}}[{{{{ a }}}}]{{% endfor %}}"
    max_tokens: 3
outputs:
  answers: answer.output
  joined: joined.output
  summary: summary.output
"""

ROUTER = """\
name: router
models:
  t: {{source: {model}, dtype: fp32}}
inputs: [ticket, category]
nodes:
  - id: billing
    kind: llm
    model: t
    when: "{{{{ category == 'billing' }}}}"
    prompt: "Billing reply to: {{{{ ticket }}}}"
    max_tokens: 4
  - id: technical
    kind: llm
    model: t
    when: "category != 'billing'"
    default: "(none)"
    prompt: "Technical reply to: {{{{ ticket }}}}"
    max_tokens: 4
  - id: follow_up
    kind: llm
    model: t
    when: "{{{{ billing.output is not none }}}}"
    prompt: "Follow up on {{{{ billing.output }}}}"
    max_tokens: 3
outputs:
  reply: [billing.output, technical.output]
  billing: billing.output
  technical: technical.output
  follow_up: follow_up.output
"""


def join_answers(answers: list[str]) -> str:
    return " | ".join(answers)


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_gguf(tmp_path_factory.mktemp("tiny") / "tiny.gguf", seed=5)


def _workflow(tmp_path: Path, model: Path, text: str) -> Workflow:
    path = tmp_path / "wf.yaml"
    path.write_text(text.format(model=model))
    return Workflow.from_yaml(path, functions={"join_answers": join_answers})


def test_foreach_maps_reduce_combines_and_every_path_agrees(tmp_path: Path, model: Path):
    rows = [
        {"question": "why?", "topic": "a"},  # alpha, beta
        {"question": "why?", "topic": "b"},  # alpha, gamma: 'alpha' for 'why?' is row 0's element
        {"question": "how?", "topic": "a"},
        {"question": "why?", "topic": "a"},  # equal to row 0: merged at consolidation
        {"question": "how?", "topic": "none"},  # no documents: an empty map
    ]
    with halo.compile(_workflow(tmp_path, model, MAP_REDUCE)) as app:
        planned = app.run(rows)
        runs = {name: run_system(name, app, rows) for name in ("serial", "per-call", "opwise")}
    assert planned.errors == []
    for name, run in runs.items():
        assert run.errors == {}, name
        assert run.outputs == planned.outputs, name
    out = planned.outputs
    assert [len(o["answers"]) for o in out] == [2, 2, 2, 2, 0]
    assert out[0] == out[3]
    assert out[1]["answers"][0] == out[0]["answers"][0]  # the same element call, in two rows
    assert out[4]["answers"] == [] and out[4]["joined"] == ""
    for o in out:
        assert o["joined"] == " | ".join(o["answers"])
    # Element calls: rows 0-2 make 6, of which 'alpha'/'why?' repeats (row 1): 5 distinct requests run.
    # Row 3 is row 0 (consolidated), row 4 has none. summary: one call per distinct answer list (4).
    assert planned.stats.llm_calls_executed == 5 + 4
    assert planned.stats.nodes["answer"].executed == 5 and planned.stats.nodes["answer"].coalesced == 1


def test_when_skips_instances_and_readers_see_null_or_default(tmp_path: Path, model: Path):
    rows = [
        {"ticket": "refund please", "category": "billing"},
        {"ticket": "app crashes", "category": "technical"},
        {"ticket": "refund please", "category": "billing"},
        {"ticket": "login fails", "category": "account"},
    ]
    with halo.compile(_workflow(tmp_path, model, ROUTER)) as app:
        planned = app.run(rows)
        runs = {name: run_system(name, app, rows) for name in ("serial", "per-call", "opwise")}
    assert planned.errors == []
    for name, run in runs.items():
        assert run.outputs == planned.outputs, name
    billing, tech, same, account = planned.outputs
    assert isinstance(billing["billing"], str) and billing["technical"] == "(none)"
    assert billing["reply"] == billing["billing"] and billing["follow_up"] is not None
    assert tech["billing"] is None and tech["follow_up"] is None  # skipped: null; its reader skipped too
    assert tech["reply"] == tech["technical"] != "(none)"
    assert same == billing and account["billing"] is None
    # executed: billing once (rows 0 and 2 merge), technical twice, follow_up once; skipped instances
    # never reach the engine: 4 logical billing - 1 run = rows 1 and 3 skipped, etc.
    assert planned.stats.llm_calls_executed == 1 + 2 + 1
    nodes = planned.stats.nodes
    assert (nodes["billing"].skipped, nodes["technical"].skipped, nodes["follow_up"].skipped) == (2, 2, 2)
    assert (nodes["billing"].executed, nodes["technical"].executed, nodes["follow_up"].executed) == (1, 2, 1)
    assert planned.stats.nodes_skipped == 6


def test_map_errors_are_row_errors_naming_the_node(tmp_path: Path, model: Path):
    text = MAP_REDUCE.replace(
        'foreach: "{{{{ retrieve.rows }}}}"', "foreach: \"{{{{ retrieve.rows if topic != 'x' else 5 }}}}\""
    )
    text = text.replace("max_tokens: 4\n  - id: joined", "max_tokens: 4\n    max_items: 2\n  - id: joined")
    rows = [{"question": "q", "topic": "a"}, {"question": "q", "topic": "x"}]
    with halo.compile(_workflow(tmp_path, model, text)) as app:
        res = app.run(rows)
        serial = app.run(rows, plan="serial")
    assert res.outputs[0]["answers"] and res.outputs[1]["answers"] is None
    assert [(e.row, e.node) for e in res.errors] == [(1, "answer")]
    assert "foreach" in res.errors[0].message and "int 5, not a list" in res.errors[0].message
    assert res.outputs == serial.outputs and [e.message for e in serial.errors] == [e.message for e in res.errors]
    # over max_items: a row error, or with truncate the first max_items elements
    three = text.replace("('alpha', 'b')", "('delta', 'a')")
    with halo.compile(_workflow(tmp_path, model, three)) as app:
        res = app.run(rows[:1])
    assert "3 elements, more than max_items=2" in res.errors[0].message
    with halo.compile(
        _workflow(tmp_path, model, three.replace("max_items: 2", "max_items: 2\n    truncate: true"))
    ) as app:
        res = app.run(rows[:1])
    assert res.errors == [] and len(res.outputs[0]["answers"]) == 2


def test_a_when_that_is_not_a_boolean_is_the_rows_error(tmp_path: Path, model: Path):
    text = ROUTER.replace("when: \"category != 'billing'\"", 'when: "{{{{ category }}}}"')
    rows = [{"ticket": "t", "category": "billing"}]
    with halo.compile(_workflow(tmp_path, model, text)) as app:
        res = app.run(rows)
        serial = app.run(rows, plan="serial")
    assert [(e.row, e.node) for e in res.errors] == [(0, "technical")]
    assert "gave str 'billing', not a boolean" in res.errors[0].message
    assert [e.message for e in serial.errors] == [e.message for e in res.errors]


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (("as: doc", "as: question"), "foreach element name 'question' is also an input"),
        (("as: doc", "as: retrieve"), "foreach element name 'retrieve' is also a node id"),
        (
            ("max_tokens: 3\noutputs", "max_tokens: 3\n    max_items: 3\noutputs"),
            "'max_items' applies to foreach nodes only",
        ),
        (
            ('input: "{{{{ answer.output }}}}"', 'input: "all: {{{{ answer.output }}}}"'),
            "must be one expression giving a list",
        ),
        (('input: "{{{{ answer.output }}}}"', 'input: "{{{{ [1, 2] }}}}"'), "reads no node or input"),
        (
            ('foreach: "{{{{ retrieve.rows }}}}"', 'foreach: "rows: {{{{ retrieve.rows }}}}"'),
            "'foreach' must be one expression",
        ),
        (("python: join_answers", "python: nowhere"), "reduce function 'nowhere' is neither registered"),
        (("{{{{ doc.title }}}}", "{{{{ document.title }}}}"), "template reads 'document'"),
    ],
)
def test_misuse_is_a_located_spec_error(tmp_path: Path, model: Path, change: tuple[str, str], message: str):
    text = MAP_REDUCE.replace(*change)
    assert text != MAP_REDUCE
    with pytest.raises(SpecError) as caught:
        _workflow(tmp_path, model, text)
    assert message in str(caught.value)
    assert "wf.yaml:" in str(caught.value)  # located: file and line


def test_the_builder_takes_the_same_constructs(tmp_path: Path, model: Path):
    yaml_wf = _workflow(tmp_path, model, ROUTER)
    built = (
        Workflow("router")
        .model("t", str(model), dtype="fp32")
        .inputs("ticket", "category")
        .llm(
            "billing",
            model="t",
            when="{{ category == 'billing' }}",
            prompt="Billing reply to: {{ ticket }}",
            max_tokens=4,
        )
        .llm(
            "technical",
            model="t",
            when="category != 'billing'",
            default="(none)",
            prompt="Technical reply to: {{ ticket }}",
            max_tokens=4,
        )
        .llm(
            "follow_up",
            model="t",
            when="{{ billing.output is not none }}",
            prompt="Follow up on {{ billing.output }}",
            max_tokens=3,
        )
        .outputs(reply=["billing.output", "technical.output"], billing="billing.output", technical="technical.output")
        .outputs(follow_up="follow_up.output")
    )
    assert built.spec.nodes == yaml_wf.spec.nodes
    mapped = Workflow("m").inputs("xs").rule("up", foreach="{{ xs }}", as_="x", input="{{ x.upper() }}", regex="(.*)")
    mapped = mapped.outputs(ups="up.output")
    with halo.compile(mapped) as app:
        assert app.run([{"xs": ["a", "b"]}, {"xs": []}]).outputs == [{"ups": ["A", "B"]}, {"ups": []}]


def test_a_second_run_answers_map_elements_and_reducers_from_the_result_cache(tmp_path: Path, model: Path):
    rows = [{"question": "why?", "topic": "a"}, {"question": "how?", "topic": "b"}]
    with halo.compile(_workflow(tmp_path, model, MAP_REDUCE)) as app:
        first = app.run(rows)
        second = app.run(rows)
        fresh = app.run(rows, cache=False)
    assert first.stats.llm_calls_executed == 4 + 2  # four element calls, one summary per row
    assert second.stats.llm_calls_executed == 0 and second.stats.tool_calls_executed == 0
    assert second.outputs == first.outputs == fresh.outputs
    assert second.stats.persistent_hits_by_node["answer"] == 4
