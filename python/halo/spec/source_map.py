"""Where each part of a spec was written: a map from document paths to file and line.

A path is the tuple of keys and list indexes that leads to a value, e.g. ("nodes", 2, "prompt").
YAML documents fill it from the parser's marks; the Python builder fills it from its callers' frames.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

DocPath = tuple[str | int, ...]


@dataclass(frozen=True)
class Location:
    """A file (None for text given inline) and a 1-based line."""

    file: str | None
    line: int | None


@dataclass(frozen=True)
class ScalarStart:
    """Where a scalar value's text begins, so a template's own line numbers map onto the file."""

    line: int
    block: bool  # a `|` or `>` block scalar: its first text line is the line after the indicator


@dataclass(frozen=True)
class SourceMap:
    """Locations of the keys and list items of one spec document."""

    file: str | None = None
    locations: Mapping[DocPath, Location] = field(default_factory=dict)
    scalars: Mapping[DocPath, ScalarStart] = field(default_factory=dict)

    def locate(self, path: DocPath) -> Location:
        """The location of `path`, or of its nearest recorded ancestor (a missing key's mapping)."""
        for end in range(len(path), -1, -1):
            found = self.locations.get(_normalize(path[:end]))
            if found is not None:
                return found
        return Location(self.file, None)

    def template_line(self, path: DocPath, template_line: int) -> Location:
        """The file line of line `template_line` (1-based) of the template stored at `path`."""
        start = self.scalars.get(_normalize(path))
        if start is None:
            return self.locate(path)
        offset = template_line if start.block else template_line - 1
        return Location(self.locate(path).file, start.line + offset)


def _normalize(path: DocPath) -> DocPath:
    # YAML keys are recorded as strings; pydantic reports list indexes as ints and keys as strings.
    return tuple(part if isinstance(part, int) else str(part) for part in path)
