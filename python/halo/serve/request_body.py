"""`read_json`: a request body parsed as strict JSON, within the bounds the server promises to handle.

Every route that takes a body reads it here, so one rule answers every client: a body that is not
JSON, nests deeper than `ServeConfig.max_json_depth`, holds NaN/Infinity (or a number too large for a
float), a lone surrogate in a string, or an integer outside the signed 64-bit range is a 400 in
OpenAI's error shape naming where (a lone surrogate could not be written back into a UTF-8 answer).
Why bounds at all: a deeply nested body overflows recursion in the parser or later in whatever walks
the value (templates, the journal's `json.dumps`), and integers beyond 64 bits overflow the engine's
seeded generator, DuckDB parameters and most JSON clients; both were 500s (or a reset connection).
"""

from __future__ import annotations

import json
import math
from typing import Any

from fastapi import Request

from halo.serve.api_errors import ApiError

INT64_MIN, INT64_MAX = -(1 << 63), (1 << 63) - 1


async def read_json(request: Request) -> Any:
    """The request's body as a JSON value, checked against the server's limits (see the module doc)."""
    raw = await request.body()
    return parse_json(raw, request.app.state.halo.config.max_json_depth)


def parse_json(raw: bytes | str, max_depth: int) -> Any:
    """`raw` as JSON; raises ApiError(400) naming the first problem and where it is."""
    try:
        value = json.loads(raw, parse_constant=_no_constant, parse_float=_finite_float)
    except RecursionError:
        raise ApiError(
            400, f"request body is nested deeper than this server's limit of {max_depth} levels", code="json_too_deep"
        ) from None
    except _NonFinite as exc:
        raise ApiError(
            400, f"request body is not valid JSON: {exc} (JSON numbers must be finite)", code="invalid_json"
        ) from None
    except (ValueError, UnicodeDecodeError) as exc:  # JSONDecodeError, or an integer of > 4300 digits
        raise ApiError(400, f"request body is not valid JSON: {exc}", code="invalid_json") from None
    check_value(value, max_depth)
    return value


def check_value(value: Any, max_depth: int) -> None:
    """Raise ApiError(400) if `value` nests deeper than `max_depth` or holds an integer beyond int64.
    Iterative, so it cannot overflow the stack whatever the input."""
    stack: list[tuple[Any, int, tuple[str | int, ...]]] = [(value, 0, ())]
    while stack:
        item, depth, path = stack.pop()
        if isinstance(item, (dict, list)):
            if depth >= max_depth:
                where = location(path[:8]) + ("..." if len(path) > 8 else "")
                raise ApiError(
                    400,
                    f"request body is nested deeper than this server's limit of {max_depth} levels (at {where})",
                    code="json_too_deep",
                    param=location(path[:1]),
                )
            if isinstance(item, dict):
                for key in item:
                    _check_text(key, path)
            children = item.items() if isinstance(item, dict) else enumerate(item)
            stack.extend((child, depth + 1, (*path, key)) for key, child in children)
        elif isinstance(item, str):
            _check_text(item, path)
        elif isinstance(item, int) and not isinstance(item, bool) and not INT64_MIN <= item <= INT64_MAX:
            where = location(path)
            raise ApiError(
                400,
                f"{where}: integer {item} is outside the signed 64-bit range [{INT64_MIN}, {INT64_MAX}]",
                code="integer_out_of_range",
                param=where,
            )


def _check_text(text: str, path: tuple[str | int, ...]) -> None:
    """A lone surrogate (`"\\ud800"`) is valid JSON but not text: nothing can encode it back as UTF-8."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        where = location(path)
        raise ApiError(
            400,
            f"{where}: string holds a lone surrogate ({exc.reason}), which is not text",
            code="invalid_json",
            param=where,
        ) from None


def location(path: tuple[str | int, ...]) -> str:
    """`messages[0].content`-style path of a value inside the body (`body` for the body itself)."""
    out = ""
    for key in path:
        out += f"[{key}]" if isinstance(key, int) else (f".{key}" if out else str(key))
    return out or "body"


class _NonFinite(ValueError):
    pass


def _no_constant(name: str) -> Any:
    raise _NonFinite(f"'{name}' is not a JSON number")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise _NonFinite(f"'{text}' overflows a 64-bit float")
    return value
