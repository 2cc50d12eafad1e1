"""YAML loading that remembers where every key and list item was written (file and line)."""

from __future__ import annotations

from typing import Any

import yaml

from halo.spec.errors import SpecError, SpecIssue
from halo.spec.source_map import DocPath, Location, ScalarStart, SourceMap


def load_yaml(text: str, file: str | None = None) -> tuple[Any, SourceMap, list[tuple[DocPath, int, str]]]:
    """Parse one YAML document; return its data, its source map and non-fatal problems
    as (path, line, message): duplicate keys, which PyYAML would silently overwrite.

    A syntax error cannot be recovered from and raises SpecError at once, with the parser's line.
    """
    loader = yaml.SafeLoader(text)
    try:
        root = loader.get_single_node()
        data = loader.construct_document(root) if root is not None else None
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark is not None else None
        problem = exc.problem or exc.context or "unreadable YAML"
        raise SpecError([SpecIssue(f"YAML syntax error: {problem}", line=line, file=file)]) from None
    except yaml.YAMLError as exc:
        raise SpecError([SpecIssue(f"YAML error: {exc}", file=file)]) from None
    finally:
        loader.dispose()
    locations: dict[DocPath, Location] = {}
    scalars: dict[DocPath, ScalarStart] = {}
    issues: list[tuple[DocPath, int, str]] = []
    if root is not None:
        locations[()] = Location(file, root.start_mark.line + 1)
        _record(root, (), file, locations, scalars, issues)
    return data, SourceMap(file, locations, scalars), issues


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
