"""`Workflow`: the user's handle on a workflow, from YAML (`from_yaml`) or the Python builder.

Both paths produce the same document data and run the same validation, so they compare equal:

    wf = (Workflow("triage").inputs("ticket")
          .llm("classify", prompt="Ticket: {{ ticket }}", max_tokens=4)
          .outputs(category="classify.output"))
    assert wf == Workflow.from_yaml("triage.yaml")

Builder methods return a new Workflow (the receiver is unchanged) and remember the caller's file
and line, so validation errors point at the builder call that introduced the problem.
"""

from __future__ import annotations

import copy
import os
import sys
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import yaml

from halo.spec.batch_check import check_batch
from halo.spec.document import WorkflowSpec
from halo.spec.errors import SpecError, SpecIssue
from halo.spec.graph import WorkflowGraph
from halo.spec.limits import DEFAULT_LIMITS, Limits
from halo.spec.source_map import DocPath, Location, SourceMap
from halo.spec.unrolling import build_graph
from halo.spec.validation import validate_document
from halo.spec.yaml_source import load_yaml


class Workflow:
    """A workflow document, validated on first use (builder) or at load (YAML)."""

    def __init__(self, name: str, *, description: str | None = None) -> None:
        self._doc: dict[str, Any] = {"name": name}
        if description is not None:
            self._doc["description"] = description
        self._locations: dict[DocPath, Location] = {("name",): _caller()}
        self._functions: dict[str, Callable[..., Any]] = {}
        self._file: str | None = None
        self._early: list[tuple[DocPath, int, str]] = []
        self._limits = DEFAULT_LIMITS
        self._spec: WorkflowSpec | None = None
        self._graph: WorkflowGraph | None = None

    # -- loading -------------------------------------------------------------------------------

    @classmethod
    def from_yaml(
        cls,
        source: str | bytes | os.PathLike[str],
        *,
        functions: Mapping[str, Callable[..., Any]] | None = None,
        limits: Limits = DEFAULT_LIMITS,
    ) -> Workflow:
        """Load and validate a YAML workflow from a path, YAML text or UTF-8 bytes; raises SpecError.

        `limits` bounds the document at load and its templates at render time (`halo.spec.limits`).
        """
        text, file = _read(source, limits)
        data, source_map, early = load_yaml(text, file, limits)
        workflow = cls.__new__(cls)
        workflow._doc = data if isinstance(data, dict) else {"name": data}
        workflow._locations = dict(source_map.locations)
        workflow._functions = dict(functions or {})
        workflow._file = file
        workflow._early = early
        workflow._limits = limits
        workflow._spec = None
        workflow._graph = None
        workflow._spec = validate_document(data, source_map, workflow._functions, early, limits)
        return workflow

    # -- building ------------------------------------------------------------------------------

    def inputs(self, *names: str) -> Workflow:
        """Declare the columns every batch row must have."""
        where = _caller()
        out = self._derive()
        current = list(out._doc.get("inputs", []))
        out._locations.setdefault(("inputs",), where)
        for name in names:
            out._locations[("inputs", len(current))] = where
            current.append(name)
        out._doc["inputs"] = current
        return out

    def model(self, name: str, source: str, **fields: Any) -> Workflow:
        """Declare a model: a registered name, a local .gguf file or an HF directory."""
        return self._derive()._put(("models", name), {"source": source, **fields}, _caller())

    def database(self, name: str, kind: str = "duckdb", **fields: Any) -> Workflow:
        return self._derive()._put(("databases", name), {"kind": kind, **fields}, _caller())

    def llm(self, id: str, prompt: str | None = None, **fields: Any) -> Workflow:
        return self._derive()._add_node("llm", id, {"prompt": prompt, **fields}, _caller())

    def sql(self, id: str, query: str | None = None, **fields: Any) -> Workflow:
        return self._derive()._add_node("sql", id, {"query": query, **fields}, _caller())

    def http(self, id: str, url: str | None = None, **fields: Any) -> Workflow:
        return self._derive()._add_node("http", id, {"url": url, **fields}, _caller())

    def python(self, id: str, function: str | Callable[..., Any] | None = None, **fields: Any) -> Workflow:
        """A python node; `function` is "package.module:function" or a callable to register."""
        out = self._derive()
        if callable(function):
            key = f"{function.__module__}:{function.__qualname__}"
            out._functions[key] = function
            function = key
        return out._add_node("python", id, {"function": function, **fields}, _caller())

    def rule(self, id: str, input: str | None = None, **fields: Any) -> Workflow:
        return self._derive()._add_node("rule", id, {"input": input, **fields}, _caller())

    def node(self, kind: str, id: str, **fields: Any) -> Workflow:
        """A node of any kind (what a YAML `nodes:` entry holds)."""
        return self._derive()._add_node(kind, id, fields, _caller())

    def loop(self, nodes: Iterable[str], max_iterations: int, until: str | None = None) -> Workflow:
        entry: dict[str, Any] = {"nodes": list(nodes), "max_iterations": max_iterations}
        if until is not None:
            entry["until"] = until
        out = self._derive()
        loops = list(out._doc.get("loops", []))
        out._locations[("loops", len(loops))] = _caller()
        out._doc["loops"] = [*loops, entry]
        return out

    def outputs(self, **targets: str) -> Workflow:
        """Name the results: `category="classify.output"`."""
        out = self._derive()
        where = _caller()
        out._locations.setdefault(("outputs",), where)
        for name, target in targets.items():
            out._put(("outputs", name), target, where)
        return out

    def with_limits(self, limits: Limits) -> Workflow:
        """The same workflow loaded and rendered under other bounds (`halo.spec.limits.Limits`)."""
        out = self._derive()
        out._limits = limits
        return out

    def register(self, name: str, function: Callable[..., Any]) -> Workflow:
        """Make `function` callable from python nodes as `function: <name>`."""
        out = self._derive()
        out._functions[name] = function
        return out

    # -- results -------------------------------------------------------------------------------

    @property
    def name(self) -> str:
        return str(self._doc.get("name"))

    @property
    def spec(self) -> WorkflowSpec:
        """The validated document (raises SpecError listing every problem)."""
        if self._spec is None:
            source = SourceMap(self._file, self._locations)
            self._spec = validate_document(self._doc, source, self._functions, self._early, self._limits)
        return self._spec

    @property
    def graph(self) -> WorkflowGraph:
        """The static DAG: tool calls decoupled, loops unrolled, references resolved."""
        if self._graph is None:
            self._graph = build_graph(self.spec, self._limits)
        return self._graph

    @property
    def limits(self) -> Limits:
        return self._limits

    @property
    def functions(self) -> Mapping[str, Callable[..., Any]]:
        return dict(self._functions)

    @property
    def base_dir(self) -> Path:
        """Where relative paths in the workflow (database files, init scripts) are resolved from:
        the YAML file's folder, else the current directory."""
        return Path(self._file).resolve().parent if self._file else Path.cwd()

    def validate(self) -> Workflow:
        self.spec  # noqa: B018 - validation happens on first access
        return self

    def check_batch(self, rows: Iterable[Any], file: str | None = None) -> int:
        """Raise BatchError naming each row that lacks a declared input; returns the row count."""
        return check_batch(rows, self.spec.inputs, file)

    def to_dict(self) -> dict[str, Any]:
        """The document with defaults left out (each node keeps its id and kind first)."""
        spec = self.spec
        data = spec.model_dump(mode="json", by_alias=True, exclude_defaults=True, exclude={"nodes"})
        data["nodes"] = [
            {
                "id": node.id,
                "kind": node.kind,
                **node.model_dump(mode="json", by_alias=True, exclude_defaults=True),
            }
            for node in spec.nodes
        ]
        return data

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False, allow_unicode=True)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Workflow):
            return NotImplemented
        return self.spec == other.spec and self._functions == other._functions

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        nodes = self._doc.get("nodes", [])
        return f"Workflow({self.name!r}, {len(nodes) if isinstance(nodes, list) else '?'} nodes)"

    # -- internals -----------------------------------------------------------------------------

    def _derive(self) -> Workflow:
        out = Workflow.__new__(Workflow)
        out._doc = copy.deepcopy(self._doc)
        out._locations = dict(self._locations)
        out._functions = dict(self._functions)
        out._file = self._file
        out._early = list(self._early)
        out._limits = self._limits
        out._spec = None
        out._graph = None
        return out

    def _put(self, path: tuple[str, str], value: Any, where: Location) -> Workflow:
        section = dict(self._doc.get(path[0], {}))
        section[path[1]] = value
        self._doc[path[0]] = section
        self._locations.setdefault((path[0],), where)
        self._locations[path] = where
        return self

    def _add_node(self, kind: str, id: str, fields: Mapping[str, Any], where: Location) -> Workflow:
        nodes = list(self._doc.get("nodes", []))
        entry = {"id": id, "kind": kind, **{k: v for k, v in fields.items() if v is not None}}
        self._locations[("nodes", len(nodes))] = where
        self._doc["nodes"] = [*nodes, entry]
        return self


def _caller() -> Location:
    # Two frames up: past this helper and the builder method, to the user's line.
    frame = sys._getframe(2)
    return Location(frame.f_code.co_filename, frame.f_lineno)


def _read(source: str | bytes | os.PathLike[str], limits: Limits) -> tuple[str, str | None]:
    """The workflow's text and its file (None for text given inline); never more than the size bound."""
    if isinstance(source, bytes):
        return _decode(source, None), None
    if isinstance(source, os.PathLike) or ("\n" not in source and source.endswith((".yaml", ".yml"))):
        path = Path(source)
        try:
            with path.open("rb") as handle:
                data = handle.read(limits.max_yaml_bytes + 1)  # never read a huge file whole
        except OSError as exc:
            raise SpecError([SpecIssue(f"cannot read workflow file: {exc.strerror}", file=str(path))]) from None
        if len(data) > limits.max_yaml_bytes:
            message = f"workflow file is larger than the limit of {limits.max_yaml_bytes} bytes (Limits.max_yaml_bytes)"
            raise SpecError([SpecIssue(message, file=str(path))])
        return _decode(data, str(path)), str(path)
    return source, None


def _decode(data: bytes, file: str | None) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        column = exc.start - (data.rfind(b"\n", 0, exc.start) + 1) + 1
        message = (
            f"not UTF-8 text: byte {exc.start} (0x{data[exc.start]:02x}, line {line}, column {column}) "
            f"cannot be decoded: {exc.reason}"
        )
        raise SpecError([SpecIssue(message, line=line, file=file)]) from None
