"""Checks of one node against the workflow's declarations: model, database, SQL, url, function."""

from __future__ import annotations

import re
from collections.abc import Collection

from halo.spec.catalog import DeclaredNode
from halo.spec.document import WorkflowHeader
from halo.spec.nodes import DEFAULT_MODEL, HttpNode, LlmNode, PythonNode, ReduceNode, SqlNode
from halo.spec.problem import Problem
from halo.spec.sql_statement import check_read_only
from halo.spec.structured_output import grammar_problem

_FUNCTION = re.compile(r"^[A-Za-z_][\w]*(\.[A-Za-z_]\w*)*:[A-Za-z_]\w*(\.[A-Za-z_]\w*)*$")


def check_node(
    node: DeclaredNode,
    header: WorkflowHeader,
    functions: Collection[str],
    broken: Collection[str],
) -> list[Problem]:
    """Problems a node has on its own terms: model, database, SQL, url, function, schema."""
    out: list[Problem] = []
    spec = node.spec
    if isinstance(spec, LlmNode):
        known = spec.model is None or spec.model in header.models or spec.model == DEFAULT_MODEL
        if not known and "models" not in broken:
            declared = ", ".join(sorted(header.models)) or "none"
            out.append(
                Problem(
                    node.path + ("model",),
                    f"unknown model '{spec.model}' (declared models: "
                    f"{declared}; an llm node without 'model' uses {DEFAULT_MODEL})",
                    node.id,
                )
            )
        out.extend(_structured_output_problems(node, spec))
        out.extend(_sample_problems(node, spec))
    elif isinstance(spec, SqlNode):
        dialect = "duckdb"
        if spec.db is not None:
            if spec.db in header.databases:
                dialect = header.databases[spec.db].kind
            elif "databases" not in broken:
                declared = ", ".join(sorted(header.databases)) or "none"
                out.append(
                    Problem(
                        node.path + ("db",),
                        f"unknown database '{spec.db}' (declared databases: {declared})",
                        node.id,
                    )
                )
        for message in check_read_only(spec.query, dialect, set(spec.params)):
            out.append(Problem(node.path + ("query",), message, node.id))
    elif isinstance(spec, HttpNode):
        static = spec.url.split("{{", 1)[0].split("{%", 1)[0]
        if static and not static.lower().startswith(("http://", "https://")) and not _prefix_of_scheme(static):
            out.append(Problem(node.path + ("url",), f"url '{spec.url}' must start with http:// or https://", node.id))
        if spec.body is not None and spec.method in ("GET", "HEAD"):
            out.append(Problem(node.path + ("json",), f"a {spec.method} request cannot carry a json body", node.id))
    elif isinstance(spec, PythonNode | ReduceNode):
        # the function a python node calls, or a reducer calls on its list
        field, name, what = (
            ("function", spec.function, "python") if isinstance(spec, PythonNode) else ("python", spec.python, "reduce")
        )
        if name not in functions and not _FUNCTION.match(name):
            out.append(
                Problem(
                    node.path + (field,),
                    f"{what} function '{name}' is neither registered with the workflow nor of the form "
                    "'package.module:function'",
                    node.id,
                )
            )
    return out


def _structured_output_problems(node: DeclaredNode, spec: LlmNode) -> list[Problem]:
    """choices / regex / json_schema: one at most, choices distinct and non-empty, a regex or schema
    that llguidance (the engine's grammar compiler) compiles; choice_mode score only with choices, and
    length_normalized only with choice_mode score."""
    out: list[Problem] = []
    given = spec.structured
    if len(given) > 1:
        fields = " and ".join(f"'{name}'" for name in given)
        message = f"{fields} cannot be combined: an llm node takes at most one of choices, regex, json_schema"
        out.append(Problem(node.path + (given[1],), message, node.id))
    if spec.choices is not None:
        if not spec.choices:
            out.append(Problem(node.path + ("choices",), "'choices' is empty: list at least one option", node.id))
        for index, choice in enumerate(spec.choices):
            if not choice:
                out.append(Problem(node.path + ("choices", index), "a choice must be a non-empty string", node.id))
            elif choice in spec.choices[:index]:
                message = f"choice {choice!r} is listed twice (choices must be distinct)"
                out.append(Problem(node.path + ("choices", index), message, node.id))
    if spec.regex is not None:
        reason = "the pattern is empty" if not spec.regex else grammar_problem(regex=spec.regex)
        if reason is not None:
            out.append(Problem(node.path + ("regex",), f"regex {spec.regex!r} cannot be compiled: {reason}", node.id))
    if spec.json_schema is not None:
        reason = grammar_problem(schema=spec.json_schema)
        if reason is not None:
            out.append(Problem(node.path + ("json_schema",), f"json_schema cannot be compiled: {reason}", node.id))
    if spec.choice_mode == "score" and spec.choices is None:
        message = "choice_mode applies to 'choices' only (this node has none)"
        out.append(Problem(node.path + ("choice_mode",), message, node.id))
    if spec.length_normalized and spec.choice_mode != "score":
        message = "length_normalized applies to choice_mode: score only (it ranks scored options by mean logprob)"
        out.append(Problem(node.path + ("length_normalized",), message, node.id))
    return out


def _sample_problems(node: DeclaredNode, spec: LlmNode) -> list[Problem]:
    """n > 1 needs sampling: greedy decoding and scoring would give n equal samples."""
    if spec.n == 1:
        return []
    if spec.choice_mode == "score":
        message = f"n={spec.n} with choice_mode: score: scoring is deterministic, every sample would be the same pick"
    elif spec.temperature == 0.0:
        message = (
            f"n={spec.n} needs sampling: with temperature 0 (greedy decoding) every sample would be the same "
            "text; set temperature > 0 or n: 1"
        )
    else:
        return []
    return [Problem(node.path + ("n",), message, node.id)]


def _prefix_of_scheme(text: str) -> bool:
    return "https://".startswith(text.lower()) or "http://".startswith(text.lower())
