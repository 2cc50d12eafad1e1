"""Batches as the Processor takes them: a list of dicts, a pandas DataFrame or a pyarrow Table.

Rows that do not fit the workflow (not a mapping, a declared input missing) are not run: each gets a
`RowError` on the pseudo-node "<input>", and the other rows run as usual.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from halo.errors import InvalidRequestError
from halo.runtime.results import RowError

INPUT_NODE = "<input>"


def to_rows(batch: Any) -> list[Any]:
    """The batch as a list of rows (each normally a dict); raises InvalidRequestError for other types."""
    module = type(batch).__module__.split(".")[0]
    if module == "pandas" and hasattr(batch, "to_dict"):
        return [dict(r) for r in batch.to_dict(orient="records")]
    if module == "pyarrow" and hasattr(batch, "to_pylist"):
        return list(batch.to_pylist())
    if isinstance(batch, Mapping | str | bytes):
        raise InvalidRequestError(
            f"a batch is a list of row dicts, a pandas DataFrame or a pyarrow Table, got {type(batch).__name__}"
        )
    if isinstance(batch, Iterable):
        return list(batch)
    raise InvalidRequestError(
        f"a batch is a list of row dicts, a pandas DataFrame or a pyarrow Table, got {type(batch).__name__}"
    )


def split_valid(rows: Sequence[Any], inputs: Sequence[str]) -> tuple[list[int], list[RowError]]:
    """Indices of the rows that fit the workflow, and an error for each row that does not."""
    valid: list[int] = []
    errors: list[RowError] = []
    for index, row in enumerate(rows):
        if not isinstance(row, Mapping):
            errors.append(RowError(index, INPUT_NODE, f"row {index} is a {type(row).__name__}, not a mapping"))
            continue
        missing = [name for name in inputs if name not in row]
        if missing:
            names = ", ".join(f"'{name}'" for name in missing)
            plural = "s" if len(missing) > 1 else ""
            errors.append(RowError(index, INPUT_NODE, f"row {index} is missing declared input{plural} {names}"))
            continue
        valid.append(index)
    return valid, errors
