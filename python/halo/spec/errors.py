"""Spec errors: every problem found in a workflow or a batch, each with its file, line and node."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from halo.errors import HaloError


@dataclass(frozen=True)
class SpecIssue:
    """One problem in a workflow spec: what is wrong and where (any location part may be unknown)."""

    message: str
    line: int | None = None
    node: str | None = None
    file: str | None = None

    def where(self) -> str:
        place = ""
        if self.file is not None:
            place = self.file if self.line is None else f"{self.file}:{self.line}"
        elif self.line is not None:
            place = f"line {self.line}"
        if self.node is not None:
            place = f"{place}, node '{self.node}'" if place else f"node '{self.node}'"
        return place

    def __str__(self) -> str:
        place = self.where()
        return f"{place}: {self.message}" if place else self.message


class SpecError(HaloError, ValueError):
    """A workflow spec is invalid; `issues` lists every problem found, not just the first."""

    def __init__(self, issues: Sequence[SpecIssue], title: str = "invalid workflow spec") -> None:
        self.issues: tuple[SpecIssue, ...] = tuple(issues)
        count = len(self.issues)
        lines = "\n".join(f"  - {issue}" for issue in self.issues)
        super().__init__(f"{title} ({count} error{'s' if count != 1 else ''}):\n{lines}")


class BatchError(SpecError):
    """Batch rows do not fit the workflow (a declared input is missing); each issue names its row."""


class TemplateRenderError(HaloError):
    """A template failed at render time: names the node, the template field and the variable."""

    def __init__(self, node: str, field: str, detail: str) -> None:
        self.node = node
        self.field = field
        self.detail = detail
        super().__init__(f"node '{node}', template '{field}': {detail}")
