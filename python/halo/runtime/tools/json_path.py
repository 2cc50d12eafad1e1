"""Paths into parsed JSON, as http `response_path` and rule `field` write them: `data.items[0].name`."""

from __future__ import annotations

import re
from typing import Any

_STEP = re.compile(r"\[(\d+)\]|\.?([^.\[\]]+)")


class PathNotFound(LookupError):
    """The path leads nowhere in this value; the message says at which step."""


def parse_path(path: str) -> list[str | int]:
    """Steps of a path: keys as strings, list indexes as ints."""
    steps: list[str | int] = []
    for match in _STEP.finditer(path):
        index, key = match.groups()
        steps.append(int(index) if index is not None else key)
    return steps


def lookup(value: Any, path: str) -> Any:
    """The value at `path` inside `value`; raises PathNotFound naming the step that failed."""
    current = value
    walked = ""
    for step in parse_path(path):
        if isinstance(step, int):
            if not isinstance(current, list) or step >= len(current):
                raise PathNotFound(f"no [{step}] after '{walked or '$'}'")
            walked += f"[{step}]"
        else:
            if not isinstance(current, dict) or step not in current:
                raise PathNotFound(f"no key '{step}' after '{walked or '$'}'")
            walked += f".{step}" if walked else step
        current = current[step]
    return current
