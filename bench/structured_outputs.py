"""Structured outputs on this machine: classification three ways, JSON extraction with and without jump-forward.

Run: ``.venv/bin/python bench/structured_outputs.py [--model NAME] [--dtype auto|bf16|fp32] [--repeat 3]
[--batch1-prompts 64] [--threads N] [--json out.json]``.

Engine level (`LLMEngine.generate` on whole batches, chat-template prompts), the default model unless
``--model``. Every timed run starts with a cold prefix cache and fresh counters; wall times are the
best of ``--repeat`` runs and the counters are that run's (they do not vary between runs).

1. Classification: 64 fixed support tickets (16 written for each of billing, bug, shipping, other;
   the prompt names the categories and gives four worked examples) classified by free greedy
   decoding (``--free-max-tokens`` tokens, the text mapped to a label when exactly one label occurs
   in it as a word), by constrained greedy decoding (``choices``), and by choice scoring
   (``choice_mode="score"``, prefill only). Per mode: wall time, engine steps, prefill and decode
   tokens, the share of outputs that are not exactly a label, unparseable ones, agreement with the
   label each ticket was written for; then the pairwise agreement between the modes.
2. JSON extraction: 64 invoice texts, a four-field schema (vendor, total, currency, date), constrained
   decoding with jump-forward on and off (two engines on one loaded checkpoint): engine steps (set by
   the longest output of the batch), tokens sampled (the decode steps the sequences ran), tokens
   jump-forward appended, decode steps saved, wall time, whether the two give equal parsed
   documents; and the mask overhead (``mask_seconds`` and ``grammar_seconds`` as shares of
   ``step_seconds``) at batch 64 (all at once) and at batch 1 (``--batch1-prompts`` of them, one at a
   time, jump-forward on, one pass), against issue 18's target of <= 10% at batch 64.

Ratios are meant within one run: the machine facts and the load average before and after are printed.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from halo.engine import LLMEngine, SamplingParams
from halo.engine.checkpoint import load_checkpoint
from halo.engine.output_format import OutputFormat

LABELS = ("billing", "bug", "shipping", "other")
MASK_TARGET = 0.10  # issue 18: mask overhead <= 10% of step time at batch 64

TICKETS: dict[str, list[str]] = {
    "billing": [
        "I was charged twice for my subscription this month.",
        "Please refund the annual fee, I cancelled in January.",
        "My invoice shows the wrong company name.",
        "Why did my monthly price go up without notice?",
        "The payment failed but my card was still debited.",
        "Can I switch from monthly to yearly billing?",
        "I need a VAT receipt for my last order.",
        "You charged my old credit card instead of the new one.",
        "The discount code was not applied to my bill.",
        "How do I update the billing address on my account?",
        "I was billed for a plan I never signed up for.",
        "My refund from last week has not shown up yet.",
        "Please cancel the automatic renewal before it charges me.",
        "There is an unknown charge of 49 dollars on my statement.",
        "Can you split the invoice between two departments?",
        "The tax on my invoice looks too high.",
    ],
    "bug": [
        "The app crashes every time I open the settings page.",
        "Login button does nothing on Firefox.",
        "Search results are empty even for products that exist.",
        "The page freezes after I upload a photo.",
        "Notifications arrive twice on my phone.",
        "I get error 500 when saving my profile.",
        "Dark mode makes the text invisible on the checkout page.",
        "The export to CSV produces an empty file.",
        "Password reset link says it has expired immediately.",
        "The calendar shows the wrong time zone after the update.",
        "Images do not load in the mobile app since version 3.2.",
        "The cart total does not update when I remove an item.",
        "Clicking 'next' on the survey takes me back to the start.",
        "The app logs me out every few minutes.",
        "Sorting by price puts expensive items first when I choose cheapest.",
        "The chat window overlaps the send button on small screens.",
    ],
    "shipping": [
        "My package has not arrived after two weeks.",
        "The tracking number you sent does not work.",
        "The parcel was delivered to the wrong address.",
        "Can I change the delivery address of my order?",
        "The box arrived damaged and the mug is broken.",
        "Do you ship to Canada?",
        "The courier says my parcel is stuck at customs.",
        "My order shows delivered but I never received it.",
        "How long does express delivery take?",
        "Only two of the three items in my order arrived.",
        "Can the delivery be left with my neighbour?",
        "The shipment has been at the depot for five days.",
        "I want to pick up my order at the store instead of delivery.",
        "The delivery driver never rang the bell.",
        "Is there free shipping on orders over 50 euros?",
        "My package was returned to sender by mistake.",
    ],
    "other": [
        "Do you have a store in Berlin?",
        "I love your products, keep up the good work!",
        "Are you hiring software engineers?",
        "What are your opening hours on Sunday?",
        "Can I get a catalogue of your spring collection?",
        "Do you offer gift wrapping?",
        "I would like to partner with your company.",
        "Is your packaging recyclable?",
        "Who designed your new logo?",
        "Do you have a student discount programme?",
        "Can I visit your warehouse with my class?",
        "What is your position on animal testing?",
        "I want to write a review of your shop for my blog.",
        "Do you sponsor local sports teams?",
        "How do I subscribe to your newsletter?",
        "Is there a loyalty programme for regular customers?",
    ],
}

TRIAGE_SYSTEM = (
    "You are a support triage assistant. Categories: billing (charges, invoices, refunds, payments), "
    "bug (the app or website does not work), shipping (deliveries, parcels, tracking), other (anything else)."
)

VENDORS = [
    "ACME Tools Ltd",
    "Northwind Traders",
    "Globex Corporation",
    "Initech Software",
    "Umbrella Supplies",
    "Stark Office Furniture",
    "Wayne Logistics",
    "Blue Harbor Catering",
    "Pine Street Printing",
    "Redwood Consulting",
    "Silver Lake Cleaning",
    "Orion Electric",
    "Maple Leaf Movers",
    "Summit IT Services",
    "Golden Gate Bakery",
    "Atlas Security",
]
CURRENCIES = ("USD", "EUR", "GBP")
MONTHS = ("January", "February", "March", "April", "May", "June", "July", "August", "September", "October")
INVOICE_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "vendor": {"type": "string", "maxLength": 40},  # a bound, so a looping name cannot eat max_tokens
        "total": {"type": "number"},
        "currency": {"type": "string", "enum": list(CURRENCIES)},
        "date": {"type": "string", "pattern": r"^\d{4}-\d{2}-\d{2}$"},
    },
    "required": ["vendor", "total", "currency", "date"],
    "additionalProperties": False,
}


@dataclass(frozen=True)
class Invoice:
    text: str
    fields: dict[str, Any]  # what the text says, in the schema's terms


def invoices() -> list[Invoice]:
    """64 invoice texts in four phrasings (16 vendors each), amounts, currencies and dates from the index."""
    out = []
    for i in range(64):
        vendor = VENDORS[i % 16]
        total = round(40 + (i * 137.5) % 2900 + (i % 7) * 0.25, 2)
        currency = CURRENCIES[i % 3]
        year, month, day = 2023 + i % 2, 1 + i % 10, 1 + (i * 7) % 28
        iso = f"{year}-{month:02d}-{day:02d}"
        human = f"{MONTHS[month - 1]} {day}, {year}"
        phrasing = (
            f"Invoice from {vendor}, dated {iso}. Amount due: {total:.2f} {currency}.",
            f"{vendor} billed us {currency} {total:.2f} on {human} for services rendered.",
            f"Receipt no. {1000 + i}: {vendor}, total {total:.2f} ({currency}), issued {iso}.",
            f"Payment request of {human} from {vendor}: please pay {total:.2f} {currency} within 30 days.",
        )[i // 16]
        out.append(Invoice(phrasing, {"vendor": vendor, "total": total, "currency": currency, "date": iso}))
    return out


TRIAGE_EXAMPLES = (
    "Answer with one word: billing, bug, shipping or other.\n"
    "Ticket: I was charged twice. -> billing\n"
    "Ticket: The app crashes on start. -> bug\n"
    "Ticket: Where is my parcel? -> shipping\n"
    "Ticket: Do you sell gift cards? -> other\n"
)


def triage_prompt(ticket: str) -> list[dict[str, str]]:
    """System prompt with the categories, four worked examples (not among the tickets), then the ticket."""
    user = f"{TRIAGE_EXAMPLES}Ticket: {ticket} ->"
    return [{"role": "system", "content": TRIAGE_SYSTEM}, {"role": "user", "content": user}]


def invoice_prompt(text: str) -> list[dict[str, str]]:
    user = f"Extract the vendor, total, currency and date (YYYY-MM-DD) of this invoice as JSON.\n\n{text}"
    return [{"role": "user", "content": user}]


# ---- pure helpers (tests/bench/test_structured_outputs_bench.py) -------------------------------------
def label_of(text: str, labels: Sequence[str] = LABELS) -> str | None:
    """The label a free-text answer names: the one label occurring in it as a word (any case), else None
    (no label, or several, as when the model repeats the list of options)."""
    words = set(re.findall(r"[a-z]+", text.lower()))
    found = [label for label in labels if label in words]
    return found[0] if len(found) == 1 else None


def is_exact_label(text: str, labels: Sequence[str] = LABELS) -> bool:
    """Whether the text is a label itself, up to case, surrounding blanks and a final full stop."""
    return text.strip().rstrip(".").strip().lower() in labels


def agreement(a: Sequence[str | None], b: Sequence[str | None]) -> float:
    """Share of positions with the same label; an unparseable answer (None) agrees with nothing."""
    if len(a) != len(b) or not a:
        raise ValueError(f"agreement needs two equally long, non-empty label lists, got {len(a)} and {len(b)}")
    return sum(x is not None and x == y for x, y in zip(a, b, strict=True)) / len(a)


def parsed(text: str) -> Any | None:
    """The JSON document a constrained output holds, or None when it does not parse (a truncated one)."""
    try:
        return json.loads(text)
    except ValueError:
        return None


def field_accuracy(docs: Sequence[Any | None], truth: Sequence[dict[str, Any]]) -> float:
    """Share of (document, field) pairs equal to the invoice's own value; a missing document counts wrong."""
    pairs = [(d, t) for d, t in zip(docs, truth, strict=True)]
    hits = sum(isinstance(d, dict) and d.get(k) == v for d, t in pairs for k, v in t.items())
    return hits / sum(len(t) for t in truth)


def share(part: float, whole: float) -> float:
    return part / whole if whole > 0 else 0.0


def markdown_table(head: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


# ---- measurements -------------------------------------------------------------------------------------
@dataclass
class Run:
    """One timed batch: wall seconds and the engine's counters over it."""

    wall_s: float
    stats: dict[str, Any]
    texts: list[str]
    complete: int  # outputs with output_complete


def timed(engine: LLMEngine, prompts: list, params: SamplingParams, repeat: int) -> Run:
    """Best of ``repeat`` cold-cache runs of one batch."""
    best: Run | None = None
    for _ in range(repeat):
        engine.reset_prefix_cache()
        engine.reset_stats()
        t0 = time.perf_counter()
        results = engine.generate(prompts, params)
        wall = time.perf_counter() - t0
        run = Run(wall, engine.stats().as_dict(), [r.text for r in results], sum(r.output_complete for r in results))
        if best is None or run.wall_s < best.wall_s:
            best = run
    assert best is not None
    return best


def one_at_a_time(engine: LLMEngine, prompts: list, params: SamplingParams) -> Run:
    """Every prompt alone (batch 1), counters summed over them; one pass, cold prefix cache."""
    engine.reset_prefix_cache()
    engine.reset_stats()
    texts, complete = [], 0
    t0 = time.perf_counter()
    for p in prompts:
        (r,) = engine.generate([p], params)
        texts.append(r.text)
        complete += r.output_complete
    return Run(time.perf_counter() - t0, engine.stats().as_dict(), texts, complete)


@dataclass
class ClassifyRow:
    mode: str
    wall_s: float
    steps: int
    prefill_tokens: int
    decode_tokens: int
    not_exact_label: float
    unparseable: float
    accuracy: float
    labels: list[str | None] = field(repr=False)


def classify(engine: LLMEngine, args: argparse.Namespace) -> tuple[list[ClassifyRow], dict[str, float]]:
    truth = [label for label in LABELS for _ in TICKETS[label]]
    prompts = [triage_prompt(t) for label in LABELS for t in TICKETS[label]]
    fmt = OutputFormat.of_choices(LABELS)
    modes = {
        "free": SamplingParams(max_tokens=args.free_max_tokens),
        "choices greedy": SamplingParams(max_tokens=args.free_max_tokens, output_format=fmt),
        "choices score": SamplingParams(output_format=fmt, choice_mode="score"),
    }
    engine.generate(prompts[:2], list(modes.values())[1:])  # compile the format, build its lexer: untimed
    rows = []
    for mode, params in modes.items():
        run = timed(engine, prompts, params, args.repeat)
        labels = [label_of(t) for t in run.texts]
        s = run.stats
        rows.append(
            ClassifyRow(
                mode,
                run.wall_s,
                s["steps"],
                s["prefill_tokens"],
                s["decode_tokens"],
                1 - sum(map(is_exact_label, run.texts)) / len(run.texts),
                labels.count(None) / len(labels),
                agreement(labels, truth),
                labels,
            )
        )
    pairs = {f"{a.mode} / {b.mode}": agreement(a.labels, b.labels) for i, a in enumerate(rows) for b in rows[i + 1 :]}
    return rows, pairs


@dataclass
class JsonRow:
    case: str
    batch: int
    wall_s: float
    steps: int
    generated_tokens: int
    decode_tokens: int
    jump_forward_tokens: int
    decode_steps_saved: int
    mask_share: float
    grammar_share: float
    complete: int
    field_accuracy: float


def json_row(case: str, batch: int, run: Run, truth: list[dict[str, Any]]) -> JsonRow:
    s = run.stats
    return JsonRow(
        case,
        batch,
        run.wall_s,
        s["steps"],
        s["generated_tokens"],
        s["decode_tokens"],
        s["jump_forward_tokens"],
        s["decode_steps_saved"],
        share(s["mask_seconds"], s["step_seconds"]),
        share(s["grammar_seconds"], s["step_seconds"]),
        run.complete,
        field_accuracy([parsed(t) for t in run.texts], truth[: len(run.texts)]),
    )


def extract(on: LLMEngine, off: LLMEngine, args: argparse.Namespace) -> tuple[list[JsonRow], dict[str, Any]]:
    data = invoices()
    prompts = [invoice_prompt(inv.text) for inv in data]
    truth = [inv.fields for inv in data]
    params = SamplingParams(max_tokens=args.json_max_tokens, output_format=OutputFormat.of_json(INVOICE_SCHEMA))
    for engine in (on, off):
        engine.generate(prompts[:2], params)  # compile, build the lexer lazily: untimed
    run_on = timed(on, prompts, params, args.repeat)
    run_off = timed(off, prompts, params, args.repeat)
    alone = one_at_a_time(on, prompts[: args.batch1_prompts], params)
    rows = [
        json_row("jump-forward on", len(prompts), run_on, truth),
        json_row("jump-forward off", len(prompts), run_off, truth),
        json_row("jump-forward on, one at a time", 1, alone, truth),
    ]
    docs_on, docs_off = [parsed(t) for t in run_on.texts], [parsed(t) for t in run_off.texts]
    same = {
        "texts": sum(a == b for a, b in zip(run_on.texts, run_off.texts, strict=True)),
        "parsed": sum(a is not None and a == b for a, b in zip(docs_on, docs_off, strict=True)),
        "of": len(prompts),
    }
    return rows, same


# ---- report -------------------------------------------------------------------------------------------
def classify_table(rows: Sequence[ClassifyRow], pairs: dict[str, float]) -> str:
    head = ["mode", "wall s", "steps", "prefill tok", "decode tok", "not a label", "unparseable", "= written label"]
    cells = [
        [
            r.mode,
            f"{r.wall_s:.2f}",
            str(r.steps),
            str(r.prefill_tokens),
            str(r.decode_tokens),
            f"{r.not_exact_label:.0%}",
            f"{r.unparseable:.0%}",
            f"{r.accuracy:.0%}",
        ]
        for r in rows
    ]
    agree = "agreement: " + ", ".join(f"{k} {v:.0%}" for k, v in pairs.items())
    base = rows[0]
    speed = "wall vs free: " + ", ".join(f"{r.mode} {share(base.wall_s, r.wall_s):.2f}x" for r in rows[1:])
    return "\n".join([markdown_table(head, cells), agree, speed])


def json_table(rows: Sequence[JsonRow], same: dict[str, Any]) -> str:
    head = ["case", "batch", "wall s", "steps", "sampled", "decode tok", "jump-fwd tok", "steps saved"]
    head += ["mask / step", "grammar / step", "complete", "fields right"]
    cells = [
        [
            r.case,
            str(r.batch),
            f"{r.wall_s:.2f}",
            str(r.steps),
            str(r.generated_tokens),
            str(r.decode_tokens),
            str(r.jump_forward_tokens),
            str(r.decode_steps_saved),
            f"{r.mask_share:.1%}",
            f"{r.grammar_share:.1%}",
            str(r.complete),
            f"{r.field_accuracy:.0%}",
        ]
        for r in rows
    ]
    on, off = rows[0], rows[1]
    lines = [
        markdown_table(head, cells),
        f"jump-forward on vs off (batch {on.batch}): {share(off.steps, on.steps):.2f}x fewer engine steps, "
        f"{share(off.generated_tokens, on.generated_tokens):.2f}x fewer sampled tokens, "
        f"wall {share(off.wall_s, on.wall_s):.2f}x; outputs equal: {same['texts']}/{same['of']} texts, "
        f"{same['parsed']}/{same['of']} parsed documents",
        target_line(on.mask_share, on.batch),
    ]
    return "\n".join(lines)


def target_line(mask_share: float, batch: int, target: float = MASK_TARGET) -> str:
    verdict = "yes" if mask_share <= target else "no"
    return f"mask overhead at batch {batch}: {mask_share:.1%} of step time; target <= {target:.0%}: {verdict}"


def load_average() -> float:
    return os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=None, help="registered name or path (default: the default model)")
    ap.add_argument("--dtype", default="auto", choices=["auto", "bf16", "fp32"])
    ap.add_argument("--repeat", type=int, default=3, help="timed runs per batch (best is reported)")
    ap.add_argument("--free-max-tokens", type=int, default=8, help="max_tokens of the classification answers")
    ap.add_argument("--json-max-tokens", type=int, default=64, help="max_tokens of the extracted documents")
    ap.add_argument("--batch1-prompts", type=int, default=64, help="invoices run one at a time for batch 1")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--json", help="also write the rows and machine facts here")
    args = ap.parse_args(argv)
    load_before = load_average()
    t0 = time.perf_counter()
    ckpt = load_checkpoint(args.model)
    on = LLMEngine(ckpt, dtype=args.dtype, num_threads=args.threads)
    off = LLMEngine(ckpt, dtype=args.dtype, num_threads=args.threads, jump_forward=False)
    d = on.describe()
    machine = {
        "model": d["model"],
        "cpu": d["cpu"],
        "dtype": d["dtype"],
        "dtype_reason": d["dtype_reason"],
        "threads": d["threads"],
        "cpus": os.cpu_count(),
        "torch": torch.__version__,
    }
    print(
        f"model={machine['model']} cpu={machine['cpu']} dtype={machine['dtype']} ({machine['dtype_reason']}) "
        f"threads={machine['threads']} of {machine['cpus']} CPUs torch={machine['torch']} "
        f"load average before {load_before:.2f}",
        file=sys.stderr,
    )
    rows, pairs = classify(on, args)
    json_rows, same = extract(on, off, args)
    load_after = load_average()
    machine |= {"load_avg_before": load_before, "load_avg_after": load_after}
    print(f"\nClassification: {sum(map(len, TICKETS.values()))} tickets, batch of all, best of {args.repeat}")
    print(classify_table(rows, pairs))
    print(
        f"\nJSON extraction: {len(invoices())} invoices, 4-field schema, max_tokens {args.json_max_tokens}; "
        f"batch 64 best of {args.repeat}, batch 1 one pass over {args.batch1_prompts}"
    )
    print(json_table(json_rows, same))
    print(
        f"\n{machine['cpu']}, {machine['dtype']}, {machine['threads']} threads, torch {machine['torch']}; "
        f"load average {load_before:.2f} before, {load_after:.2f} after; {time.perf_counter() - t0:.0f} s in all"
    )
    if args.json:
        with open(args.json, "w") as fh:
            payload = {
                "machine": machine,
                "args": vars(args),
                "classification": [asdict(r) for r in rows],
                "agreement": pairs,
                "extraction": [asdict(r) for r in json_rows],
                "equal_outputs": same,
            }
            json.dump(payload, fh, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
