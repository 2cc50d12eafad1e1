"""From raw document data to a validated `WorkflowSpec`, collecting every error with its location.

Order: the header (everything but nodes) and each node are validated on their own with pydantic, so
one broken node does not hide the others; then the whole-workflow checks run over whatever
validated. Every problem becomes a `SpecIssue` with file, line and node id; if any exist, one
`SpecError` lists them all, sorted by line.
"""

from __future__ import annotations

import difflib
from collections.abc import Collection, Mapping
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from halo.spec.catalog import build_catalog
from halo.spec.consistency import check_workflow
from halo.spec.document import WorkflowHeader, WorkflowSpec
from halo.spec.errors import SpecError, SpecIssue
from halo.spec.limits import DEFAULT_LIMITS, Limits
from halo.spec.nodes import NODE_TYPES, AnyNode
from halo.spec.source_map import DocPath, SourceMap
from halo.spec.structured_output import load_schema_file
from halo.spec.template import make_environment


class Diagnostics:
    """Collects problems and turns document paths into file, line and node id."""

    def __init__(self, data: Any, source: SourceMap) -> None:
        self.data = data
        self.source = source
        self.issues: list[SpecIssue] = []

    def add(self, path: DocPath, message: str, node: str | None = None, line: int | None = None) -> None:
        location = self.source.locate(path)
        self.issues.append(
            SpecIssue(
                message,
                line if line is not None else location.line,
                node or self._node_at(path),
                location.file if location.file is not None else self.source.file,
            )
        )

    def _node_at(self, path: DocPath) -> str | None:
        if len(path) >= 2 and path[0] == "nodes" and isinstance(path[1], int) and isinstance(self.data, Mapping):
            nodes = self.data.get("nodes")
            if isinstance(nodes, list) and path[1] < len(nodes) and isinstance(nodes[path[1]], Mapping):
                node_id = nodes[path[1]].get("id")
                return str(node_id) if node_id is not None else f"#{path[1]}"
        return None

    def add_validation_error(self, prefix: DocPath, error: ValidationError, model: type) -> None:
        for item in error.errors():
            loc = tuple(item["loc"])
            path = prefix + loc
            self.add(path, _describe(item, loc, model))

    def raise_if_any(self) -> None:
        if self.issues:
            ordered = sorted(self.issues, key=lambda i: (i.line is None, i.line or 0))
            raise SpecError(ordered)


def _describe(item: Mapping[str, Any], loc: tuple[Any, ...], model: type) -> str:
    field = ".".join(str(part) for part in loc) or "(node)"
    kind = item["type"]
    if kind == "extra_forbidden":
        known = list(getattr(model, "model_fields", {}))
        guess = difflib.get_close_matches(str(loc[-1]), known, n=1)
        hint = f" (did you mean '{guess[0]}'?)" if guess else ""
        return f"unknown field '{field}'{hint}"
    if kind == "missing":
        return f"missing required field '{field}'"
    message = item["msg"].removeprefix("Value error, ")
    if kind == "string_type" and isinstance(item.get("input"), bool):
        message += "; YAML reads an unquoted yes/no/on/off/true/false as a boolean: quote it"
    if loc:
        return (
            f"invalid '{field}': {message} (got {item.get('input')!r})"
            if kind != "value_error"
            else f"invalid '{field}': {message}"
        )
    return message


def validate_document(
    data: Any,
    source: SourceMap,
    functions: Collection[str] = (),
    early: list[tuple[DocPath, int, str]] | None = None,
    limits: Limits = DEFAULT_LIMITS,
) -> WorkflowSpec:
    """Validate parsed document data; raises SpecError listing every problem found."""
    diagnostics = Diagnostics(data, source)
    for path, line, message in early or ():
        diagnostics.add(path, message, line=line)
    if not isinstance(data, Mapping):
        diagnostics.add((), "a workflow must be a mapping with 'name' and 'nodes'")
        diagnostics.raise_if_any()
    header, broken = _validate_header(data, diagnostics)
    base = Path(source.file).resolve().parent if source.file else Path.cwd()
    nodes, unchecked = _validate_nodes(data, diagnostics, base, limits)
    env = make_environment(limits)
    declared, template_problems = build_catalog(nodes, env)
    for problem in template_problems:
        line = None
        if problem.template_line is not None:
            line = source.template_line(problem.path, problem.template_line).line
        diagnostics.add(problem.path, problem.message, problem.node, line)
    for problem in check_workflow(header, declared, env, functions, broken, unchecked):
        diagnostics.add(problem.path, problem.message, problem.node)
    diagnostics.raise_if_any()
    return WorkflowSpec.model_validate({**header.model_dump(by_alias=True), "nodes": [n for n, _ in nodes]})


def _validate_header(data: Mapping[str, Any], diagnostics: Diagnostics) -> tuple[WorkflowHeader, set[str]]:
    raw = {key: value for key, value in data.items() if key != "nodes"}
    try:
        return WorkflowHeader.model_validate(raw), set()
    except ValidationError as exc:
        diagnostics.add_validation_error((), exc, WorkflowSpec)
        broken = {str(item["loc"][0]) for item in exc.errors() if item["loc"]}
    # Validate again without the broken sections so later checks still see the good ones.
    kept = {key: value for key, value in raw.items() if key not in broken}
    kept.setdefault("name", str(raw.get("name", "?")) or "?")
    try:
        return WorkflowHeader.model_validate(kept), broken
    except ValidationError:
        return WorkflowHeader(name="?"), broken | {"inputs", "models", "databases", "loops", "outputs"}


def _validate_nodes(
    data: Mapping[str, Any], diagnostics: Diagnostics, base: Path, limits: Limits
) -> tuple[list[tuple[AnyNode, DocPath]], set[str]]:
    """The nodes that validate (some only once their broken fields are left out), and the ids of
    nodes too broken for that, whose references later checks must accept unchecked. A `json_schema`
    naming a file (relative to `base`, the workflow's folder) is replaced by the schema it holds."""
    unchecked: set[str] = set()
    raw_nodes = data.get("nodes")
    if raw_nodes is None:
        diagnostics.add((), "missing required field 'nodes' (a workflow needs at least one node)")
        return [], unchecked
    if not isinstance(raw_nodes, list) or not raw_nodes:
        diagnostics.add(("nodes",), "'nodes' must be a non-empty list of node mappings")
        return [], unchecked
    valid: list[tuple[AnyNode, DocPath]] = []
    first_seen: dict[str, int] = {}
    for index, raw in enumerate(raw_nodes):
        path: DocPath = ("nodes", index)
        if not isinstance(raw, Mapping):
            diagnostics.add(path, f"node #{index} must be a mapping with 'id' and 'kind', got {type(raw).__name__}")
            continue
        node_id = raw.get("id")
        if isinstance(node_id, str):
            # Checked on the raw data so a duplicate is found even when the first copy is invalid.
            if node_id in first_seen:
                where = diagnostics.source.locate(("nodes", first_seen[node_id])).line
                diagnostics.add(path + ("id",), f"duplicate node id '{node_id}' (first declared at line {where})")
                continue
            first_seen[node_id] = index
        kind = raw.get("kind")
        if kind is None:
            if isinstance(node_id, str):
                unchecked.add(node_id)
            diagnostics.add(path, f"missing required field 'kind' (one of {', '.join(NODE_TYPES)})")
            continue
        model = NODE_TYPES.get(kind) if isinstance(kind, str) else None
        if model is None:
            if isinstance(node_id, str):
                unchecked.add(node_id)
            guess = difflib.get_close_matches(str(kind), list(NODE_TYPES), n=1)
            hint = f"; did you mean '{guess[0]}'?" if guess else ""
            diagnostics.add(
                path + ("kind",),
                f"unknown node kind '{kind}' (expected one of {', '.join(NODE_TYPES)}{hint})",
            )
            continue
        if kind == "llm" and isinstance(raw.get("json_schema"), str):
            raw = _with_schema_file(raw, path, base, limits, diagnostics)
        try:
            valid.append((model.model_validate(raw), path))
        except ValidationError as exc:
            diagnostics.add_validation_error(path, exc, model)
            # Check the node again without its broken fields, so its other problems are reported
            # too and references to it are not mistaken for references to an unknown node.
            broken = {item["loc"][0] for item in exc.errors() if item["loc"]}
            try:
                valid.append((model.model_validate({k: v for k, v in raw.items() if k not in broken}), path))
            except ValidationError:
                if isinstance(node_id, str):
                    unchecked.add(node_id)
    return valid, unchecked


def _with_schema_file(
    raw: Mapping[str, Any], path: DocPath, base: Path, limits: Limits, diagnostics: Diagnostics
) -> dict[str, Any]:
    """`raw` with its `json_schema: file.json` replaced by the file's schema (the raw document is kept
    as written). A file that cannot be used is reported here; the node then stays a JSON node, of any
    JSON (`{}`), so its readers' `.json` references are not reported as well."""
    try:
        schema = load_schema_file(raw["json_schema"], base, limits.max_yaml_bytes)
    except ValueError as exc:
        diagnostics.add(path + ("json_schema",), str(exc))
        schema = {}
    return {**raw, "json_schema": schema}
