"""The shape of a Llama-family model: the few numbers the engine needs to size weights and KV cache."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ModelConfig:
    """Hyper-parameters of a Llama-family decoder, read from GGUF metadata or an HF config.json."""

    name: str
    num_layers: int
    hidden_size: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    intermediate_size: int
    vocab_size: int
    rope_theta: float
    rms_eps: float
    context_length: int
    tie_embeddings: bool

    @property
    def kv_values_per_token(self) -> int:
        """Values one token occupies in the KV cache across all layers (keys and values)."""
        return self.num_layers * 2 * self.num_kv_heads * self.head_dim
