"""Halo: batch query processing and optimization for agentic LLM workflows.

``halo.Workflow`` is the entry point (``Workflow.from_yaml(path)`` or the builder). Heavy parts
(torch, the engine) are imported only when first used, so ``import halo`` stays fast.
"""

from typing import Any

__version__ = "0.1.0"
__all__ = ["Workflow", "__version__"]


def __getattr__(name: str) -> Any:
    if name == "Workflow":
        from halo.spec import Workflow

        return Workflow
    raise AttributeError(f"module 'halo' has no attribute {name!r}")
