"""What shape a generation's text must take: one of a set of strings, a regex match, or a JSON document
valid against a schema. Carried by `SamplingParams.output_format`; the engine enforces it while decoding.

Plain frozen data (hashable, picklable for Ray, no grammar engine imported): the engine compiles it
with llguidance per (tokenizer, format) and caches the result (engine/grammar.py); the spec checks it
at load with the same compiler, so a format that cannot compile is a located spec error, never a
failure in the middle of a run.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Literal

from halo.errors import InvalidRequestError

OutputKind = Literal["choices", "regex", "json"]


@dataclass(frozen=True)
class OutputFormat:
    """Exactly one of: ``choices`` (the text is one of the strings), ``regex`` (the whole text matches),
    ``json`` (the text is one JSON document; ``schema`` is its JSON Schema as JSON text, or
    None for any JSON object, OpenAI's ``json_object``)."""

    kind: OutputKind
    choices: tuple[str, ...] = ()
    regex: str | None = None
    # JSON text in the schema's own key order: the grammar generates properties in that order, and the
    # order guides a model ("reasons" before "verdict"); sorting would compare more schemas equal but
    # would reorder every document
    schema: str | None = None

    @classmethod
    def of_choices(cls, choices: Any) -> OutputFormat:
        return cls("choices", choices=tuple(choices))

    @classmethod
    def of_regex(cls, pattern: str) -> OutputFormat:
        return cls("regex", regex=pattern)

    @classmethod
    def of_json(cls, schema: dict[str, Any] | None = None) -> OutputFormat:
        return cls("json", schema=None if schema is None else json.dumps(schema))

    def __post_init__(self) -> None:
        object.__setattr__(self, "choices", tuple(self.choices))
        problems = self.problems()
        if problems:
            raise InvalidRequestError("invalid output format: " + "; ".join(problems))

    def problems(self) -> list[str]:
        """Structural problems (compilability is the grammar engine's to say)."""
        out: list[str] = []
        if self.kind == "choices":
            if not self.choices:
                out.append("choices must not be empty")
            if any(not isinstance(c, str) or not c for c in self.choices):
                out.append("every choice must be a non-empty string")
            duplicates = sorted({c for c in self.choices if self.choices.count(c) > 1})
            if duplicates:
                out.append(f"choices must be distinct, repeated: {', '.join(map(repr, duplicates))}")
            if self.regex is not None or self.schema is not None:
                out.append("choices take no regex or schema")
        elif self.kind == "regex":
            if not isinstance(self.regex, str) or not self.regex:
                out.append("regex must be a non-empty string")
            if self.choices or self.schema is not None:
                out.append("a regex format takes no choices or schema")
        elif self.kind == "json":
            if self.choices or self.regex is not None:
                out.append("a json format takes no choices or regex")
            if self.schema is not None:
                try:
                    if not isinstance(json.loads(self.schema), dict):
                        out.append("a JSON schema must be an object")
                except ValueError as exc:
                    out.append(f"schema is not JSON text: {exc}")
        else:
            out.append(f"kind must be 'choices', 'regex' or 'json', got {self.kind!r}")
        return out

    def describe(self) -> str:
        if self.kind == "choices":
            return "choices " + "|".join(self.choices)
        if self.kind == "regex":
            return f"regex {self.regex}"
        return "json" + (" schema" if self.schema is not None else " object")
