"""Halo: batch query processing and optimization for agentic LLM workflows.

``halo.Workflow`` is the entry point (``Workflow.from_yaml(path)`` or the builder);
``halo.compile(workflow).run(batch)`` runs it over a batch. Heavy parts
(torch, the engine) are imported only when first used, so ``import halo`` stays fast.
"""

from typing import Any

__version__ = "0.1.0"
__all__ = ["Workflow", "__version__", "compile"]


def __getattr__(name: str) -> Any:
    if name == "Workflow":
        from halo.spec import Workflow

        return Workflow
    if name == "compile":
        from halo.runtime.compiled import compile

        return compile
    raise AttributeError(f"module 'halo' has no attribute {name!r}")
