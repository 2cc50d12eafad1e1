"""llm nodes with a structured output (choices, regex, json_schema): what loads, and a located error
(file:line, node) for every bad input."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest
from halo.spec import SpecError, Workflow
from halo.spec.nodes import output_fields
from halo.spec.structured_output import OutputCheck, check_output, grammar_problem

SCHEMA = {"type": "object", "properties": {"vendor": {"type": "string"}}, "required": ["vendor"]}


def _load(text: str, tmp_path: Path | None = None) -> Workflow:
    source = textwrap.dedent(text)
    if tmp_path is None:
        return Workflow.from_yaml(source)
    path = tmp_path / "wf.yaml"
    path.write_text(source)
    return Workflow.from_yaml(path)


def _error(text: str, tmp_path: Path | None = None) -> SpecError:
    with pytest.raises(SpecError) as caught:
        _load(text, tmp_path)
    return caught.value


def _only(error: SpecError, fragment: str):
    [issue] = [i for i in error.issues if fragment in i.message]
    return issue


def test_each_format_loads_and_reads_its_fields():
    wf = _load("""\
        name: s
        inputs: [text]
        nodes:
          - {id: kind, kind: llm, prompt: "{{ text }}", choices: [billing, bug, other]}
          - {id: date, kind: llm, prompt: "{{ text }}", regex: "\\\\d{4}-\\\\d{2}-\\\\d{2}"}
          - id: extract
            kind: llm
            prompt: "{{ text }} {{ kind.output }} {{ date.output }}"
            json_schema: {type: object, properties: {vendor: {type: string}}, required: [vendor]}
          - {id: next, kind: llm, prompt: "{{ extract.json.vendor }} {{ extract.output.vendor }}"}
        outputs: {vendor: extract.json.vendor, kind: kind.output, whole: extract.json}
        """)
    kind, date, extract = (wf.graph.node(n).spec for n in ("kind", "date", "extract"))
    assert kind.choices == ("billing", "bug", "other") and kind.choice_mode == "greedy"
    assert date.regex == r"\d{4}-\d{2}-\d{2}"
    assert extract.json_schema == SCHEMA
    assert output_fields(extract) == {"output", "text", "json"} and output_fields(kind) == {"output", "text"}
    assert [b.path for b in wf.graph.outputs] == [("json", "vendor"), ("output",), ("json",)]


def test_a_schema_file_is_read_relative_to_the_workflow_and_equals_the_inline_schema(tmp_path, monkeypatch):
    (tmp_path / "schemas").mkdir()
    (tmp_path / "schemas" / "vendor.json").write_text(json.dumps(SCHEMA))
    monkeypatch.chdir("/")  # relative to the workflow file, not to the working directory
    text = """\
        name: s
        inputs: [text]
        nodes:
          - {id: extract, kind: llm, prompt: "{{ text }}", json_schema: schemas/vendor.json}
        outputs: {vendor: extract.json.vendor}
        """
    from_file = _load(text, tmp_path)
    inline = Workflow("s").inputs("text").llm("extract", prompt="{{ text }}", json_schema=SCHEMA)
    assert from_file.spec == inline.outputs(vendor="extract.json.vendor").spec
    built = Workflow("s").inputs("text").llm("extract", prompt="{{ text }}", json_schema="vendor.json")
    monkeypatch.chdir(tmp_path / "schemas")  # the builder has no file: the working directory
    assert built.spec.nodes[0].json_schema == SCHEMA


def test_a_missing_or_broken_schema_file_is_located(tmp_path):
    (tmp_path / "broken.json").write_text('{"type": ')
    (tmp_path / "list.json").write_text("[1, 2]")
    error = _error(
        """\
        name: s
        inputs: [text]
        nodes:
          - id: a
            kind: llm
            prompt: "{{ text }}"
            json_schema: missing.json
          - {id: b, kind: llm, prompt: "{{ text }}", json_schema: broken.json}
          - {id: c, kind: llm, prompt: "{{ text }} {{ a.json.vendor }}", json_schema: list.json}
        """,
        tmp_path,
    )
    wf = str(tmp_path / "wf.yaml")
    missing = _only(error, "missing.json")
    assert (missing.file, missing.line, missing.node) == (wf, 7, "a")
    assert "cannot read json_schema file 'missing.json'" in missing.message
    broken = _only(error, "broken.json")
    assert (broken.line, broken.node) == (8, "b") and "is not JSON" in broken.message
    listed = _only(error, "list.json")
    assert (listed.line, listed.node) == (9, "c") and "must hold a JSON object" in listed.message
    assert len(error.issues) == 3  # a's `.json` reader is not reported: a stays a JSON node


def test_a_schema_or_regex_llguidance_cannot_compile_is_located():
    error = _error("""\
        name: s
        inputs: [text]
        nodes:
          - {id: a, kind: llm, prompt: "{{ text }}", regex: "(abc"}
          - {id: b, kind: llm, prompt: "{{ text }}", regex: "(?<=a)b"}
          - {id: c, kind: llm, prompt: "{{ text }}", json_schema: {type: foo}}
          - {id: d, kind: llm, prompt: "{{ text }}", json_schema: {type: string, pattern: "(x"}}
          - {id: e, kind: llm, prompt: "{{ text }}", json_schema: {$ref: "#/defs/nowhere"}}
          - {id: f, kind: llm, prompt: "{{ text }}", regex: ""}
        """)
    found = {(i.node, i.line): i.message for i in error.issues}
    assert found == {
        ("a", 4): "regex '(abc' cannot be compiled: unclosed group",
        ("b", 5): "regex '(?<=a)b' cannot be compiled: look-around, including look-ahead and look-behind, "
        "is not supported",
        ("c", 6): "json_schema cannot be compiled: Invalid type: foo",
        ("d", 7): "json_schema cannot be compiled: unclosed group",
        ("e", 8): "json_schema cannot be compiled: Pointer '/defs/nowhere' does not exist",
        ("f", 9): "regex '' cannot be compiled: the pattern is empty",
    }


def test_bad_choices_and_combinations_are_located():
    error = _error("""\
        name: s
        inputs: [text]
        nodes:
          - {id: empty, kind: llm, prompt: "{{ text }}", choices: []}
          - id: twice
            kind: llm
            prompt: "{{ text }}"
            choices:
              - ok
              - ko
              - ok
          - {id: blank, kind: llm, prompt: "{{ text }}", choices: [a, ""]}
          - {id: both, kind: llm, prompt: "{{ text }}", choices: [a, b], regex: "a|b"}
          - {id: three, kind: llm, prompt: "{{ text }}", regex: "a", json_schema: {type: string}}
          - {id: scored, kind: llm, prompt: "{{ text }}", choices: [a, b], length_normalized: true}
          - {id: free, kind: llm, prompt: "{{ text }}", choice_mode: score}
          - {id: mode, kind: llm, prompt: "{{ text }}", choices: [a], choice_mode: vote}
          - {id: number, kind: llm, prompt: "{{ text }}", choices: [1, 2]}
          - {id: boolean, kind: llm, prompt: "{{ text }}", choices: ["yes", no]}
        """)
    found = {(i.node, i.line): i.message for i in error.issues}
    assert found[("empty", 4)] == "'choices' is empty: list at least one option"
    assert found[("twice", 11)] == "choice 'ok' is listed twice (choices must be distinct)"
    assert found[("blank", 12)] == "a choice must be a non-empty string"
    assert found[("both", 13)].startswith("'choices' and 'regex' cannot be combined")
    assert found[("three", 14)].startswith("'regex' and 'json_schema' cannot be combined")
    assert found[("scored", 15)] == (
        "length_normalized applies to choice_mode: score only (it ranks scored options by mean logprob)"
    )
    assert found[("free", 16)] == "choice_mode applies to 'choices' only (this node has none)"
    assert "choice_mode" in found[("mode", 17)] and "'greedy' or 'score'" in found[("mode", 17)]
    numbers = sorted(i.message for i in error.issues if i.node == "number")
    assert numbers == [f"invalid 'choices.{k}': Input should be a valid string (got {k + 1})" for k in (0, 1)]
    assert found[("boolean", 19)].endswith("(got False)") and "unquoted yes/no" in found[("boolean", 19)]
    assert len(error.issues) == 11


def test_json_is_a_field_of_json_nodes_only():
    error = _error("""\
        name: s
        inputs: [text]
        nodes:
          - {id: kind, kind: llm, prompt: "{{ text }}", choices: [a, b]}
          - {id: next, kind: llm, prompt: "{{ kind.json }}"}
        outputs: {k: kind.json.x}
        """)
    messages = sorted((i.line, i.message) for i in error.issues)
    assert messages == [
        (5, "node 'kind' (llm) has no field 'json' (fields: output, text)"),
        (6, "output 'k': node 'kind' has no field 'json' (fields: output, text)"),
    ]


def test_the_builder_reports_its_callers_line():
    wf = Workflow("s").inputs("t").llm("a", prompt="{{ t }}", choices=["x", "x"])  # the line reported
    with pytest.raises(SpecError) as caught:
        wf.validate()
    [issue] = caught.value.issues
    assert issue.file == __file__ and issue.node == "a" and "listed twice" in issue.message
    import inspect

    source = inspect.getsource(test_the_builder_reports_its_callers_line).splitlines()
    first = test_the_builder_reports_its_callers_line.__code__.co_firstlineno
    assert "the line reported" in source[issue.line - first]


def test_formats_are_part_of_the_request_and_round_trip():
    wf = (
        Workflow("s")
        .inputs("t")
        .llm("a", prompt="{{ t }}", choices=["x", "y"])
        .llm("b", prompt="{{ t }}", regex="[0-9]+")
        .llm("c", prompt="{{ t }}", json_schema=SCHEMA)
    )
    again = Workflow.from_yaml(wf.to_yaml())
    assert again == wf
    requests = [wf.graph.render(wf.graph.node(n), {"t": "hi"}, {}) for n in "abc"]
    assert [r["choices"] for r in requests] == [("x", "y"), None, None]
    assert [r["regex"] for r in requests] == [None, "[0-9]+", None] and requests[2]["json_schema"] == SCHEMA


@pytest.mark.parametrize(
    ("check", "text", "truncated", "value", "error"),
    [
        (OutputCheck(choices=("APPROVE", "REJECT")), "REJECT", False, "REJECT", None),
        (
            OutputCheck(choices=("APPROVE", "REJECT")),
            "REJ",
            True,
            None,
            "choices output truncated at max_tokens=8: 'REJ'",
        ),
        (
            OutputCheck(choices=("APPROVE", "REJECT")),
            "maybe",
            True,
            None,
            "output 'maybe' is not one of the choices 'APPROVE', 'REJECT'",
        ),
        (OutputCheck(regex=r"\d{4}"), "2024", False, "2024", None),
        (OutputCheck(regex=r"\d{4}"), "20", True, None, "regex output truncated at max_tokens=8: '20'"),
        (OutputCheck(regex=r"\d{4}"), "20", False, None, "output '20' does not match regex '\\\\d{4}'"),
        (OutputCheck(schema=SCHEMA), '{"vendor": "ACME"}', True, {"vendor": "ACME"}, None),
        (
            OutputCheck(schema=SCHEMA),
            '{"vendor":"AC',
            True,
            None,
            'json output truncated at max_tokens=8: \'{"vendor":"AC\'',
        ),
        (
            OutputCheck(schema=SCHEMA),
            '{"other": 1}',
            False,
            None,
            "json output does not match the node's json_schema: '{\"other\": 1}'",
        ),
        (OutputCheck(schema=SCHEMA), "The vendor is", False, None, "json output is not a JSON document"),
        (OutputCheck(schema={}), "[1, 2.5]", False, [1, 2.5], None),
        (OutputCheck(schema={}), "NaN", False, None, "json output is not a JSON document"),
    ],
)
def test_a_finished_text_is_held_to_its_format(check, text, truncated, value, error):
    checked = check_output(check, text, truncated, 8)
    assert checked.value == value
    assert (checked.error is None) == (error is None)
    if error is not None:
        assert checked.error.startswith(error)


def test_grammar_problem_is_none_for_what_compiles():
    assert grammar_problem(regex="APPROVE|REJECT") is None
    assert grammar_problem(schema=SCHEMA) is None
    assert grammar_problem(schema={"type": "object", "properties": {"n": {"type": "integer"}}}) is None


def test_logprobs_adds_a_field():
    wf = Workflow("s").inputs("t").llm("a", prompt="{{ t }}", choices=["x"], logprobs=True).outputs(lp="a.logprobs")
    assert output_fields(wf.spec.nodes[0]) == {"output", "text", "logprobs", "confidence"}  # a choices node
    free = Workflow("s").inputs("t").llm("a", prompt="{{ t }}", logprobs=True)
    assert output_fields(free.spec.nodes[0]) == {"output", "text", "logprobs"}
    with pytest.raises(SpecError, match="has no field 'logprobs'"):
        Workflow("s").inputs("t").llm("a", prompt="{{ t }}").outputs(lp="a.logprobs").validate()
