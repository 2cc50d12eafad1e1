"""The LLM engine: a decoder model of any supported family over a paged KV cache with continuous
batching and prefix reuse.

The names below load on first use (module ``__getattr__``), so a light submodule such as
``halo.engine.model_source`` (what ``halo models`` reads) imports without torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from halo.engine.llm_engine import EngineStats, LLMEngine
    from halo.engine.output_format import OutputFormat
    from halo.engine.sampling_params import GenerationResult, SamplingParams

__all__ = ["EngineStats", "GenerationResult", "LLMEngine", "OutputFormat", "SamplingParams"]

_HOMES = {
    "EngineStats": "halo.engine.llm_engine",
    "LLMEngine": "halo.engine.llm_engine",
    "OutputFormat": "halo.engine.output_format",
    "GenerationResult": "halo.engine.sampling_params",
    "SamplingParams": "halo.engine.sampling_params",
}


def __getattr__(name: str) -> Any:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module 'halo.engine' has no attribute {name!r}")
    return getattr(importlib.import_module(home), name)
