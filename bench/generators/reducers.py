"""Functions the benchmark workloads call: reducers (`kind: reduce`, plain functions of a list) and
python tools (`kind: python`)."""

from __future__ import annotations


def count_yes(labels: list[str]) -> int:
    """How many of a foreach node's yes/no labels are yes."""
    return sum(1 for label in labels if label == "yes")


def terms_in_passage(terms: list[str], passage: str) -> list[str]:
    """The extracted terms the passage really contains (case-insensitive), each once, in their order:
    a model's key terms checked against the text they were drawn from."""
    text = passage.lower()
    found: list[str] = []
    for term in terms:
        cleaned = term.strip()
        if cleaned and cleaned.lower() in text and cleaned.lower() not in (f.lower() for f in found):
            found.append(cleaned)
    return found
