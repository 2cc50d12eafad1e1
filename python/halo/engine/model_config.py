"""The shape and the family switches of a decoder model: everything the one forward needs, as data.

Every family the engine runs (llama, mistral, qwen2, qwen3, gemma3) is the same pre-norm decoder
with a few switches: how RMSNorm applies its weight, the MLP's gate activation, which projections
carry biases, per-head q/k norms, gemma's extra norms after attention and around the MLP, a scaled
embedding, the attention score scale, soft-capping, and per layer its RoPE and sliding window.
`FAMILIES` holds what each family fixes; a format loader (HF config.json, GGUF metadata) reads the
rest from the checkpoint and builds one `ModelConfig`. docs/models.md explains each switch.
"""

from __future__ import annotations

from dataclasses import MISSING, dataclass, fields
from typing import Literal

NormKind = Literal["rms", "gemma"]  # rms: w * x_hat (Llama); gemma: x_hat * (1 + w), rounded once
Activation = Literal["silu", "gelu_tanh"]  # SwiGLU or GeGLU (tanh-approximated GELU)
RopeKind = Literal["linear", "llama3", "yarn"]


@dataclass(frozen=True)
class RopeScaling:
    """A RoPE frequency rescaling, with the parameters transformers' rope_utils reads for its kind."""

    kind: RopeKind
    factor: float
    original_context: int = 0  # pre-training context (llama3, yarn)
    low_freq_factor: float = 1.0  # llama3
    high_freq_factor: float = 4.0  # llama3
    beta_fast: float = 32.0  # yarn
    beta_slow: float = 1.0  # yarn
    attention_factor: float | None = None  # yarn: cos/sin multiplier; None = derived from factor/mscale
    mscale: float | None = None  # yarn
    mscale_all_dim: float | None = None  # yarn
    truncate: bool = True  # yarn: round the correction range to whole dimensions


@dataclass(frozen=True)
class LayerAttention:
    """What differs between the attention layers of one model: its RoPE and its sliding window."""

    rope_theta: float
    rope_scaling: RopeScaling | None = None
    window: int | None = None  # a query sees the last `window` positions, itself included; None = all


@dataclass(frozen=True)
class Family:
    """What a family fixes in the forward whatever the checkpoint says (format-neutral)."""

    name: str
    norm: NormKind = "rms"
    activation: Activation = "silu"
    qkv_bias: bool = False  # q/k/v projections always carry biases (qwen2)
    qk_norm: bool = False  # per-head RMSNorm of q and k before RoPE
    sandwich_norms: bool = False  # norms after attention and after the MLP too (gemma3)
    scale_embeddings: bool = False  # embeddings multiplied by sqrt(hidden_size), rounded to the dtype


FAMILIES: dict[str, Family] = {
    f.name: f
    for f in (
        Family("llama"),
        Family("mistral"),
        Family("qwen2", qkv_bias=True),
        Family("qwen3", qk_norm=True),
        Family(
            "gemma3", norm="gemma", activation="gelu_tanh", qk_norm=True, sandwich_norms=True, scale_embeddings=True
        ),
    )
}


@dataclass(frozen=True)
class ModelConfig:
    """Hyper-parameters and family switches of a decoder, read from GGUF metadata or an HF config.json.

    The defaults after ``tie_embeddings`` are plain Llama (SmolLM2): a config built with only the first
    twelve fields is the model the engine always ran.
    """

    name: str
    num_layers: int
    hidden_size: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    intermediate_size: int
    vocab_size: int
    rope_theta: float  # every layer's RoPE base unless `layers` says otherwise
    rms_eps: float
    context_length: int
    tie_embeddings: bool
    family: str = "llama"
    norm: NormKind = "rms"
    activation: Activation = "silu"
    qkv_bias: bool = False
    o_bias: bool = False
    mlp_bias: bool = False
    qk_norm: bool = False
    sandwich_norms: bool = False
    embed_scale: float | None = None  # multiply embeddings by this (gemma3: sqrt(hidden_size))
    query_pre_attn_scalar: float | None = None  # scores scale by this ** -0.5 instead of head_dim ** -0.5
    attn_softcap: float | None = None  # scores -> cap * tanh(scores / cap) before the softmax
    final_softcap: float | None = None  # logits -> cap * tanh(logits / cap)
    layers: tuple[LayerAttention, ...] = ()  # per layer; empty = LayerAttention(rope_theta) everywhere

    def __post_init__(self) -> None:
        if self.layers and len(self.layers) != self.num_layers:
            raise ValueError(f"layers has {len(self.layers)} entries for {self.num_layers} layers")

    def layer(self, index: int) -> LayerAttention:
        """The RoPE and window of layer ``index``."""
        return self.layers[index] if self.layers else LayerAttention(self.rope_theta)

    @property
    def is_plain_llama(self) -> bool:
        """Whether every switch has its default: Llama without biases, RoPE scaling or windows."""
        return all(getattr(self, f.name) == f.default for f in fields(self) if f.default is not MISSING)

    @property
    def attention_scale(self) -> float:
        """What q·k is multiplied by before the softmax."""
        base = self.query_pre_attn_scalar if self.query_pre_attn_scalar is not None else self.head_dim
        return base**-0.5

    @property
    def kv_values_per_token(self) -> int:
        """Values one token occupies in the KV cache across all layers (keys and values)."""
        return self.num_layers * 2 * self.num_kv_heads * self.head_dim
