"""Workflow parsing, the builder, dependency extraction, decoupling, loop unrolling and templates."""

from __future__ import annotations

import pytest
from halo.spec import DEFAULT_MODEL, Binding, SpecError, TemplateRenderError, Workflow
from halo.spec.template import DYNAMIC_FIELD, Reference, make_environment, template_references

TRIAGE = """\
name: ticket-triage
models:
  small: {source: smollm2-135m}
databases:
  shop: {kind: duckdb, path: shop.duckdb}
inputs: [ticket, customer_id]
nodes:
  - id: classify
    kind: llm
    model: small
    system: "You are a support triage assistant."
    prompt: "Ticket: {{ ticket }}\\nAnswer with one word: billing, bug or other."
    choices: [billing, bug, other]
    max_tokens: 4
    temperature: 0
  - id: history
    kind: sql
    db: shop
    query: "SELECT count(*) AS n FROM orders WHERE customer = :cid"
    params: {cid: "{{ customer_id }}"}
  - id: profile
    kind: http
    method: GET
    url: "http://127.0.0.1:8765/customers/{{ customer_id }}"
    timeout_s: 10
  - id: reply
    kind: llm
    model: small
    prompt: |
      Category: {{ classify.output }}. Orders: {{ history.rows[0].n }}. Profile: {{ profile.output }}
      Write a one-sentence reply to: {{ ticket }}
    max_tokens: 48
outputs: {category: classify.output, reply: reply.output}
"""


from test_examples import ticket_triage as triage_builder  # noqa: E402  (one builder, shared)


def test_yaml_and_builder_are_equal():
    from_yaml = Workflow.from_yaml(TRIAGE)
    built = triage_builder()
    assert built == from_yaml
    assert built.spec == from_yaml.spec
    assert built.graph == from_yaml.graph
    assert Workflow.from_yaml(built.to_yaml()) == built


def test_builder_is_immutable():
    base = Workflow("x").inputs("a")
    extended = base.llm("n", prompt="{{ a }}")
    assert "nodes" not in base._doc
    assert extended.spec.nodes[0].id == "n"


def test_triage_dependencies_come_from_template_references():
    graph = Workflow.from_yaml(TRIAGE).graph
    assert [n.id for n in graph.nodes] == ["classify", "history", "profile", "reply"]
    reply = graph.node("reply")
    assert reply.inputs == ("ticket",)
    assert [b.name for b in reply.bindings] == ["classify", "history", "profile"]
    assert not reply.renderable and graph.node("classify").renderable
    assert graph.node("history").inputs == ("customer_id",)


def test_attribute_chains_name_the_field():
    refs = template_references(
        make_environment(),
        "{{ history.rows[0].n }} {{ a['b'] }} {{ c[k] }} {% for r in d.rows %}{{ r.x }}{% endfor %}",
    )
    assert refs == {
        Reference("history", "rows"),
        Reference("a", "b"),
        Reference("c", DYNAMIC_FIELD),
        Reference("k"),
        Reference("d", "rows"),
    }


def test_spec_without_models_uses_the_default_model():
    wf = Workflow.from_yaml("name: t\ninputs: [q]\nnodes:\n  - {id: a, kind: llm, prompt: '{{ q }}'}\n")
    assert wf.spec.models == {}
    assert wf.graph.model_source(wf.graph.node("a")) == DEFAULT_MODEL
    assert Workflow.from_yaml(
        f"name: t\nnodes:\n  - {{id: a, kind: llm, model: {DEFAULT_MODEL}, prompt: hi}}\n"
    )


def test_embedded_tool_calls_are_decoupled():
    wf = Workflow.from_yaml(
        """\
name: t
databases: {kb: {path: kb.duckdb}}
inputs: [q]
nodes:
  - id: answer
    kind: llm
    prompt: "Facts: {{ facts.rows }} {{ answer_http1.json }} Question: {{ q }}"
    sql:
      - {id: facts, db: kb, query: "SELECT f FROM facts WHERE topic = :t", params: {t: "{{ q }}"}}
    http:
      - {url: "https://example.test/search?q={{ q }}"}
"""
    )
    graph = wf.graph
    assert [n.id for n in graph.nodes] == ["facts", "answer_http1", "answer"]
    answer = graph.node("answer")
    assert answer.after == ("facts", "answer_http1")
    assert {b.name for b in answer.bindings} == {"facts", "answer_http1"}
    facts = graph.node("facts")
    assert facts.kind == "sql" and facts.parent == "answer" and facts.renderable
    assert graph.render(facts, {"q": "owls"})["params"] == {"t": "owls"}


def test_loop_unrolls_with_iteration_ids_and_guards():
    wf = Workflow.from_yaml(
        """\
name: refine
inputs: [topic]
nodes:
  - id: draft
    kind: llm
    prompt: "{{ topic }}{% if iteration > 1 %} {{ critique.output }}{% endif %}"
  - id: critique
    kind: llm
    prompt: "Critique {{ draft.output }}"
  - id: final
    kind: rule
    input: "{{ draft.output }}"
    regex: "(.+)"
loops:
  - {nodes: [draft, critique], max_iterations: 3, until: "'OK' in critique.output"}
outputs: {text: final.output}
"""
    )
    graph = wf.graph
    ids = [n.id for n in graph.nodes]
    assert ids == ["draft#1", "critique#1", "draft#2", "critique#2", "draft#3", "critique#3", "final"]
    assert graph.node("draft#1").bindings == ()
    assert graph.node("draft#2").bindings == (Binding("critique", ("critique#1",)),)
    assert graph.node("critique#2").bindings == (Binding("draft", ("draft#2",)),)
    assert [g.iteration for g in graph.node("critique#3").guards] == [1, 2]
    assert graph.node("final").bindings == (Binding("draft", ("draft#3", "draft#2", "draft#1")),)
    assert graph.outputs[0].binding == Binding("final", ("final",))
    # iteration 1 reads no critique; the template guards itself with `iteration`
    assert graph.render(graph.node("draft#1"), {"topic": "owls"})["prompt"] == "owls"
    rendered = graph.render(graph.node("draft#2"), {"topic": "owls"}, {"critique#1": {"output": "more"}})
    assert rendered["prompt"] == "owls more"
    # outside the loop, the latest iteration that ran supplies the value
    final = graph.render(graph.node("final"), {}, {"draft#1": {"output": "a"}, "draft#2": {"output": "b"}})
    assert final["input"] == "b"


def test_missing_variable_at_render_time_names_node_and_variable():
    graph = Workflow.from_yaml(TRIAGE).graph
    with pytest.raises(TemplateRenderError) as caught:
        graph.render(graph.node("reply"), {"ticket": "x"}, {"classify": {"output": "bug"}})
    assert caught.value.node == "reply"
    assert "'history' is undefined" in str(caught.value)


def test_templates_are_sandboxed():
    wf = Workflow.from_yaml(
        "name: t\ninputs: [q]\nnodes:\n  - {id: a, kind: llm, prompt: '{{ q.__class__ }}'}\n"
    )
    with pytest.raises(TemplateRenderError, match="unsafe"):
        wf.graph.render(wf.graph.node("a"), {"q": "x"})
    mutate = Workflow.from_yaml(
        "name: t\ninputs: [q]\nnodes:\n  - {id: a, kind: llm, prompt: '{{ q.append(1) }}'}\n"
    )
    with pytest.raises(TemplateRenderError, match="unsafe"):
        mutate.graph.render(mutate.graph.node("a"), {"q": [1]})


def test_native_parameters_keep_their_type():
    graph = Workflow.from_yaml(TRIAGE).graph
    assert graph.render(graph.node("history"), {"customer_id": 42})["params"] == {"cid": 42}


def test_python_callable_registered_by_builder():
    def score(text: str) -> int:
        return len(text)

    wf = Workflow("t").inputs("q").python("s", function=score, args=["{{ q }}"], pure=True)
    assert wf.spec.nodes[0].function.endswith(":test_python_callable_registered_by_builder.<locals>.score")
    assert score in wf.functions.values()
    with pytest.raises(SpecError, match="neither registered"):
        Workflow.from_yaml("name: t\nnodes:\n  - {id: s, kind: python, function: score}\n")
    ok = Workflow.from_yaml(
        "name: t\nnodes:\n  - {id: s, kind: python, function: score}\n", functions={"score": score}
    )
    assert ok.spec.nodes[0].function == "score"


def test_placeholders_after_dollar_quotes_are_found():
    from halo.spec.sql_statement import lex

    assert lex("select $$ :not_me $$, :id").placeholders == ["id"]
    assert lex("select $t$ :not_me $t$, :id").placeholders == ["id"]
