"""An HF config.json as a `ModelConfig`: the family from model_type, its switches and per-layer attention.

Reads what transformers 4 and 5 write: RoPE as ``rope_theta`` + ``rope_scaling`` or as
``rope_parameters`` (flat, or per layer type for gemma3), windows from ``sliding_window`` and
``layer_types`` (or gemma3's ``sliding_window_pattern``, qwen's ``max_window_layers``), and a gemma3
config nested under ``text_config``. Whatever would change the maths and is not implemented is a
ModelLoadError naming the key and the family; nothing is silently ignored that transformers obeys.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from halo.engine.model_config import FAMILIES, LayerAttention, ModelConfig, RopeScaling
from halo.errors import ModelLoadError

# model_type → family; the gemma3 multimodal wrapper's text model is gemma3_text.
MODEL_TYPES = {
    "llama": "llama",
    "mistral": "mistral",
    "qwen2": "qwen2",
    "qwen3": "qwen3",
    "gemma3_text": "gemma3",
    "gemma3": "gemma3",
}
ARCHITECTURES = {
    "LlamaForCausalLM": "llama",
    "MistralForCausalLM": "mistral",
    "Qwen2ForCausalLM": "qwen2",
    "Qwen3ForCausalLM": "qwen3",
    "Gemma3ForCausalLM": "gemma3_text",
    "Gemma3ForConditionalGeneration": "gemma3",
}
ACTIVATIONS = {"silu": "silu", "gelu_pytorch_tanh": "gelu_tanh"}
# transformers' defaults where a config omits the key
DEFAULT_HEAD_DIM = {"qwen3": 128, "gemma3": 256}
DEFAULT_TIED = {"gemma3": True}
ROPE_KINDS = ("linear", "llama3", "yarn")
LAYER_TYPES = ("full_attention", "sliding_attention")


class _Reader:
    """One config dict with the file and family every error names."""

    def __init__(self, path: Path, raw: dict[str, Any], family: str) -> None:
        self.path, self.raw, self.family = path, raw, family

    def fail(self, what: str) -> ModelLoadError:
        return ModelLoadError(f"{self.path}: {what} ({self.family})")

    def need(self, key: str) -> Any:
        if self.raw.get(key) is None:
            raise ModelLoadError(f"{self.path}: key {key!r} is missing")
        return self.raw[key]

    def get(self, key: str, default: Any) -> Any:
        value = self.raw.get(key)
        return default if value is None else value


def config_from_json(path: Path) -> ModelConfig:
    """ModelConfig from an HF config.json of a supported family; ModelLoadError naming the key otherwise."""
    try:
        raw: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ModelLoadError(f"cannot read model config {path}: {exc}") from exc
    if not isinstance(raw, dict):
        raise ModelLoadError(f"{path} does not hold a JSON object")
    archs = raw.get("architectures") or []
    model_type = raw.get("model_type") or next((ARCHITECTURES[a] for a in archs if a in ARCHITECTURES), None)
    if model_type not in MODEL_TYPES:
        found = model_type or ", ".join(archs) or "none given"
        supported = ", ".join(sorted(MODEL_TYPES))
        raise ModelLoadError(f"{path}: model_type {found!r} is not supported (supported: {supported})")
    family = MODEL_TYPES[model_type]
    if raw.get("quantization_config"):
        raise ModelLoadError(f"{path}: quantization_config is not supported ({family}; load an unquantized checkpoint)")
    if model_type == "gemma3":  # the multimodal wrapper: the decoder is its text_config
        text = raw.get("text_config")
        if not isinstance(text, dict):
            raise ModelLoadError(f"{path}: model_type 'gemma3' without a text_config object")
        raw = {"tie_word_embeddings": raw.get("tie_word_embeddings")} | {k: v for k, v in text.items() if v is not None}
    r = _Reader(path, raw, family)
    fam = FAMILIES[family]
    act_key = "hidden_activation" if family == "gemma3" and "hidden_activation" in raw else "hidden_act"
    act = r.get(act_key, "gelu_pytorch_tanh" if family == "gemma3" else "silu")
    if ACTIVATIONS.get(act) != fam.activation:
        raise r.fail(f"{act_key} {act!r} is not supported")
    hidden, heads = int(r.need("hidden_size")), int(r.need("num_attention_heads"))
    layers = int(r.need("num_hidden_layers"))
    head_dim = int(r.get("head_dim", DEFAULT_HEAD_DIM.get(family, hidden // heads)))
    context = int(r.get("max_position_embeddings", 2048))
    attention_bias = bool(r.get("attention_bias", False))
    gemma = family == "gemma3"
    if gemma and r.get("use_bidirectional_attention", False):
        raise r.fail("use_bidirectional_attention true is not supported")
    attention = _layer_attention(r, layers, context)
    return ModelConfig(
        name=path.parent.name,
        num_layers=layers,
        hidden_size=hidden,
        num_heads=heads,
        num_kv_heads=int(r.get("num_key_value_heads", heads)),
        head_dim=head_dim,
        intermediate_size=int(r.need("intermediate_size")),
        vocab_size=int(r.need("vocab_size")),
        rope_theta=attention[-1].rope_theta,  # informative once `layers` is set (gemma3: a global layer's)
        rms_eps=float(r.get("rms_norm_eps", 1e-6)),
        context_length=context,
        tie_embeddings=bool(r.get("tie_word_embeddings", DEFAULT_TIED.get(family, False))),
        family=family,
        norm=fam.norm,
        activation=fam.activation,
        # qwen2's q/k/v always carry biases; llama, qwen3 and gemma3 put them on all four projections
        qkv_bias=fam.qkv_bias or (attention_bias and family != "mistral"),
        o_bias=attention_bias and family not in ("mistral", "qwen2"),
        mlp_bias=family == "llama" and bool(r.get("mlp_bias", False)),
        qk_norm=fam.qk_norm,
        sandwich_norms=fam.sandwich_norms,
        embed_scale=math.sqrt(hidden) if fam.scale_embeddings else None,
        query_pre_attn_scalar=float(r.get("query_pre_attn_scalar", 256)) if gemma else None,
        # Gemma 3 replaced attention soft-capping by q/k norms: transformers keeps attn_logit_softcapping
        # in the config but never applies it, so neither does halo (attn_softcap stays None).
        final_softcap=float(raw["final_logit_softcapping"]) if gemma and raw.get("final_logit_softcapping") else None,
        # plain RoPE everywhere and no window stays the empty default (the Llama config it always was)
        layers=() if all(a == LayerAttention(attention[0].rope_theta) for a in attention) else tuple(attention),
    )


def _layer_attention(r: _Reader, num_layers: int, context: int) -> list[LayerAttention]:
    """Each layer's RoPE and window, as transformers 5 resolves them for the family."""
    raw, family = r.raw, r.family
    if r.get("partial_rotary_factor", 1.0) != 1.0:
        raise r.fail(f"partial_rotary_factor {raw['partial_rotary_factor']!r} is not supported")
    window = raw.get("sliding_window")
    if family == "gemma3":
        pattern = int(r.get("sliding_window_pattern", r.get("_sliding_window_pattern", 6)))
        types = r.get(
            "layer_types", ["sliding_attention" if (i + 1) % pattern else "full_attention" for i in range(num_layers)]
        )
        params = raw.get("rope_parameters") or {}
        full = dict(params.get("full_attention") or {}) | dict(raw.get("rope_scaling") or {})
        full.setdefault("rope_theta", r.get("rope_theta", 1e6))
        local = dict(params.get("sliding_attention") or {})
        local.setdefault("rope_theta", r.get("rope_local_base_freq", 1e4))
        where = "rope_parameters" if params else "rope_scaling"
        ropes = {
            "full_attention": _rope(r, f"{where}.full_attention" if params else where, full, context),
            "sliding_attention": _rope(r, f"{where}.sliding_attention", local, context),
        }
    else:
        if family == "mistral":
            types = ["sliding_attention" if window else "full_attention"] * num_layers
        elif family in ("qwen2", "qwen3"):
            if not r.get("use_sliding_window", False):
                window = None
            first = int(r.get("max_window_layers", 28))
            types = r.get(
                "layer_types",
                [
                    "sliding_attention" if window is not None and i >= first else "full_attention"
                    for i in range(num_layers)
                ],
            )
        else:
            types = ["full_attention"] * num_layers
        # transformers 5: rope_scaling, when a config has it, wins over rope_parameters
        where = "rope_scaling" if raw.get("rope_scaling") else "rope_parameters"
        params = dict(raw.get(where) or {})
        params.setdefault("rope_theta", r.get("rope_theta", 10000.0))
        rope = _rope(r, where, params, context)
        ropes = {"full_attention": rope, "sliding_attention": rope}
    if len(types) != num_layers or any(t not in LAYER_TYPES for t in types):
        raise r.fail(f"layer_types {types!r} is not supported (one of {', '.join(LAYER_TYPES)} per layer)")
    if "sliding_attention" in types and not (isinstance(window, int) and window > 0):
        raise r.fail(f"sliding_window {window!r} is not a positive integer but layers slide")
    out = []
    for t in types:
        theta, scaling = ropes[t]
        out.append(LayerAttention(theta, scaling, window if t == "sliding_attention" else None))
    return out


def _rope(r: _Reader, where: str, params: dict[str, Any], context: int) -> tuple[float, RopeScaling | None]:
    """(base, scaling) from one RoPE dict; `where` names it in errors."""
    kind_key = "rope_type" if "rope_type" in params else "type"
    kind = params.get(kind_key) or "default"
    theta = float(params["rope_theta"])
    if params.get("partial_rotary_factor", 1.0) != 1.0:
        raise r.fail(f"{where}.partial_rotary_factor {params['partial_rotary_factor']!r} is not supported")
    if kind == "default":
        return theta, None
    if kind not in ROPE_KINDS:
        raise r.fail(f"{where}.{kind_key} {kind!r} is not supported")
    original = int(params.get("original_max_position_embeddings") or context)
    factor = params.get("factor")
    if factor is None and kind == "yarn":
        factor = context / original
    if factor is None:
        raise r.fail(f"{where}.factor is missing")

    def opt(key: str) -> float | None:
        return None if params.get(key) is None else float(params[key])

    scaling = RopeScaling(
        kind=kind,
        factor=float(factor),
        original_context=original,
        low_freq_factor=float(params.get("low_freq_factor", 1.0)),
        high_freq_factor=float(params.get("high_freq_factor", 4.0)),
        beta_fast=float(params.get("beta_fast") or 32.0),
        beta_slow=float(params.get("beta_slow") or 1.0),
        attention_factor=opt("attention_factor"),
        mscale=opt("mscale"),
        mscale_all_dim=opt("mscale_all_dim"),
        truncate=bool(params.get("truncate", True)),
    )
    if kind == "llama3" and ("low_freq_factor" not in params or "high_freq_factor" not in params):
        raise r.fail(f"{where}: llama3 scaling needs low_freq_factor and high_freq_factor")
    return theta, scaling
