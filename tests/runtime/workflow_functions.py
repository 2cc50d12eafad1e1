"""Python callables the runtime tests' workflows call by "workflow_functions:NAME" (tests/runtime on sys.path)."""

from __future__ import annotations

import time


def word_count(text: str) -> int:
    return len(text.split())


def slow_upper(text: str, delay_s: float) -> str:
    time.sleep(float(delay_s))
    return text.upper()


def explode(text: str) -> str:
    if "boom" in text:
        raise RuntimeError(f"cannot handle {text!r}")
    return text[::-1]
