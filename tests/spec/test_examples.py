"""The example workflows parse, validate, accept their batches, and equal their builder versions."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from halo.spec import Workflow

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def ticket_triage() -> Workflow:
    return (
        Workflow("ticket-triage")
        .model("small", source="smollm2-135m")
        .database("shop", kind="duckdb", path="shop.duckdb")
        .inputs("ticket", "customer_id")
        .llm(
            "classify",
            model="small",
            system="You are a support triage assistant.",
            prompt="Ticket: {{ ticket }}\nAnswer with one word: billing, bug or other.",
            choices=["billing", "bug", "other"],
            max_tokens=4,
            temperature=0,
        )
        .sql(
            "history",
            db="shop",
            query="SELECT count(*) AS n FROM orders WHERE customer = :cid",
            params={"cid": "{{ customer_id }}"},
        )
        .http("profile", method="GET", url="http://127.0.0.1:8765/customers/{{ customer_id }}", timeout_s=10)
        .llm(
            "reply",
            model="small",
            prompt="Category: {{ classify.output }}. Orders: {{ history.rows[0].n }}. "
            "Profile: {{ profile.output }}\nWrite a one-sentence reply to: {{ ticket }}\n",
            max_tokens=48,
        )
        .outputs(category="classify.output", reply="reply.output")
    )


def invoice_audit() -> Workflow:
    return (
        Workflow("invoice-audit")
        .database("erp", init="data/erp.sql")
        .inputs("invoice_text", "amount")
        .llm(
            "extract",
            system="You extract fields from invoices. Answer in JSON.",
            prompt="Invoice:\n{{ invoice_text }}\nWhat is the vendor name?",
            json_schema={
                "type": "object",
                "properties": {"vendor": {"type": "string", "maxLength": 40}},
                "required": ["vendor"],
                "additionalProperties": False,
            },
            max_tokens=24,
        )
        .sql(
            "vendor_record",
            db="erp",
            query="SELECT name, approved, max_invoice\nFROM vendors\n"
            "WHERE lower(name) = lower(trim(:vendor))\nLIMIT 1\n",
            params={"vendor": "{{ extract.json.vendor }}"},
        )
        .llm(
            "verdict",
            system="You are an accounts-payable auditor.",
            prompt="Vendor record: {{ vendor_record.rows | tojson }}\nInvoice amount: {{ amount }}\n"
            "Invoice:\n{{ invoice_text }}\n"
            "Approve only an approved vendor's invoice within its max_invoice. Reply APPROVE or REJECT.\n",
            choices=["APPROVE", "REJECT"],
            max_tokens=4,
        )
        .llm(
            "reasons",
            system="You are an accounts-payable auditor. Be brief.",
            prompt="Invoice from {{ extract.json.vendor }} for {{ amount }}. "
            "Vendor record: {{ vendor_record.rows | tojson }}\n"
            "The auditor's decision: {{ verdict.output }}. In one sentence, why?\n",
            max_tokens=40,
            stop=["\n"],
        )
        .outputs(vendor="extract.json.vendor", verdict="verdict.output", reasons="reasons.output")
    )


def review_voting() -> Workflow:
    prompt = "Product: {{ product }}\nReview: {{ review }}\nLabel:"
    labels = "You label product reviews. Answer positive, negative or mixed."
    judges = ("judge_strict", "judge_lenient", "judge_sampled")
    ballot = ", ".join(f"{j}.output | trim | lower" for j in judges)
    return (
        Workflow("review-voting")
        .inputs("product", "review")
        .llm("judge_strict", system=f"{labels} Be strict.", prompt=prompt, max_tokens=3)
        .llm("judge_lenient", system=f"{labels} Give the benefit of the doubt.", prompt=prompt, max_tokens=3)
        .llm("judge_sampled", system=labels, prompt=prompt, max_tokens=3, temperature=0.7, seed=7)
        .python("vote", function="statistics:mode", args=["{{ [" + ballot + "] }}"], pure=True)
        .outputs(
            label="vote.output",
            strict="judge_strict.output",
            lenient="judge_lenient.output",
            sampled="judge_sampled.output",
        )
    )


def essay_refine() -> Workflow:
    return (
        Workflow("essay-refine")
        .inputs("topic", "audience")
        .llm(
            "draft",
            system="You write short, clear paragraphs.",
            prompt="Write one paragraph about {{ topic }} for {{ audience }}.\n"
            "{% if iteration > 1 %}Revise your previous draft:\n{{ draft.output }}\n"
            "following this critique:\n{{ critique.output }}{% endif %}\n",
            max_tokens=120,
        )
        .llm(
            "critique",
            system="You are an editor. Reply LGTM if the paragraph needs no change, else list fixes.",
            prompt="Paragraph for {{ audience }}:\n{{ draft.output }}",
            max_tokens=60,
        )
        .python(
            "teaser",
            function="textwrap:shorten",
            args=["{{ draft.output }}"],
            kwargs={"width": 80, "placeholder": " ..."},
            pure=True,
        )
        .loop(["draft", "critique"], max_iterations=3, until="'LGTM' in critique.output")
        .outputs(essay="draft.output", teaser="teaser.output", last_critique="critique.output")
    )


BUILDERS = {
    "ticket_triage": ticket_triage,
    "invoice_audit": invoice_audit,
    "review_voting": review_voting,
    "essay_refine": essay_refine,
}


def load_rows(name: str) -> list[dict]:
    with open(EXAMPLES / f"{name}.jsonl") as handle:
        return [json.loads(line) for line in handle if line.strip()]


def test_every_example_has_a_builder():
    assert {p.stem for p in EXAMPLES.glob("*.yaml")} == set(BUILDERS)


@pytest.mark.parametrize("name", sorted(BUILDERS))
def test_example_parses_validates_and_equals_builder(name: str):
    from_yaml = Workflow.from_yaml(EXAMPLES / f"{name}.yaml")
    built = BUILDERS[name]()
    assert built.spec == from_yaml.spec
    assert built == from_yaml
    assert built.graph == from_yaml.graph
    rows = load_rows(name)
    assert from_yaml.check_batch(rows) == len(rows)


def test_loop_example_unrolls():
    graph = Workflow.from_yaml(EXAMPLES / "essay_refine.yaml").graph
    assert [n.id for n in graph.nodes][-1] == "teaser"
    assert graph.node("teaser").bindings[0].candidates == ("draft#3", "draft#2", "draft#1")
    assert len(graph.node("draft#3").guards) == 2


def test_voting_example_fans_in():
    graph = Workflow.from_yaml(EXAMPLES / "review_voting.yaml").graph
    vote = graph.node("vote")
    assert [b.name for b in vote.bindings] == ["judge_lenient", "judge_sampled", "judge_strict"]
    results = {
        j: {"output": f" {label} "}
        for j, label in [("judge_strict", "Mixed"), ("judge_lenient", "positive"), ("judge_sampled", "mixed")]
    }
    assert graph.render(vote, {}, results)["args"] == [["mixed", "positive", "mixed"]]
