"""The loaded form of a model every format loader produces: `Checkpoint` and its canonical weights.

Canonical weight names (all float32, contiguous, [out, in] like torch Linear weights):
  embed [V,H]; final_norm [H]; lm_head [V,H] only when embeddings are not tied;
  layers.{i}.attn_norm [H]; layers.{i}.wq [nh*hd,H]; layers.{i}.wk / wv [nkv*hd,H];
  layers.{i}.wo [H,nh*hd]; layers.{i}.ffn_norm [H]; layers.{i}.w_gate / w_up [I,H]; layers.{i}.w_down [H,I].
Present only when the config's switches ask for them:
  qkv_bias: layers.{i}.bq [nh*hd], bk / bv [nkv*hd]; o_bias: layers.{i}.bo [H];
  mlp_bias: layers.{i}.b_gate / b_up [I], b_down [H]; qk_norm: layers.{i}.q_norm / k_norm [hd];
  sandwich_norms: layers.{i}.attn_post_norm [H] (after attention, before the residual add) and
  layers.{i}.ffn_post_norm [H] (after the MLP); ffn_norm is always the norm before the MLP.
Norm weights are stored as the checkpoint holds them (gemma's ``1 + w`` is applied by the model).
q and k rows are in HF order, so the engine applies rotate_half (NeoX) RoPE.
The format loaders (`gguf_checkpoint.py`, `hf_checkpoint.py`) build it; `checkpoint.py` picks the loader.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from halo.engine.grammar_vocabulary import GrammarVocabulary
from halo.engine.model_config import ModelConfig
from halo.engine.tokenizer import Tokenizer
from halo.errors import ModelLoadError


@dataclass
class Checkpoint:
    """Everything the engine needs to build a model; `path` is the .gguf file or HF directory."""

    path: Path
    config: ModelConfig
    weights: dict[str, torch.Tensor]
    tokenizer: Tokenizer
    # the tokenizer as the grammar engine reads it, stored by the conversion cache (grammar_vocabulary.py)
    grammar_vocabulary: GrammarVocabulary | None = None


def layer_shapes(config: ModelConfig) -> dict[str, tuple[int, ...]]:
    """The canonical per-layer names (without the ``layers.{i}.`` prefix) with their shapes, in load order."""
    h, hd, inter = config.hidden_size, config.head_dim, config.intermediate_size
    q_out, kv_out = config.num_heads * hd, config.num_kv_heads * hd
    shapes: dict[str, tuple[int, ...]] = {
        "attn_norm": (h,),
        "wq": (q_out, h),
        "wk": (kv_out, h),
        "wv": (kv_out, h),
        "wo": (h, q_out),
        "ffn_norm": (h,),
        "w_gate": (inter, h),
        "w_up": (inter, h),
        "w_down": (h, inter),
    }
    if config.qkv_bias:
        shapes |= {"bq": (q_out,), "bk": (kv_out,), "bv": (kv_out,)}
    if config.o_bias:
        shapes["bo"] = (h,)
    if config.mlp_bias:
        shapes |= {"b_gate": (inter,), "b_up": (inter,), "b_down": (h,)}
    if config.qk_norm:
        shapes |= {"q_norm": (hd,), "k_norm": (hd,)}
    if config.sandwich_norms:
        shapes |= {"attn_post_norm": (h,), "ffn_post_norm": (h,)}
    return shapes


def expected_shapes(config: ModelConfig) -> dict[str, tuple[int, ...]]:
    """Every canonical weight name with its shape, in load order."""
    shapes: dict[str, tuple[int, ...]] = {"embed": (config.vocab_size, config.hidden_size)}
    per_layer = layer_shapes(config)
    for i in range(config.num_layers):
        shapes |= {f"layers.{i}.{name}": shape for name, shape in per_layer.items()}
    shapes["final_norm"] = (config.hidden_size,)
    if not config.tie_embeddings:
        shapes["lm_head"] = (config.vocab_size, config.hidden_size)
    return shapes


def check_weights(path: Path, config: ModelConfig, weights: dict[str, torch.Tensor]) -> None:
    """Raise ModelLoadError naming `path` unless `weights` holds exactly the expected shapes."""
    expected = expected_shapes(config)
    missing = [name for name in expected if name not in weights]
    if missing:
        shown = ", ".join(missing[:8]) + (f" and {len(missing) - 8} more" if len(missing) > 8 else "")
        raise ModelLoadError(f"{path}: missing tensors {shown}")
    for name, shape in expected.items():
        got = tuple(weights[name].shape)
        if got != shape:
            raise ModelLoadError(f"{path}: tensor {name} has shape {list(got)}, expected {list(shape)}")
