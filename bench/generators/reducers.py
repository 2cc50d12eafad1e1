"""Reducers the benchmark workloads call (`kind: reduce`): plain functions of a list."""

from __future__ import annotations


def count_yes(labels: list[str]) -> int:
    """How many of a foreach node's yes/no labels are yes."""
    return sum(1 for label in labels if label == "yes")
