"""Malformed workflow specs: each error must name what is wrong and where (file, line, node)."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest
from halo.spec import SpecError, Workflow

HEADER = """\
name: t
models:
  small: {source: smollm2-135m}
databases:
  shop: {kind: duckdb, path: shop.duckdb}
inputs: [ticket, customer_id]
nodes:
"""  # nodes start on line 8

# (case id, nodes section (YAML, starting at line 8) or a whole document, expected line, node, fragments)
CASES: list[tuple[str, str, int | None, str | None, tuple[str, ...]]] = [
    (
        "unknown-field",
        """\
  - id: a
    kind: llm
    prompt: "hi {{ ticket }}"
    temprature: 0.5
""",
        11,
        "a",
        ("unknown field 'temprature'", "did you mean 'temperature'"),
    ),
    (
        "unknown-kind",
        """\
  - id: a
    kind: lm
    prompt: hi
""",
        9,
        "a",
        ("unknown node kind 'lm'", "did you mean 'llm'"),
    ),
    (
        "missing-kind",
        """\
  - id: a
    prompt: hi
""",
        8,
        "a",
        ("missing required field 'kind'",),
    ),
    (
        "missing-prompt",
        """\
  - id: a
    kind: llm
""",
        8,
        "a",
        ("missing required field 'prompt'",),
    ),
    (
        "duplicate-id",
        """\
  - id: a
    kind: llm
    prompt: hi
  - id: a
    kind: llm
    prompt: again
""",
        11,
        "a",
        ("duplicate node id 'a'",),
    ),
    (
        "bad-id",
        """\
  - id: "my node"
    kind: llm
    prompt: hi
""",
        8,
        "my node",
        ("invalid 'id'",),
    ),
    (
        "temperature-range",
        """\
  - id: a
    kind: llm
    prompt: hi
    temperature: 3.5
""",
        11,
        "a",
        ("temperature", "less than or equal to 2"),
    ),
    (
        "top-p-range",
        """\
  - id: a
    kind: llm
    prompt: hi
    top_p: 0
""",
        11,
        "a",
        ("top_p", "greater than 0"),
    ),
    (
        "max-tokens-range",
        """\
  - id: a
    kind: llm
    prompt: hi
    max_tokens: 0
""",
        11,
        "a",
        ("max_tokens", "greater than or equal to 1"),
    ),
    (
        "max-tokens-type",
        """\
  - id: a
    kind: llm
    prompt: hi
    max_tokens: lots
""",
        11,
        "a",
        ("max_tokens", "valid integer"),
    ),
    (
        "timeout-range",
        """\
  - id: p
    kind: http
    url: "http://example.test/{{ customer_id }}"
    timeout_s: -1
""",
        11,
        "p",
        ("timeout_s", "greater than 0"),
    ),
    (
        "unknown-model",
        """\
  - id: a
    kind: llm
    model: big
    prompt: hi
""",
        10,
        "a",
        ("unknown model 'big'", "declared models: small"),
    ),
    (
        "unknown-database",
        """\
  - id: h
    kind: sql
    db: warehouse
    query: SELECT 1
""",
        10,
        "h",
        ("unknown database 'warehouse'", "declared databases: shop"),
    ),
    (
        "sql-two-statements",
        """\
  - id: h
    kind: sql
    db: shop
    query: "SELECT 1; DROP TABLE orders"
""",
        11,
        "h",
        ("single statement", "DROP"),
    ),
    (
        "sql-write",
        """\
  - id: h
    kind: sql
    db: shop
    query: "DELETE FROM orders WHERE customer = :cid"
    params: {cid: "{{ customer_id }}"}
""",
        11,
        "h",
        ("read-only", "DELETE"),
    ),
    (
        "sql-explain-analyze-write",
        """\
  - id: h
    kind: sql
    db: shop
    query: "EXPLAIN ANALYZE UPDATE orders SET n = 0"
""",
        11,
        "h",
        ("read-only", "UPDATE"),
    ),
    (
        "sql-cte-write",
        """\
  - id: h
    kind: sql
    db: shop
    query: "WITH gone AS (DELETE FROM orders RETURNING *) SELECT * FROM gone"
""",
        11,
        "h",
        ("read-only", "DELETE"),
    ),
    (
        "sql-template-in-query",
        """\
  - id: h
    kind: sql
    db: shop
    query: "SELECT * FROM orders WHERE customer = '{{ customer_id }}'"
""",
        11,
        "h",
        ("must not be a template", "params"),
    ),
    (
        "sql-missing-param",
        """\
  - id: h
    kind: sql
    db: shop
    query: "SELECT * FROM orders WHERE customer = :cid"
""",
        11,
        "h",
        (":cid", "no 'cid'"),
    ),
    (
        "sql-syntax",
        """\
  - id: h
    kind: sql
    db: shop
    query: "SELECT FROM WHERE ORDER"
""",
        11,
        "h",
        ("does not parse",),
    ),
    (
        "unknown-node-reference",
        """\
  - id: a
    kind: llm
    prompt: "{{ clasify.output }}"
""",
        10,
        "a",
        ("'clasify'", "neither a declared input", "nor a node id"),
    ),
    (
        "undeclared-input",
        """\
  - id: a
    kind: llm
    prompt: "Customer {{ customer_name }}"
""",
        10,
        "a",
        ("'customer_name'", "neither a declared input"),
    ),
    (
        "unknown-field-reference",
        """\
  - id: h
    kind: sql
    db: shop
    query: SELECT 1 AS n
  - id: a
    kind: llm
    prompt: "{{ h.output_rows }}"
""",
        14,
        "a",
        ("node 'h' (sql) has no field 'output_rows'", "rows"),
    ),
    (
        "bare-node-reference",
        """\
  - id: h
    kind: sql
    db: shop
    query: SELECT 1 AS n
  - id: a
    kind: llm
    prompt: "{{ h }}"
""",
        14,
        "a",
        ("must be read through a field", "h.output"),
    ),
    (
        "cycle",
        """\
  - id: a
    kind: llm
    prompt: "{{ b.output }}"
  - id: b
    kind: llm
    prompt: "{{ a.output }}"
""",
        8,
        "a",
        ("dependency cycle: a -> b -> a",),
    ),
    (
        "self-cycle",
        """\
  - id: a
    kind: llm
    prompt: "{{ a.output }}"
""",
        8,
        "a",
        ("dependency cycle: a -> a",),
    ),
    (
        "after-unknown",
        """\
  - id: a
    kind: llm
    prompt: hi
    after: [nope]
""",
        11,
        "a",
        ("'after' names unknown node 'nope'",),
    ),
    (
        "template-syntax",
        """\
  - id: a
    kind: llm
    prompt: |
      line one {{ ticket }}
      line two {{ ticket
""",
        12,
        "a",
        ("template syntax error in 'prompt'",),
    ),
    (
        "template-syntax-inline",
        """\
  - id: a
    kind: llm
    prompt: "{% if ticket %}open"
""",
        10,
        "a",
        ("template syntax error", "prompt"),
    ),
    (
        "rule-bad-regex",
        """\
  - id: r
    kind: rule
    input: "{{ ticket }}"
    regex: "(unclosed"
""",
        11,
        "r",
        ("invalid regex",),
    ),
    (
        "rule-needs-extractor",
        """\
  - id: r
    kind: rule
    input: "{{ ticket }}"
""",
        8,
        "r",
        ("exactly one of 'regex' or 'field'",),
    ),
    (
        "http-method",
        """\
  - id: p
    kind: http
    method: FETCH
    url: "http://example.test/"
""",
        10,
        "p",
        ("unknown HTTP method 'FETCH'",),
    ),
    (
        "http-url-scheme",
        """\
  - id: p
    kind: http
    url: "ftp://example.test/{{ customer_id }}"
""",
        10,
        "p",
        ("must start with http:// or https://",),
    ),
    (
        "python-function",
        """\
  - id: f
    kind: python
    function: "not a function"
""",
        10,
        "f",
        ("python function 'not a function'",),
    ),
    (
        "iteration-outside-loop",
        """\
  - id: a
    kind: llm
    prompt: "try {{ iteration }}"
""",
        10,
        "a",
        ("'iteration' is only defined inside a loop",),
    ),
    (
        "embedded-sql-write",
        """\
  - id: a
    kind: llm
    prompt: "{{ orders.rows }}"
    sql:
      - id: orders
        db: shop
        query: "INSERT INTO log VALUES (1)"
""",
        14,
        "orders",
        ("read-only", "INSERT"),
    ),
    (
        "node-not-a-mapping",
        """\
  - just a string
""",
        8,
        None,
        ("must be a mapping",),
    ),
]

DOCUMENTS: list[tuple[str, str, int | None, str | None, tuple[str, ...]]] = [
    (
        "yaml-syntax",
        """\
name: t
nodes:
  - id: a
    kind: llm
    prompt: "unterminated
""",
        6,
        None,
        ("YAML syntax error",),
    ),
    ("yaml-tab-indent", "name: t\nnodes:\n\t- id: a\n", 3, None, ("YAML syntax error",)),
    (
        "unknown-top-level",
        """\
name: t
inptus: [x]
nodes:
  - {id: a, kind: llm, prompt: hi}
""",
        2,
        None,
        ("unknown field 'inptus'", "did you mean 'inputs'"),
    ),
    ("missing-nodes", "name: t\ninputs: [x]\n", 1, None, ("missing required field 'nodes'",)),
    ("empty-nodes", "name: t\nnodes: []\n", 2, None, ("non-empty list",)),
    (
        "duplicate-yaml-key",
        """\
name: t
nodes:
  - id: a
    kind: llm
    prompt: hi
    prompt: bye
""",
        6,
        "a",
        ("duplicate key 'prompt'",),
    ),
    (
        "loop-unknown-node",
        """\
name: t
nodes:
  - {id: a, kind: llm, prompt: hi}
loops:
  - {nodes: [a, b], max_iterations: 2}
""",
        5,
        None,
        ("loop 0 names unknown node 'b'",),
    ),
    (
        "loop-max-iterations",
        """\
name: t
nodes:
  - {id: a, kind: llm, prompt: hi}
loops:
  - nodes: [a]
    max_iterations: 0
""",
        6,
        None,
        ("max_iterations", "greater than or equal to 1"),
    ),
    (
        "loop-until-syntax",
        """\
name: t
nodes:
  - {id: a, kind: llm, prompt: hi}
loops:
  - nodes: [a]
    max_iterations: 2
    until: "a.output ==="
""",
        7,
        None,
        ("'until' is not a valid expression",),
    ),
    (
        "output-unknown-node",
        """\
name: t
nodes:
  - {id: a, kind: llm, prompt: hi}
outputs:
  answer: b.output
""",
        5,
        None,
        ("output 'answer' reads 'b'",),
    ),
    (
        "output-unknown-field",
        """\
name: t
nodes:
  - {id: a, kind: llm, prompt: hi}
outputs:
  answer: a.rows
""",
        5,
        "a",
        ("node 'a' has no field 'rows'",),
    ),
    (
        "postgres-without-dsn",
        """\
name: t
databases:
  pg: {kind: postgres}
nodes:
  - {id: a, kind: llm, prompt: hi}
""",
        3,
        None,
        ("needs a 'dsn'",),
    ),
    (
        "node-id-is-input",
        """\
name: t
inputs: [a]
nodes:
  - {id: a, kind: llm, prompt: hi}
""",
        4,
        "a",
        ("also a declared input",),
    ),
]


def _check(
    text: str, line: int | None, node: str | None, fragments: tuple[str, ...], file: str | None = None
):
    with pytest.raises(SpecError) as caught:
        Workflow.from_yaml(text)
    error = caught.value
    matching = [issue for issue in error.issues if all(f in issue.message for f in fragments)]
    assert matching, f"no issue mentions {fragments}; got:\n{error}"
    issue = matching[0]
    assert issue.line == line, f"expected line {line}, got {issue.line}: {issue}"
    assert issue.node == node, f"expected node {node}, got {issue.node}: {issue}"
    rendered = str(error)
    assert f"line {line}" in rendered if line is not None else True
    if node is not None:
        assert f"node '{node}'" in rendered
    return error


@pytest.mark.parametrize(("case", "nodes", "line", "node", "fragments"), CASES, ids=[c[0] for c in CASES])
def test_malformed_node(
    case: str, nodes: str, line: int | None, node: str | None, fragments: tuple[str, ...]
):
    _check(
        HEADER + textwrap.dedent("    " + nodes.replace("\n", "\n    ")).rstrip() + "\n",
        line,
        node,
        fragments,
    )


@pytest.mark.parametrize(
    ("case", "text", "line", "node", "fragments"), DOCUMENTS, ids=[d[0] for d in DOCUMENTS]
)
def test_malformed_document(
    case: str, text: str, line: int | None, node: str | None, fragments: tuple[str, ...]
):
    _check(text, line, node, fragments)


def test_all_errors_are_collected_in_one_error():
    text = HEADER + textwrap.dedent("""\
      - id: a
        kind: llm
        prompt: "{{ nope }}"
        temperature: 9
      - id: b
        kind: sql
        db: missing
        query: "DROP TABLE x"
      - id: a
        kind: rule
        input: x
        regex: y
    """)
    with pytest.raises(SpecError) as caught:
        Workflow.from_yaml(text)
    messages = "\n".join(issue.message for issue in caught.value.issues)
    for fragment in ("temperature", "unknown database 'missing'", "read-only", "duplicate node id 'a'"):
        assert fragment in messages
    assert len(caught.value.issues) >= 4
    assert str(caught.value).startswith("invalid workflow spec (")


def test_errors_name_the_file(tmp_path: Path):
    path = tmp_path / "broken.yaml"
    path.write_text(HEADER + "  - {id: a, kind: llm, prompt: hi, top_k: 3}\n")
    with pytest.raises(SpecError) as caught:
        Workflow.from_yaml(path)
    issue = caught.value.issues[0]
    assert issue.file == str(path) and issue.line == 8 and issue.node == "a"
    assert f"{path}:8, node 'a': unknown field 'top_k'" in str(caught.value)


def test_missing_file_is_a_spec_error(tmp_path: Path):
    with pytest.raises(SpecError, match="cannot read workflow file"):
        Workflow.from_yaml(str(tmp_path / "absent.yaml"))


def test_builder_errors_point_at_the_builder_call():
    workflow = Workflow("t").inputs("x").llm("a", prompt="{{ y }}")
    expected_line = test_builder_errors_point_at_the_builder_call.__code__.co_firstlineno + 1
    with pytest.raises(SpecError) as caught:
        workflow.validate()
    issue = caught.value.issues[0]
    assert issue.file == __file__ and issue.line == expected_line and issue.node == "a"
    assert "'y'" in issue.message


def test_batch_rows_missing_inputs_are_named_by_row():
    workflow = Workflow.from_yaml(HEADER + "  - {id: a, kind: llm, prompt: '{{ ticket }}'}\n")
    rows = [{"ticket": "x", "customer_id": 1}, {"ticket": "y"}, {"customer_id": 3}, "oops"]
    with pytest.raises(SpecError) as caught:
        workflow.check_batch(rows)
    text = str(caught.value)
    assert "row 1 is missing declared input 'customer_id'" in text
    assert "row 2 is missing declared input 'ticket'" in text
    assert "row 3 must be a mapping" in text
    assert "row 0" not in text
    assert workflow.check_batch(rows[:1]) == 1


def test_a_broken_node_still_gets_its_other_errors_and_causes_no_cascade():
    text = HEADER + textwrap.dedent("""\
      - id: classify
        kind: llm
        model: smal
        prompt: "Ticket: {{ tickt }}"
        temperature: 4
      - id: fetch
        kind: htp
        url: x
      - id: reply
        kind: llm
        prompt: "{{ classify.outptu }} {{ fetch.output }}"
    outputs: {r: fetch.output}
    """)
    with pytest.raises(SpecError) as caught:
        Workflow.from_yaml(text)
    found = [(i.line, i.node, i.message.split(" (")[0]) for i in caught.value.issues]
    assert found == [
        (10, "classify", "unknown model 'smal'"),
        (11, "classify", "template reads 'tickt', which is neither a declared input"),
        (12, "classify", "invalid 'temperature': Input should be less than or equal to 2"),
        (14, "fetch", "unknown node kind 'htp'"),
        (18, "reply", "node 'classify'"),
    ]


def test_until_reading_a_node_that_waits_for_the_loop_is_a_cycle():
    text = textwrap.dedent("""\
    name: t
    nodes:
      - {id: draft, kind: llm, prompt: hi}
      - {id: final, kind: llm, prompt: "{{ draft.output }}"}
    loops:
      - {nodes: [draft], max_iterations: 2, until: "'ok' in final.output"}
    """)
    _check(text, 3, "draft", ("dependency cycle: draft -> final -> draft",))
