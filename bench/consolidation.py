"""Consolidation benchmark: 10,000 rows of a 17-node support workflow, tokenization included.

    python bench/consolidation.py [--rows 10000] [--seed 0] [--whitespace]

Prints the time of each phase (graph build, consolidation without and with the tokenizer) and the
consolidation counters. Uses the real SmolLM2 tokenizer (halo.engine.tokenizer) when it loads, else
says so and falls back to the whitespace tokenizer. Target: under 2 s for 10,000 rows on 2 cores.
"""

from __future__ import annotations

import argparse
import os
import platform
import random
import statistics
import time
from typing import Any

from halo.plan import Consolidator, WhitespaceTokenizer, explain_text
from halo.spec import Workflow

WORKFLOW = """\
name: support-17
models:
  small: {source: smollm2-135m}
databases:
  shop: {kind: duckdb, path: shop.duckdb}
inputs: [ticket, customer_id, product, locale, plan]
nodes:
  - id: language
    kind: llm
    model: small
    system: "You detect the language of a text. Answer with an ISO 639-1 code."
    prompt: "Text: {{ ticket }}"
    max_tokens: 2
  - id: category
    kind: llm
    model: small
    system: "You are a support triage assistant for an online shop.
      Categories: billing, shipping, bug, account, other."
    prompt: "Ticket: {{ ticket }}\\nAnswer with one category."
    max_tokens: 3
  - id: urgency
    kind: llm
    model: small
    system: "You are a support triage assistant for an online shop.
      Rate urgency from 1 (low) to 5 (critical)."
    prompt: "Ticket: {{ ticket }}\\nCustomer plan: {{ plan }}\\nUrgency:"
    max_tokens: 2
  - id: sentiment
    kind: llm
    model: small
    system: "You classify customer sentiment as positive, neutral or negative."
    prompt: "{{ ticket }}"
    max_tokens: 2
  - id: product_facts
    kind: sql
    db: shop
    query: "SELECT name, warranty_months, known_issues FROM products WHERE sku = :sku"
    params: {sku: "{{ product }}"}
  - id: orders
    kind: sql
    db: shop
    query: "SELECT count(*) AS n, max(placed_at) AS last FROM orders WHERE customer = :cid"
    params: {cid: "{{ customer_id }}"}
  - id: refunds
    kind: sql
    db: shop
    query: "SELECT count(*) AS n FROM refunds WHERE customer = :cid AND sku = :sku"
    params: {cid: "{{ customer_id }}", sku: "{{ product }}"}
  - id: profile
    kind: http
    url: "http://127.0.0.1:8765/customers/{{ customer_id }}"
    timeout_s: 5
  - id: status_page
    kind: http
    url: "http://127.0.0.1:8765/status"
    params: {product: "{{ product }}"}
  - id: order_number
    kind: rule
    input: "{{ ticket }}"
    regex: "#(\\\\d{5})"
    group: 1
  - id: normalized_locale
    kind: python
    function: "locale:normalize"
    args: ["{{ locale }}"]
    pure: true
  - id: summary
    kind: llm
    model: small
    system: "You summarise support tickets in one short sentence."
    prompt: "Category: {{ category.output }}\\nTicket: {{ ticket }}"
    max_tokens: 24
  - id: policy
    kind: llm
    model: small
    system: "You apply the shop's refund policy: refunds within the warranty, at most two per product."
    prompt: |-
      Product: {{ product_facts.rows | tojson }}
      Refunds so far: {{ refunds.rows[0].n }}
      Category: {{ category.output }}
    max_tokens: 16
  - id: escalate
    kind: rule
    input: "{{ urgency.output }}"
    regex: "([45])"
    default: "no"
  - id: reply
    kind: llm
    model: small
    system: "You write friendly, concise replies to customers of an online shop."
    prompt: |
      Summary: {{ summary.output }}
      Policy: {{ policy.output }}
      Orders: {{ orders.rows[0].n }}. Profile: {{ profile.output }}. Status: {{ status_page.output }}
      Order number: {{ order_number.output }}
      Reply in {{ language.output }} to: {{ ticket }}
    max_tokens: 96
  - id: tone_check
    kind: llm
    model: small
    system: "You check that a reply is polite. Answer ok or rewrite."
    prompt: "Sentiment of customer: {{ sentiment.output }}\\nReply: {{ reply.output }}"
    max_tokens: 8
  - id: ticket_record
    kind: python
    function: "json:dumps"
    args:
      - "{{ {'category': category.output, 'urgency': urgency.output,
             'escalate': escalate.output, 'locale': normalized_locale.output} }}"
    pure: true
outputs:
  reply: reply.output
  tone: tone_check.output
  record: ticket_record.output
"""

ISSUES = [
    "I was charged twice for order #{order} and need a refund.",
    "The {product} stopped working after {days} days. Order #{order}.",
    "My parcel for order #{order} has not arrived yet, it has been {days} days.",
    "I cannot log in to my account since the last update.",
    "Where can I download the invoice for order #{order}?",
    "The app crashes when I open the settings page on my phone.",
    "Can I change the delivery address of order #{order}?",
    "The {product} arrived damaged, the box was crushed.",
]


def make_rows(count: int, seed: int) -> list[dict[str, Any]]:
    """Synthetic tickets: a few templates, a long tail of orders, and ~30% exact repeats."""
    rng = random.Random(seed)
    products = [f"SKU-{i:04d}" for i in range(60)]
    rows: list[dict[str, Any]] = []
    for _ in range(count):
        if rows and rng.random() < 0.3:
            rows.append(dict(rng.choice(rows)))
            continue
        product = rng.choice(products)
        text = rng.choice(ISSUES).format(
            order=rng.randint(10000, 99999), product=product, days=rng.randint(2, 30)
        )
        rows.append(
            {
                "ticket": text,
                "customer_id": rng.randint(1, 3000),
                "product": product,
                "locale": rng.choice(["en_US", "de_DE", "fr_FR", "es_ES", "nl_NL"]),
                "plan": rng.choice(["free", "plus", "pro"]),
            }
        )
    return rows


def load_tokenizer(whitespace: bool) -> tuple[Any, str]:
    if whitespace:
        return WhitespaceTokenizer(), "whitespace (requested)"
    try:
        from halo.engine.gguf_checkpoint import load_gguf_tokenizer
        from halo.engine.model_source import resolve_model_path

        return load_gguf_tokenizer(resolve_model_path("smollm2-135m")), "SmolLM2 (halo.engine.tokenizer)"
    except Exception as exc:  # noqa: BLE001 - any failure means: report it and use the stand-in
        return WhitespaceTokenizer(), f"whitespace (real tokenizer unavailable: {type(exc).__name__}: {exc})"


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as handle:
            for line in handle:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=10_000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--whitespace", action="store_true", help="use the whitespace tokenizer")
    parser.add_argument("--explain", action="store_true", help="print the EXPLAIN table")
    parser.add_argument("--repeat", type=int, default=3, help="timed runs (the machine is shared: noisy)")
    args = parser.parse_args()

    print(f"cpu: {cpu_name()} ({os.cpu_count()} logical cores visible)")
    rows = make_rows(args.rows, args.seed)
    tokenizer, tokenizer_name = load_tokenizer(args.whitespace)
    print(f"tokenizer: {tokenizer_name}")

    start = time.perf_counter()
    workflow = Workflow.from_yaml(WORKFLOW)
    graph = workflow.graph
    parsed = time.perf_counter()
    print(f"parse + validate + unroll: {parsed - start:.3f} s ({len(graph.nodes)} graph nodes)")

    plain = Consolidator(graph).consolidate(rows)
    no_tokens = time.perf_counter()
    print(f"consolidate {len(rows)} rows, no tokenizer: {no_tokens - parsed:.3f} s")

    consolidator = Consolidator(graph, tokenizer)
    times = []
    for _ in range(max(1, args.repeat)):
        begin = time.perf_counter()
        result = consolidator.consolidate(rows)
        times.append(time.perf_counter() - begin)
        print(f"consolidate {len(rows)} rows with tokenization + prefix index: {times[-1]:.3f} s")
        print(
            "  phases: " + ", ".join(f"{phase} {seconds:.3f} s" for phase, seconds in result.timings.items())
        )
    total = min(times)
    print(
        f"best of {len(times)}: {total:.3f} s, median {statistics.median(times):.3f} s; load average "
        f"{os.getloadavg()[0]:.1f} on {os.cpu_count()} cores"
    )
    print(
        f"calls logical={result.logical_calls} physical={result.physical_calls}; prompt tokens "
        f"total={result.prompt_tokens_total} unique={result.prompt_tokens_unique}"
    )
    assert plain.physical_calls == result.physical_calls
    verdict = "PASS" if total < 2.0 else "over"
    print(f"RESULT consolidation_10k_s={total:.3f} target=2.0 {verdict}")
    if args.explain:
        print(explain_text(result))


if __name__ == "__main__":
    main()
