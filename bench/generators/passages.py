"""Distinct rows of real text: passages of Python's own reference manual, each with a question about it.

The other generators draw from a small vocabulary, so their rows repeat and share prefixes; these do
not. The text is `pydoc_data.topics` (the manual's topics that `help()` prints, shipped with CPython),
so the rows need no download. `passages(rng, n)` samples `n` different paragraphs of prose (code
listings and bullet lists left out), deterministic by the generator's seed for one CPython minor
version (the manual's text changes between versions), and asks of each a question naming a term of it.
"""

from __future__ import annotations

import random
import re
from functools import cache
from pydoc_data.topics import topics as _TOPICS

MIN_CHARS, MAX_CHARS = 200, 600  # a paragraph a small model can summarise, at a few hundred tokens of prefill
_QUESTIONS = (
    "What does the passage say about {word}?",
    "According to the passage, when does {word} matter?",
    "What rule does the passage give about {word}?",
    "How does the passage describe {word}?",
)
# the manual quotes code ("__init__()") and stars terms (*iterable*); failing those, a long word
_TERM = re.compile(r'"([^"\s]{3,30})"|\*([A-Za-z][A-Za-z_ -]{3,30})\*')
_WORD = re.compile(r"[A-Za-z_]{9,}")


@cache
def prose_paragraphs() -> tuple[tuple[str, str], ...]:
    """(topic, paragraph) of every prose paragraph of the manual's topics, each paragraph text once."""
    seen: set[str] = set()
    out: list[tuple[str, str]] = []
    for topic in sorted(_TOPICS):
        for block in _TOPICS[topic].split("\n\n"):
            lines = block.split("\n")
            if sum(line.startswith("   ") for line in lines) > len(lines) / 2:
                continue  # a code listing or an indented table
            text = " ".join(line.strip() for line in lines).strip()
            if not (MIN_CHARS <= len(text) <= MAX_CHARS) or text.startswith(("*", "-", "+", ">>>")):
                continue
            if text not in seen:
                seen.add(text)
                out.append((topic, text))
    return tuple(out)


def passages(rng: random.Random, n: int) -> list[tuple[str, str, str]]:
    """`n` (topic, passage, question) rows, every passage different (at most `len(prose_paragraphs())`)."""
    pool = prose_paragraphs()
    if n > len(pool):
        raise ValueError(f"doc-passages has {len(pool)} distinct passages; asked for {n} rows")
    rows = []
    for topic, text in rng.sample(pool, n):
        terms = sorted({a or b for a, b in _TERM.findall(text)}) or sorted(set(_WORD.findall(text))) or [topic]
        word = rng.choice(terms)
        rows.append((topic, text, rng.choice(_QUESTIONS).format(word=word)))
    return rows
