"""Read-only SQL checks: one statement, a query (SELECT/WITH/VALUES/...), named parameters only.

Two layers. A small lexer that knows string literals, quoted identifiers, dollar quotes, comments and
`::` casts splits statements, finds `:name` placeholders and rewrites them to DuckDB's `$name`; then
DuckDB's own parser (`duckdb.extract_statements`) classifies the statement. The lexer alone decides
for PostgreSQL databases when DuckDB cannot parse their dialect.

This is the early check, located in the workflow file; the guarantee is the runtime's sandbox
(`halo.runtime.tools.duckdb_database`, PostgreSQL's read-only transactions). A SELECT that passes
here can still name a file through a row's parameter (`read_text(:p)`) or run a statement given as
a value (`query(:q)`), and a function inside a SELECT can have effects no parser can see.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import duckdb

READ_KEYWORDS = frozenset({"SELECT", "WITH", "VALUES", "FROM", "TABLE", "EXPLAIN", "DESCRIBE", "SUMMARIZE", "SHOW"})
WRITE_KEYWORDS = frozenset(
    {
        "INSERT",
        "UPDATE",
        "DELETE",
        "MERGE",
        "UPSERT",
        "TRUNCATE",
        "DROP",
        "ALTER",
        "CREATE",
        "COPY",
        "GRANT",
        "REVOKE",
        "ATTACH",
        "DETACH",
        "INTO",
        "CALL",
        "EXPORT",
        "IMPORT",
        "INSTALL",
        "LOAD",
        "VACUUM",
        "SET",
        "PRAGMA",
        "CHECKPOINT",
    }
)

_TOKEN = re.compile(
    r"""
    (?P<space>\s+)
  | (?P<line_comment>--[^\n]*)
  | (?P<block_comment>/\*.*?(?:\*/|\Z))
  | (?P<string>[EeXxBbNn]?'(?:[^']|'')*(?:'|\Z))
  | (?P<quoted>"(?:[^"]|"")*(?:"|\Z))
  | (?P<dollar>\$(?P<tag>(?:[A-Za-z_]\w*)?)\$.*?(?:\$(?P=tag)\$|\Z))
  | (?P<cast>::)
  | (?P<named>:[A-Za-z_]\w*)
  | (?P<dollar_param>\$(?:[A-Za-z_]\w*|\d+))
  | (?P<positional>\?)
  | (?P<semicolon>;)
  | (?P<word>[A-Za-z_]\w*)
  | (?P<other>.)
    """,
    re.VERBOSE | re.DOTALL,
)


@dataclass
class SqlStatement:
    """What the lexer learned about a query text."""

    statements: list[list[str]] = field(default_factory=list)  # upper-cased words, per statement
    placeholders: list[str] = field(default_factory=list)  # named parameters, in order of appearance
    positional: bool = False  # `?` or `$1` seen
    unterminated: bool = False
    duckdb_text: str = ""  # the query with `:name` rewritten to `$name`


def lex(query: str) -> SqlStatement:
    out = SqlStatement()
    current: list[str] = []
    pieces: list[str] = []
    for match in _TOKEN.finditer(query):
        kind, text = match.lastgroup, match.group()
        if kind == "tag":  # the dollar-quote tag group is nested in `dollar`; lastgroup reports the outer
            kind = "dollar"
        if kind in ("string", "quoted", "dollar", "block_comment") and not _closed(kind, text):
            out.unterminated = True
        if kind == "named":
            out.placeholders.append(text[1:])
            pieces.append("$" + text[1:])
            current.append("?PARAM")
            continue
        if kind == "dollar_param":
            if text[1:].isdigit():
                out.positional = True
            else:
                out.placeholders.append(text[1:])
            current.append("?PARAM")
        elif kind == "positional":
            out.positional = True
            current.append("?PARAM")
        elif kind == "semicolon":
            if current:
                out.statements.append(current)
            current = []
        elif kind == "word":
            current.append(text.upper())
        elif kind in ("string", "quoted", "dollar", "other", "cast"):
            current.append(kind.upper() if kind != "other" else text)
        pieces.append(text)
    if current:
        out.statements.append(current)
    out.duckdb_text = "".join(pieces)
    return out


def _closed(kind: str, text: str) -> bool:
    if kind == "block_comment":
        return text.endswith("*/") and len(text) >= 4
    if kind == "dollar":
        tag = text[: text.index("$", 1) + 1]
        return len(text) >= 2 * len(tag) and text.endswith(tag)
    quote = "'" if kind == "string" else '"'
    body = text[text.index(quote) :]
    return len(body) >= 2 and body.endswith(quote)


def check_read_only(query: str, dialect: str, params: set[str]) -> list[str]:
    """Problems with `query` as a single read-only parameterized statement (empty when fine).

    `dialect` is "duckdb" or "postgres"; `params` are the parameter names the node supplies.
    """
    if "{{" in query or "{%" in query:
        return ["the query must not be a template: pass values through 'params' (:name placeholders)"]
    lexed = lex(query)
    problems: list[str] = []
    if lexed.unterminated:
        problems.append("unterminated string, quoted identifier or comment in the query")
    if not lexed.statements:
        return problems + ["the query is empty"]
    if len(lexed.statements) > 1:
        second = next((w for w in lexed.statements[1] if w.isalpha()), "?")
        problems.append(
            f"the query must be a single statement; found {len(lexed.statements)} (the second starts with {second})"
        )
    words = _skip_explain(lexed.statements[0])
    if words and words[0] not in READ_KEYWORDS:
        problems.append(f"the query must be read-only (SELECT, WITH, VALUES, ...); it starts with {words[0]}")
    else:
        writes = sorted({w for w in words if w in WRITE_KEYWORDS})
        if writes:
            problems.append(f"the query must be read-only; it contains {', '.join(writes)}")
    if lexed.positional:
        problems.append("use named parameters (:name), not positional ones (? or $1)")
    used = set(lexed.placeholders)
    for name in sorted(used - params):
        problems.append(f"the query uses :{name} but 'params' has no '{name}'")
    for name in sorted(params - used):
        problems.append(f"param '{name}' is not used by the query (no :{name} in it)")
    if not problems:
        problems.extend(_duckdb_check(lexed.duckdb_text, dialect))
    return problems


def _skip_explain(words: list[str]) -> list[str]:
    # EXPLAIN ANALYZE executes its statement, so what follows EXPLAIN must be read-only too.
    index = 0
    while index < len(words) and words[index] in ("EXPLAIN", "ANALYZE", "ANALYSE", "VERBOSE"):
        index += 1
    if index < len(words) and words[index] == "(":  # EXPLAIN (options) ...
        while index < len(words) and words[index] != ")":
            index += 1
        index += 1
    return words[index:] if index else words


def _duckdb_check(text: str, dialect: str) -> list[str]:
    try:
        statements = duckdb.extract_statements(text)
    except duckdb.Error as exc:
        if dialect == "postgres":
            return []  # DuckDB's parser does not know every PostgreSQL construct; the lexer decided
        return [f"SQL does not parse: {str(exc).splitlines()[0]}"]
    if len(statements) != 1:
        return [f"the query must be a single statement; DuckDB sees {len(statements)}"]
    kind = statements[0].type.name
    if kind not in ("SELECT", "EXPLAIN"):
        return [f"the query must be read-only; DuckDB classifies it as {kind}"]
    return []
