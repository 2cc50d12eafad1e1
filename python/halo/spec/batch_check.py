"""Batch rows against a workflow: every declared input must be present in every row."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from halo.spec.errors import BatchError, SpecIssue

MAX_LISTED = 20


def check_batch(rows: Iterable[Any], inputs: Sequence[str], file: str | None = None) -> int:
    """Raise BatchError naming each bad row (0-based index, and its line when read from `file`).

    Returns the number of rows. Extra columns are allowed and ignored by the workflow.
    """
    issues: list[SpecIssue] = []
    count = 0
    bad = 0
    for index, row in enumerate(rows):
        count += 1
        if not isinstance(row, Mapping):
            problem = f"row {index} must be a mapping of input names to values, got {type(row).__name__}"
        else:
            missing = [name for name in inputs if name not in row]
            if not missing:
                continue
            names = ", ".join(f"'{name}'" for name in missing)
            problem = f"row {index} is missing declared input{'s' if len(missing) > 1 else ''} {names}"
        bad += 1
        if len(issues) < MAX_LISTED:
            issues.append(SpecIssue(problem, line=index + 1 if file else None, file=file))
    if bad > len(issues):
        issues.append(SpecIssue(f"... and {bad - len(issues)} more bad rows"))
    if issues:
        raise BatchError(issues, title=f"batch does not fit the workflow ({bad} of {count} rows)")
    return count
