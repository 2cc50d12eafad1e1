"""The LLM engine: a Llama-family model over a paged KV cache with continuous batching and prefix reuse."""

from halo.engine.llm_engine import EngineStats, LLMEngine
from halo.engine.sampling_params import GenerationResult, SamplingParams

__all__ = ["EngineStats", "GenerationResult", "LLMEngine", "SamplingParams"]
