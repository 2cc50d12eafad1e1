"""Run values as valid JSON: NaN and ±Infinity become null, so every JSON text `halo run` writes parses.

Python's `json.dumps` writes non-finite floats as the bare tokens `NaN`, `Infinity` and `-Infinity`,
which RFC 8259 forbids and strict parsers (JavaScript's `JSON.parse`, jq, Go, Rust's serde) reject.
A value from a python or sql node, or an input row read from JSON Lines, may hold one anywhere.

`json_safe` turns a value into plain JSON values: a non-finite float becomes null (its place and
spelling are reported to a caller that wants it back: the journal restores it on resume, see
`restore_nonfinite`), dict keys become strings as `json.dumps` spells them, tuples become lists, and
any other object becomes its `str()` (what `default=str` did before). `dumps` writes the result with
`allow_nan=False`, so a non-finite float that slipped through is an error, never invalid output.
"""

from __future__ import annotations

import json
import math
import numbers
from typing import Any

Path = tuple[str | int, ...]  # keys and list indices from the top of a value down to one place in it


def json_safe(value: Any, nonfinite: list[tuple[Path, str]] | None = None, path: Path = ()) -> Any:
    """`value` as plain JSON values (see the module doc); appends (path, "NaN" | "Infinity" |
    "-Infinity") to `nonfinite` for each non-finite float replaced by null."""
    if value is None or isinstance(value, (str, bool)):
        return value
    if isinstance(value, numbers.Integral):
        return int(value)
    if isinstance(value, numbers.Real):
        number = float(value)
        if math.isfinite(number):
            return number
        if nonfinite is not None:
            nonfinite.append((path, json.dumps(number)))  # "NaN", "Infinity" or "-Infinity"
        return None
    if isinstance(value, dict):
        safe = {}
        for key, item in value.items():
            name = _key(key)
            safe[name] = json_safe(item, nonfinite, (*path, name))
        return safe
    if isinstance(value, (list, tuple)):
        return [json_safe(item, nonfinite, (*path, i)) for i, item in enumerate(value)]
    return str(value)


def without_nonfinite(value: Any) -> Any:
    """`value` with every non-finite float (also inside dicts and lists) replaced by None, nothing
    else changed: for writers that keep native types (Parquet)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {key: without_nonfinite(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [without_nonfinite(item) for item in value]
    return value


def dumps(value: Any, **options: Any) -> str:
    """Valid JSON text of `value` (non-finite floats as null); `options` go to `json.dumps`."""
    return json.dumps(json_safe(value), allow_nan=False, **options)


def restore_nonfinite(value: Any, nonfinite: list[tuple[Path, str]]) -> Any:
    """Put back into a `json_safe` result the non-finite floats it reported (the value is changed
    in place where it can be; the top-level value is returned)."""
    for path, spelling in nonfinite:
        number = float(spelling.lower().replace("infinity", "inf"))
        if not path:
            value = number
            continue
        place = value
        for step in path[:-1]:
            place = place[step]
        place[path[-1]] = number
    return value


def _key(key: Any) -> str:
    """A dict key as `json.dumps` writes it (it accepts str, int, float, bool and None keys)."""
    if isinstance(key, str):
        return key
    if key is None or isinstance(key, (bool, float)):
        return json.dumps(key)
    if isinstance(key, numbers.Integral):
        return str(int(key))
    return str(key)
