"""The engine as the runtime hands it to the online layer: what `halo.serve` needs for chat completions.

serve builds on the runtime and never imports the engine itself (imports point down: serve → runtime →
engine): its chat loops step an `LLMEngine` with `SamplingParams` (an `OutputFormat` for `response_format`)
and read back `GenerationResult`s, and `halo serve` builds an `LLMEngine` of `DEFAULT_MODEL` (or the model
asked for) when no compiled workflow already holds the chat model.
"""

from halo.engine import GenerationResult, LLMEngine, SamplingParams
from halo.engine.model_source import DEFAULT_MODEL
from halo.engine.output_format import OutputFormat

__all__ = ["DEFAULT_MODEL", "GenerationResult", "LLMEngine", "OutputFormat", "SamplingParams"]
