"""YAML loading that remembers where every key and list item was written (file and line).

Loading is bounded (`halo.spec.limits.Limits`): the text's size, the nesting depth and the number of
nodes with every alias expanded are checked while the document is composed, before anything is
built from it, so a billion-laughs document or a self-containing alias (`&n [*n]`) is refused at
its line in milliseconds instead of expanding in memory. Every failure is a `SpecError` with file
and line; values PyYAML cannot construct (an int of 5,000 digits, a timestamp on day 45) too.
"""

from __future__ import annotations

from typing import Any

import yaml

try:
    from yaml.cyaml import CParser
except ImportError:  # PyYAML built without libyaml
    CParser = None  # type: ignore[assignment,misc]
from yaml.composer import Composer, ComposerError
from yaml.constructor import ConstructorError, SafeConstructor
from yaml.parser import Parser
from yaml.reader import Reader
from yaml.resolver import Resolver
from yaml.scanner import Scanner, ScannerError

from halo.spec.errors import SpecError, SpecIssue
from halo.spec.limits import DEFAULT_LIMITS, Limits
from halo.spec.source_map import DocPath, Location, ScalarStart, SourceMap


def load_yaml(
    text: str, file: str | None = None, limits: Limits = DEFAULT_LIMITS
) -> tuple[Any, SourceMap, list[tuple[DocPath, int, str]]]:
    """Parse one YAML document; return its data, its source map and non-fatal problems
    as (path, line, message): duplicate keys, which PyYAML would silently overwrite.

    A syntax error or an exceeded bound cannot be recovered from and raises SpecError at once,
    with the parser's line.
    """
    try:
        size = len(text.encode("utf-8"))
    except UnicodeEncodeError as exc:  # a lone surrogate: no file can hold it, libyaml refuses it
        line = text.count("\n", 0, exc.start) + 1
        column = exc.start - (text.rfind("\n", 0, exc.start) + 1) + 1
        message = f"YAML error: unacceptable character {text[exc.start]!r} (column {column}): not Unicode text"
        raise SpecError([SpecIssue(message, line=line, file=file)]) from None
    if size > limits.max_yaml_bytes:
        message = f"workflow is {size} bytes, more than the limit of {limits.max_yaml_bytes} (Limits.max_yaml_bytes)"
        raise SpecError([SpecIssue(message, file=file)])
    loader: _BoundedLoader | None = None
    try:
        loader = _BoundedLoader(text, limits)  # the reader refuses unprintable characters here
        root = loader.get_single_node()
        data = loader.construct_document(root) if root is not None else None
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark is not None else None
        column = f" (column {mark.column + 1})" if mark is not None else ""
        problem = exc.problem or exc.context or "unreadable YAML"
        kind = "YAML error" if isinstance(exc, ComposerError | ConstructorError) else "YAML syntax error"
        raise SpecError([SpecIssue(f"{kind}: {problem}{column}", line=line, file=file)]) from None
    except yaml.reader.ReaderError as exc:
        position = exc.position if isinstance(exc.position, int) else _first_unprintable(text)
        line = text.count("\n", 0, position) + 1
        column = position - (text.rfind("\n", 0, position) + 1) + 1
        problem = f"unacceptable character {text[position : position + 1]!r} (column {column}): {exc.reason}"
        raise SpecError([SpecIssue(f"YAML error: {problem}", line=line, file=file)]) from None
    except yaml.YAMLError as exc:
        raise SpecError([SpecIssue(f"YAML error: {exc}", file=file)]) from None
    finally:
        if loader is not None:
            loader.dispose()
    locations: dict[DocPath, Location] = {}
    scalars: dict[DocPath, ScalarStart] = {}
    issues: list[tuple[DocPath, int, str]] = []
    if root is not None:
        locations[()] = Location(file, root.start_mark.line + 1)
        _record(root, (), file, locations, scalars, issues)
    return data, SourceMap(file, locations, scalars), issues


class _Measuring(Composer):
    """A composer that measures each node as it is composed: expanded size and depth, aliases included.

    Composition is bottom-up, so a node's size (1 + its children's, an alias counting as the whole
    node it names) is known when it closes; the document's expansion is thus measured in time and
    memory proportional to the text, never to the expansion.
    """

    def __init__(self, limits: Limits) -> None:
        super().__init__()
        self._limits = limits
        self._measure: dict[int, tuple[int, int]] = {}  # id(node) -> (expanded nodes, expanded depth)
        self._open_anchors: set[str] = set()  # anchors of the collections being composed
        self._nesting = 0
        self._total = 0  # nodes of the document so far, aliases expanded: stops a long flat list early too

    def compose_node(self, parent: yaml.Node | None, index: Any) -> yaml.Node:
        event = self.peek_event()
        if isinstance(event, yaml.AliasEvent):
            if event.anchor in self._open_anchors:
                problem = f"alias '*{event.anchor}' is inside the node it names (a recursive structure)"
                raise ComposerError(None, None, problem, event.start_mark)
            node = super().compose_node(parent, index)
            self._count(self._measure[id(node)][0], event.start_mark)
            self._check(node, event.start_mark, f"alias '*{event.anchor}'")
            return node
        self._count(1, event.start_mark)
        self._nesting += 1
        if self._nesting > self._limits.max_yaml_depth:
            problem = f"nested deeper than {self._limits.max_yaml_depth} levels (Limits.max_yaml_depth)"
            raise ComposerError(None, None, problem, event.start_mark)
        anchor = event.anchor if isinstance(event, yaml.CollectionStartEvent) else None
        if anchor is not None:
            self._open_anchors.add(anchor)
        try:
            node = super().compose_node(parent, index)
        finally:
            self._nesting -= 1
            self._open_anchors.discard(anchor)  # type: ignore[arg-type]
        self._measure[id(node)] = self._expanded(node)
        self._check(node, event.start_mark, "this value")
        return node

    def _expanded(self, node: yaml.Node) -> tuple[int, int]:
        if isinstance(node, yaml.SequenceNode):
            children = [self._measure[id(item)] for item in node.value]
        elif isinstance(node, yaml.MappingNode):
            children = [self._measure[id(part)] for pair in node.value for part in pair]
        else:
            return 1, 1
        return 1 + sum(size for size, _ in children), 1 + max((depth for _, depth in children), default=0)

    def _count(self, nodes: int, mark: yaml.Mark) -> None:
        self._total += nodes
        if self._total > self._limits.max_yaml_nodes:
            problem = (
                f"the document expands to more than {self._limits.max_yaml_nodes} nodes here"
                " (Limits.max_yaml_nodes; each alias counts as a copy of what it names)"
            )
            raise ComposerError(None, None, problem, mark)

    def _check(self, node: yaml.Node, mark: yaml.Mark, what: str) -> None:
        depth = self._measure[id(node)][1]
        limits = self._limits
        if depth > limits.max_yaml_depth:
            problem = f"{what} nests deeper than {limits.max_yaml_depth} levels (Limits.max_yaml_depth)"
            raise ComposerError(None, None, problem, mark)

    def construct_object(self, node: yaml.Node, deep: bool = False) -> Any:
        try:
            return super().construct_object(node, deep)
        except yaml.YAMLError:
            raise
        except Exception as exc:  # noqa: BLE001 - PyYAML's constructors on user text: every failure is the text's
            # e.g. int() refusing 5,000 digits, datetime() refusing month 13, `!!int` with no digits
            # (IndexError): PyYAML lets these escape unlocated.
            problem = f"cannot read value {node.value!r:.60}: {exc}"
            raise ConstructorError(None, None, problem, node.start_mark) from None


def _record(
    node: yaml.Node,
    path: DocPath,
    file: str | None,
    locations: dict[DocPath, Location],
    scalars: dict[DocPath, ScalarStart],
    issues: list[tuple[DocPath, int, str]],
) -> None:
    if isinstance(node, yaml.ScalarNode):
        scalars[path] = ScalarStart(node.start_mark.line + 1, node.style in ("|", ">"))
    elif isinstance(node, yaml.SequenceNode):
        for index, item in enumerate(node.value):
            locations[path + (index,)] = Location(file, item.start_mark.line + 1)
            _record(item, path + (index,), file, locations, scalars, issues)
    elif isinstance(node, yaml.MappingNode):
        for key_node, value_node in node.value:
            if not isinstance(key_node, yaml.ScalarNode) or key_node.value == "<<":
                continue
            child = path + (key_node.value,)
            line = key_node.start_mark.line + 1
            if child in locations:
                issues.append((child, line, f"duplicate key '{key_node.value}'"))
            else:
                locations[child] = Location(file, line)
            _record(value_node, child, file, locations, scalars, issues)


if CParser is not None:

    class _BoundedLoader(_Measuring, CParser, SafeConstructor, Resolver):
        """libyaml scans and parses (10x faster than PyYAML's Python scanner, and caps flow nesting
        itself); composing, where the bounds are checked, and constructing stay in Python."""

        def __init__(self, text: str, limits: Limits) -> None:
            CParser.__init__(self, text)
            SafeConstructor.__init__(self)
            Resolver.__init__(self)
            _Measuring.__init__(self, limits)

else:  # PyYAML built without libyaml

    class _BoundedLoader(_Measuring, Reader, Scanner, Parser, SafeConstructor, Resolver):  # type: ignore[no-redef]
        def __init__(self, text: str, limits: Limits) -> None:
            Reader.__init__(self, text)
            Scanner.__init__(self)
            Parser.__init__(self)
            SafeConstructor.__init__(self)
            Resolver.__init__(self)
            _Measuring.__init__(self, limits)

        def fetch_flow_collection_start(self, token_class: type) -> None:
            # PyYAML's scanner is quadratic in flow depth (it revisits every open level per token):
            # `[[[[...` must stop while it is scanned.
            super().fetch_flow_collection_start(token_class)
            if self.flow_level > self._limits.max_yaml_depth:
                problem = f"nested deeper than {self._limits.max_yaml_depth} levels (Limits.max_yaml_depth)"
                raise ScannerError(None, None, problem, self.get_mark())


def _first_unprintable(text: str) -> int:
    found = Reader.NON_PRINTABLE.search(text)
    return found.start() if found is not None else 0
