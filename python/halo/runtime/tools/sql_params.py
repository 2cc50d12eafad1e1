"""`:name` placeholders rewritten into each driver's parameter syntax: DuckDB `$name`, psycopg `%(name)s`.

Workflows write one placeholder style for every database. The rewrite walks the query with a lexer
that knows string literals (including `E'..'` backslash escapes), quoted identifiers, dollar quotes,
comments and `::` casts, so `x::int` and `':y'` are left alone. Values are always sent as bound
parameters, never spliced into the text.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

Dialect = Literal["duckdb", "postgres"]

_TOKEN = re.compile(
    r"""
    (?P<line_comment>--[^\n]*)
  | (?P<block_comment>/\*.*?(?:\*/|\Z))
  | (?P<escape_string>[Ee]'(?:[^'\\]|\\.|'')*(?:'|\Z))
  | (?P<string>[XxBbNn]?'(?:[^']|'')*(?:'|\Z))
  | (?P<quoted>"(?:[^"]|"")*(?:"|\Z))
  | (?P<dollar>\$(?P<tag>(?:[A-Za-z_]\w*)?)\$.*?(?:\$(?P=tag)\$|\Z))
  | (?P<cast>::)
  | (?P<named>:[A-Za-z_]\w*)
  | (?P<word>[A-Za-z_]\w*)
  | (?P<other>[^-/'"$:A-Za-z_]+|.)
    """,
    re.VERBOSE | re.DOTALL,
)


@dataclass(frozen=True)
class BoundQuery:
    """A query in one driver's syntax and the parameter values it reads, by name."""

    text: str
    params: dict[str, Any]


def bind_params(query: str, params: Mapping[str, Any], dialect: Dialect) -> BoundQuery:
    """Rewrite `:name` placeholders for `dialect`; raises KeyError naming a placeholder without a value.

    Only the parameters the query uses are passed on (DuckDB rejects unused named parameters).
    """
    pieces: list[str] = []
    used: dict[str, Any] = {}
    for match in _TOKEN.finditer(query):
        kind, text = match.lastgroup, match.group()
        if kind == "named":
            name = text[1:]
            if name not in params:
                raise KeyError(name)
            used[name] = params[name]
            pieces.append(f"${name}" if dialect == "duckdb" else f"%({name})s")
        elif dialect == "postgres":
            # psycopg reads every `%` of a parameterized query as a placeholder, literals included.
            pieces.append(text.replace("%", "%%"))
        else:
            pieces.append(text)
    return BoundQuery("".join(pieces), used)
