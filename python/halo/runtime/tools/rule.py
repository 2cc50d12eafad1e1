"""The rule tool: extraction without a model, a regex over the rendered `input` or a field of it as JSON.

A regex match yields the chosen group (`output`) and `matched: true`; a field yields the value at
its path (`a.b[0]`). No match, a group that did not take part, input that is not JSON, or a missing
field all yield the node's `default` with `matched: false`: not matching is an answer, not an error.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Any

from halo.runtime.tools.json_path import PathNotFound, lookup


def run_rule(request: Mapping[str, Any]) -> dict[str, Any]:
    """`{output, matched}` of one rendered rule request (its fields are those of `RuleNode`)."""
    text = str(request.get("input", ""))
    default = request.get("default")
    regex = request.get("regex")
    if regex is not None:
        # `re` keeps its own cache of compiled patterns, so per-call compiling costs a dict lookup.
        match = re.search(regex, text, re.IGNORECASE if request.get("ignore_case") else 0)
        value = match.group(request.get("group", 0)) if match else None
        return {"output": value, "matched": True} if value is not None else {"output": default, "matched": False}
    try:
        return {"output": lookup(json.loads(text), str(request["field"])), "matched": True}
    except (ValueError, PathNotFound):
        return {"output": default, "matched": False}
