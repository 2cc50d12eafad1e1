"""The loaded form of a model every format loader produces: `Checkpoint` and its canonical weights.

Canonical weight names (all float32, contiguous, [out, in] like torch Linear weights):
  embed [V,H]; final_norm [H]; lm_head [V,H] only when embeddings are not tied;
  layers.{i}.attn_norm [H]; layers.{i}.wq [nh*hd,H]; layers.{i}.wk / wv [nkv*hd,H];
  layers.{i}.wo [H,nh*hd]; layers.{i}.ffn_norm [H]; layers.{i}.w_gate / w_up [I,H]; layers.{i}.w_down [H,I].
q and k rows are in HF order, so the engine applies rotate_half (NeoX) RoPE.
The format loaders (`gguf_checkpoint.py`, `hf_checkpoint.py`) build it; `checkpoint.py` picks the loader.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

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


def expected_shapes(config: ModelConfig) -> dict[str, tuple[int, ...]]:
    """Every canonical weight name with its shape, in load order."""
    h, hd, inter = config.hidden_size, config.head_dim, config.intermediate_size
    q_out, kv_out = config.num_heads * hd, config.num_kv_heads * hd
    shapes: dict[str, tuple[int, ...]] = {"embed": (config.vocab_size, h)}
    for i in range(config.num_layers):
        p = f"layers.{i}."
        shapes |= {
            p + "attn_norm": (h,),
            p + "wq": (q_out, h),
            p + "wk": (kv_out, h),
            p + "wv": (kv_out, h),
            p + "wo": (h, q_out),
            p + "ffn_norm": (h,),
            p + "w_gate": (inter, h),
            p + "w_up": (inter, h),
            p + "w_down": (h, inter),
        }
    shapes["final_norm"] = (h,)
    if not config.tie_embeddings:
        shapes["lm_head"] = (config.vocab_size, h)
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
