"""`Limits`: the resource bounds a workflow is loaded and rendered under, with their defaults.

One frozen value carried by the `Workflow` (`Workflow.from_yaml(path, limits=Limits(...))`) into the
YAML loader, the template environment and the request renderer. Each bound, when exceeded, is a
located error (`SpecError` with file and line at load, `TemplateRenderError` with node and field at
render time), never a hang, a traceback or an unbounded allocation. `docs/security/limits.md`
explains each one.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

MIB = 1024 * 1024


@dataclass(frozen=True)
class Limits:
    # -- load time (the YAML document) --
    max_yaml_bytes: int = 4 * MIB  # size of a workflow file or text, in UTF-8 bytes
    max_yaml_depth: int = 100  # nesting of mappings and sequences, aliases expanded
    max_yaml_nodes: int = 50_000  # scalars, mappings and sequences, every alias expanded (billion laughs)
    # -- load time (each template) --
    max_template_depth: int = 20  # nesting of brackets and block tags ({% for %}, {% if %}, ...)
    # -- render time (each template slot of each instance) --
    max_render_chars: int = 1_000_000  # characters one slot may render to (or one value it builds)
    max_render_seconds: float = 2.0  # wall time one slot may take to render
    max_prompt_chars: int = 1_000_000  # characters of an llm node's rendered system + prompt, before tokenizing

    def __post_init__(self) -> None:
        for item in fields(self):
            value = getattr(self, item.name)
            if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
                raise ValueError(f"Limits.{item.name} must be a positive number, got {value!r}")


DEFAULT_LIMITS = Limits()
