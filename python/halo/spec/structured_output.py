"""Structured outputs of llm nodes: `choices`, `regex` or `json_schema`, checked with llguidance.

The engine enforces a node's format while decoding (token masks compiled by llguidance from the same
format, `halo.engine.output_format.OutputFormat`). This module is the spec's side of it:

* at load, `grammar_problem` compiles a regex or a JSON schema with llguidance and says why it cannot
  be compiled, so a bad format is a located spec error and never a failure in the middle of a run;
  `load_schema_file` reads a `json_schema: path.json` reference (relative to the workflow file);
* after a call, `check_output` holds the finished text to the node's format with the same compiler
  (a byte-level matcher), so a cut or mismatching output becomes a per-row error, never half a
  document in the outputs.

llguidance is imported only when a node has a regex or a schema (it takes ~0.1 s to import).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from halo import output_grammar

Verdict = Literal["ok", "prefix", "mismatch"]
"""A text against a format: it matches; it is an unfinished start of a match; it can never match."""

_EOS = 256  # the byte tokenizer's end-of-sequence token (bytes are tokens 0-255)


def grammar_of(regex: str | None = None, schema: Mapping[str, Any] | None = None) -> str:
    """The llguidance grammar of a regex (matched whole) or of a JSON schema: the engine's own
    construction (halo/output_grammar.py), so load checks and output checks see the grammar that runs."""
    assert regex is not None or schema is not None
    return output_grammar.grammar_of(regex=regex, schema=schema)


def grammar_problem(regex: str | None = None, schema: Mapping[str, Any] | None = None) -> str | None:
    """Why llguidance cannot compile this regex or schema (its reason, one line), or None if it can."""
    from llguidance import LLMatcher

    try:
        message = str(LLMatcher.validate_grammar(grammar_of(regex, schema), None))
    except (ValueError, TypeError, RuntimeError) as exc:  # e.g. a schema that is not JSON-serialisable
        message = str(exc) or type(exc).__name__
    return _reason(message) if message else None


def _reason(message: str) -> str:
    """llguidance's message without its echo of the grammar: the `error:` line of a regex parse error."""
    lines = [line.strip() for line in message.splitlines() if line.strip()]
    for line in lines:
        if line.startswith("error:"):
            return line.removeprefix("error:").strip()
    return lines[0] if lines else message


def load_schema_file(reference: str, base: Path, max_bytes: int) -> dict[str, Any]:
    """The JSON schema in file `reference` (relative to `base`, the workflow's folder); ValueError
    saying what is wrong: missing, unreadable, larger than `max_bytes`, not JSON, not an object."""
    path = Path(reference) if Path(reference).is_absolute() else base / reference
    try:
        with path.open("rb") as handle:
            data = handle.read(max_bytes + 1)  # never read a huge file whole
    except OSError as exc:
        raise ValueError(f"cannot read json_schema file '{reference}' ({path}): {exc.strerror}") from None
    if len(data) > max_bytes:
        raise ValueError(f"json_schema file '{reference}' is larger than {max_bytes} bytes (Limits.max_yaml_bytes)")
    try:
        schema = json.loads(data.decode("utf-8"), parse_constant=_no_constant)
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise ValueError(f"json_schema file '{reference}' is not JSON: {exc}") from None
    if not isinstance(schema, dict):
        raise ValueError(f"json_schema file '{reference}' must hold a JSON object, not {type(schema).__name__}")
    return schema


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


@dataclass(frozen=True)
class OutputCheck:
    """One node's format, to hold finished texts to. Exactly one of the three is set."""

    choices: tuple[str, ...] | None = None
    regex: str | None = None
    schema: Mapping[str, Any] | None = None

    @property
    def kind(self) -> str:
        return "choices" if self.choices is not None else "regex" if self.regex is not None else "json"

    def verdict(self, text: str) -> Verdict:
        """Whether `text` is an output of this format (for json: the document's canonical text)."""
        if self.choices is not None:
            if text in self.choices:
                return "ok"
            return "prefix" if any(choice.startswith(text) for choice in self.choices) else "mismatch"
        from llguidance import LLMatcher, LLTokenizer, TokenizerWrapper

        tokenizer = LLTokenizer(TokenizerWrapper(_ByteVocabulary()), slices=[])
        matcher = LLMatcher(tokenizer, grammar_of(self.regex, self.schema), log_level=0)
        if not matcher.consume_tokens(list(text.encode("utf-8"))) or matcher.is_error():
            return "mismatch"
        return "ok" if matcher.is_accepting() else "prefix"


class _ByteVocabulary:
    """A vocabulary of the 256 bytes (and an end token), so a matcher reads any text byte by byte."""

    eos_token_id = _EOS
    bos_token_id = None
    tokens: Sequence[bytes] = [bytes([i]) for i in range(256)] + [b""]
    special_token_ids: Sequence[int] = [_EOS]

    def __call__(self, text: bytes) -> list[int]:
        return list(text)


@dataclass(frozen=True)
class CheckedOutput:
    """A finished text held to its node's format: the value the node yields, or why it yields none."""

    value: Any = None  # the text (choices, regex) or the parsed document (json)
    error: str | None = None


def check_output(check: OutputCheck, text: str, truncated: bool, max_tokens: int) -> CheckedOutput:
    """`text` as its node's output, or the error that fails the row: cut by `max_tokens` (`truncated`:
    the engine stopped at the length limit) before the format was complete, or not of the format."""
    kind = check.kind
    cut = f"{kind} output truncated at max_tokens={max_tokens}: {_shown(text)}"
    if kind != "json":
        verdict = check.verdict(text)
        if verdict == "ok":
            return CheckedOutput(text)
        if truncated and verdict == "prefix":
            return CheckedOutput(error=cut)
        if kind == "choices":
            options = ", ".join(map(repr, check.choices or ()))
            return CheckedOutput(error=f"output {_shown(text)} is not one of the choices {options}")
        return CheckedOutput(error=f"output {_shown(text)} does not match regex {check.regex!r}")
    try:
        value = json.loads(text, parse_constant=_no_constant)
    except (ValueError, RecursionError) as exc:
        if truncated:
            return CheckedOutput(error=cut)
        return CheckedOutput(error=f"json output is not a JSON document ({exc}): {_shown(text)}")
    if not _finite(value):
        return CheckedOutput(error=f"json output holds a number JSON cannot carry: {_shown(text)}")
    # The canonical text, not the generated one: whitespace is the decoder's business, content is checked.
    if check.schema is not None and check.verdict(json.dumps(value, ensure_ascii=False)) != "ok":
        return CheckedOutput(error=f"json output does not match the node's json_schema: {_shown(text)}")
    return CheckedOutput(value)


def _finite(value: Any) -> bool:
    if isinstance(value, float):
        return math.isfinite(value)  # 1e999 parses to inf
    if isinstance(value, dict):
        return all(_finite(item) for item in value.values())
    if isinstance(value, list):
        return all(_finite(item) for item in value)
    return True


def _shown(text: str) -> str:
    return repr(text if len(text) <= 80 else text[:77] + "...")
