"""The one construction of an output format's llguidance grammar, shared by the spec (which checks a
node's format at load and its finished outputs) and the engine (which decodes under it), so both
compile exactly the grammar that runs. Plain values in, grammar text out; llguidance is imported on
first use (it takes ~0.1 s)."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

# Compact, deterministic JSON (json.dumps' default separators, no other whitespace): a small model
# cannot wander into runs of whitespace, and fixed keys and punctuation become forced runs that
# jump-forward appends without decode steps.
JSON_OPTIONS: dict[str, object] = {"whitespace_flexible": False, "item_separator": ", ", "key_separator": ": "}


def grammar_of(
    *, choices: Sequence[str] = (), regex: str | None = None, schema: str | Mapping[str, Any] | None = None
) -> str:
    """The grammar of exactly one of: ``choices`` (a Lark alternation of string literals — JSON string
    syntax, which Lark's literals share — so a literal means exactly its text, with no regex dialect to
    get wrong), ``regex`` (matched whole), or a JSON ``schema`` (text or mapping; None with no choices
    and no regex means any JSON object). Not checked here: `LLMatcher.validate_grammar` does that."""
    from llguidance import LLMatcher

    if choices:
        return str(LLMatcher.grammar_from_lark("start: " + " | ".join(json.dumps(c) for c in choices)))
    if regex is not None:
        return str(LLMatcher.grammar_from_regex(regex))
    text = '{"type": "object"}' if schema is None else schema if isinstance(schema, str) else dict(schema)
    return str(LLMatcher.grammar_from_json_schema(text, overrides=JSON_OPTIONS))  # type: ignore[arg-type]
