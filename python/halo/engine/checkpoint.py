"""A loaded model: its config, fp32 weights under canonical names, and its tokenizer.

Canonical weight names (all float32, contiguous, [out, in] like torch Linear weights):
  embed [V,H]; final_norm [H]; lm_head [V,H] only when embeddings are not tied;
  layers.{i}.attn_norm [H]; layers.{i}.wq [nh*hd,H]; layers.{i}.wk / wv [nkv*hd,H];
  layers.{i}.wo [H,nh*hd]; layers.{i}.ffn_norm [H]; layers.{i}.w_gate / w_up [I,H]; layers.{i}.w_down [H,I].
q and k rows are in HF order, so the engine applies rotate_half (NeoX) RoPE.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, replace
from pathlib import Path

import torch

from halo.engine.model_config import ModelConfig
from halo.engine.model_source import DEFAULT_MODEL, REGISTRY, resolve_model_path
from halo.engine.tokenizer import Tokenizer
from halo.errors import ModelLoadError


@dataclass
class Checkpoint:
    """Everything the engine needs to build a model; `path` is the .gguf file or HF directory."""

    path: Path
    config: ModelConfig
    weights: dict[str, torch.Tensor]
    tokenizer: Tokenizer


def load_checkpoint(
    name_or_path: str | os.PathLike[str] | None = None,
    cache_dir: str | os.PathLike[str] | None = None,
) -> Checkpoint:
    """Load a registered model name, a .gguf file or an HF Llama directory (None = the default model)."""
    # The format loaders build Checkpoints themselves, so they import this module; importing them
    # here, at call time, keeps that from being a cycle.
    from halo.engine.gguf_checkpoint import load_gguf_checkpoint
    from halo.engine.hf_checkpoint import load_hf_checkpoint

    path = resolve_model_path(name_or_path, cache_dir)
    ckpt = load_hf_checkpoint(path) if path.is_dir() else load_gguf_checkpoint(path)
    key = os.fspath(name_or_path) if name_or_path is not None else None
    if key is None or key in REGISTRY:
        # A model asked for by its short name is reported under that name, not its file stem.
        ckpt.config = replace(ckpt.config, name=key or DEFAULT_MODEL)
    return ckpt


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


def load_tokenizer(
    name_or_path: str | os.PathLike[str] | None = None,
    cache_dir: str | os.PathLike[str] | None = None,
) -> Tokenizer:
    """Only the tokenizer of a model (no weights are read): what planning and explain need."""
    from halo.engine.gguf_checkpoint import load_gguf_tokenizer

    path = resolve_model_path(name_or_path, cache_dir)
    return Tokenizer.from_hf_dir(path) if path.is_dir() else load_gguf_tokenizer(path)
