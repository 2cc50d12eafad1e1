"""Exact JSON for the result cache: a value read back is equal to the value stored, and of the same types.

`json_values.json_safe` makes any value *valid* JSON for output files and the journal, at the price of
types (a tuple becomes a list, a Decimal or a date its `str()`, an int dict key a string). A cached
result stands in for a call that did not run, so downstream templates and functions must see exactly
what the call would have returned: `(1, 2)` renders "(1, 2)" where `[1, 2]` renders "[1, 2]". So this
codec keeps types: JSON's own values as themselves, and the few other types tools return (tuples,
non-finite floats, non-str dict keys, Decimal, date/time values, UUID, bytes) as tagged objects
`{"$": TAG, "v": ...}` (a plain dict that has a "$" key is tagged too, so nothing is ambiguous).
Anything else (a numpy scalar, a custom object, a timezone that is not a fixed offset) raises
`Uncacheable`: such a result is simply not stored, never stored approximately.
"""

from __future__ import annotations

import base64
import datetime as dt
import json
import math
import uuid
from decimal import Decimal
from typing import Any

_TAG = "$"


class Uncacheable(ValueError):
    """A value this codec cannot write back exactly (the result is not cached)."""


def encode(value: Any) -> str:
    """JSON text of `value` that `decode` turns back into an equal value of the same types."""
    return json.dumps(_tagged(value), ensure_ascii=True, allow_nan=False, separators=(",", ":"))


def decode(text: str) -> Any:
    """The value `encode` wrote (raises ValueError for text it did not write)."""
    return _untagged(json.loads(text))


def _tagged(value: Any) -> Any:
    kind = type(value)
    if value is None or kind is str or kind is bool or kind is int:
        return value
    if kind is float:
        return value if math.isfinite(value) else {_TAG: "float", "v": repr(value)}
    if kind is list:
        return [_tagged(item) for item in value]
    if kind is tuple:
        return {_TAG: "tuple", "v": [_tagged(item) for item in value]}
    if kind is dict:
        if _TAG not in value and all(type(key) is str for key in value):
            return {key: _tagged(item) for key, item in value.items()}
        return {_TAG: "dict", "v": [[_tagged(key), _tagged(item)] for key, item in value.items()]}
    if kind is Decimal:
        return {_TAG: "decimal", "v": str(value)}
    if kind is dt.datetime and _fixed_zone(value.tzinfo):
        return {_TAG: "datetime", "v": value.isoformat()}
    if kind is dt.date:
        return {_TAG: "date", "v": value.isoformat()}
    if kind is dt.time and value.tzinfo is None:
        return {_TAG: "time", "v": value.isoformat()}
    if kind is dt.timedelta:
        return {_TAG: "timedelta", "v": [value.days, value.seconds, value.microseconds]}
    if kind is uuid.UUID:
        return {_TAG: "uuid", "v": str(value)}
    if kind is bytes:
        return {_TAG: "bytes", "v": base64.b64encode(value).decode("ascii")}
    raise Uncacheable(f"a {kind.__name__} value cannot be cached exactly")


def _fixed_zone(zone: dt.tzinfo | None) -> bool:
    # isoformat keeps an offset, not a zone's rules: only naive values and fixed offsets come back equal
    return zone is None or type(zone) is dt.timezone


def _untagged(data: Any) -> Any:
    if isinstance(data, list):
        return [_untagged(item) for item in data]
    if not isinstance(data, dict):
        return data
    if _TAG not in data:
        return {key: _untagged(item) for key, item in data.items()}
    tag, payload = data[_TAG], data["v"]
    if tag == "float":
        return float(payload)
    if tag == "tuple":
        return tuple(_untagged(item) for item in payload)
    if tag == "dict":
        return {_untagged(key): _untagged(item) for key, item in payload}
    if tag == "decimal":
        return Decimal(payload)
    if tag == "datetime":
        return dt.datetime.fromisoformat(payload)
    if tag == "date":
        return dt.date.fromisoformat(payload)
    if tag == "time":
        return dt.time.fromisoformat(payload)
    if tag == "timedelta":
        days, seconds, microseconds = payload
        return dt.timedelta(days=days, seconds=seconds, microseconds=microseconds)
    if tag == "uuid":
        return uuid.UUID(payload)
    if tag == "bytes":
        return base64.b64decode(payload)
    raise ValueError(f"unknown cached value tag {tag!r}")
