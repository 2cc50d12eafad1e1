"""Documents, questions, word problems, items and conversations, deterministic by seed.

Every generator draws from a small vocabulary, as real analytic batches do: rows of one batch ask
about the same few keywords and parameters, so some requests repeat and many share prefixes.
"""

from __future__ import annotations

import random
from pathlib import Path

import duckdb

TOPICS = ("shipping", "pricing", "suppliers", "returns", "inventory", "discounts", "warehouses", "customers")
REGIONS = ("AFRICA", "AMERICA", "ASIA", "EUROPE", "MIDDLE EAST")
SEGMENTS = ("AUTOMOBILE", "BUILDING", "FURNITURE", "HOUSEHOLD", "MACHINERY")
YEARS = (1993, 1994, 1995, 1996, 1997)
_FACTS = (
    "costs rose in the {region} market",
    "delays were reported for {segment} orders",
    "a new policy on {topic} was adopted",
    "the team reviewed {topic} every quarter",
    "late deliveries fell after the {topic} change",
    "{segment} customers asked for better {topic}",
)


def documents(seed: int, count: int = 200) -> list[tuple[int, str, str, str]]:
    """(id, topic, title, body) rows of a small document collection about the TOPICS."""
    rng = random.Random(f"documents-{seed}")
    out = []
    for i in range(count):
        topic = TOPICS[i % len(TOPICS)]
        facts = [
            rng.choice(_FACTS).format(
                region=rng.choice(REGIONS).title(), segment=rng.choice(SEGMENTS).lower(), topic=rng.choice(TOPICS)
            )
            for _ in range(3)
        ]
        body = f"Note {i} on {topic}: " + "; ".join(facts) + "."
        out.append((i, topic, f"{topic.title()} note {i}", body))
    return out


def documents_database(cache_dir: Path, seed: int) -> Path:
    """A DuckDB file with table `docs(id, topic, title, body)`, made on first use."""
    path = cache_dir / f"documents-seed{seed}.duckdb"
    if path.exists():
        return path
    cache_dir.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(".partial")
    partial.unlink(missing_ok=True)
    con = duckdb.connect(str(partial))
    try:
        con.execute("CREATE TABLE docs (id INTEGER, topic VARCHAR, title VARCHAR, body VARCHAR)")
        con.executemany("INSERT INTO docs VALUES (?, ?, ?, ?)", documents(seed))
        con.execute("CHECKPOINT")
    finally:
        con.close()
    partial.replace(path)
    return path


def analytic_questions(rng: random.Random, n: int) -> list[str]:
    """Questions that name a region, a segment and a year (few values, so batches repeat them)."""
    regions, segments, years = REGIONS[:3], SEGMENTS[:3], YEARS[1:4]
    asks = ("how are revenue and shipping trending?", "where should we focus next quarter?")
    return [
        f"For region {rng.choice(regions)}, segment {rng.choice(segments)}, year {rng.choice(years)}: "
        f"{rng.choice(asks)}"
        for _ in range(n)
    ]


def retrieval_questions(rng: random.Random, n: int) -> list[str]:
    topics = TOPICS[:5]
    return [f"What do our notes say about {rng.choice(topics)} in {rng.choice(REGIONS[:3]).title()}?" for _ in range(n)]


def tickets(rng: random.Random, n: int) -> list[str]:
    """Support tickets about billing, shipping or a product, each with an order number."""
    subjects = (
        "I was charged twice for my order",
        "my refund has not arrived",
        "the parcel is stuck in transit",
        "the courier delivered to the wrong address",
        "the kettle stopped heating",
        "the desk lamp flickers",
    )
    return [f"Order {rng.randint(1000, 9999)}: {rng.choice(subjects)}." for _ in range(n)]


def word_problems(rng: random.Random, n: int) -> list[tuple[str, str]]:
    """(problem, answer) pairs of two-step arithmetic with known answers."""
    names, things = ("Ana", "Ben", "Chen"), ("apples", "books", "coins")
    out = []
    for _ in range(n):
        name, thing = rng.choice(names), rng.choice(things)
        have, bags, per = rng.randint(2, 6), rng.randint(2, 4), rng.randint(2, 5)
        problem = (
            f"{name} has {have} {thing} and buys {bags} bags with {per} {thing} in each. "
            f"How many {thing} does {name} have now?"
        )
        out.append((problem, str(have + bags * per)))
    return out


def review_items(rng: random.Random, n: int) -> list[str]:
    products = ("kettle", "backpack", "desk lamp", "headphones")
    traits = ("arrived late", "works well", "feels cheap", "is easy to use", "broke after a week", "looks great")
    return [f"The {rng.choice(products)} {rng.choice(traits)} and {rng.choice(traits)}." for _ in range(n)]


def conversations(rng: random.Random, n: int) -> list[tuple[str, str, str]]:
    """(turn 1, turn 2, turn 3) user messages; later turns follow up on the first."""
    subjects = ("planning a garden", "learning to cook rice", "saving money", "training for a 5 km run")
    follow = ("What should I do first?", "What is a common mistake?", "How long does it take?")
    out = []
    for _ in range(n):
        subject = rng.choice(subjects)
        two, three = rng.sample(follow, 2)
        out.append((f"I need advice on {subject}.", two, three))
    return out
