"""Loading a model by registered name, .gguf file or HF directory (any supported family) into a `Checkpoint`.

The `Checkpoint` it returns (config, weights under canonical names, tokenizer) is defined in
`checkpoint_layout.py`, which the format loaders build on; this module only picks the loader. Loads
go through the conversion cache (`checkpoint_cache.py`): the first converts and stores, later ones map.
"""

from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path

import torch

from halo.engine.checkpoint_cache import cached_tokenizer, load_through_cache
from halo.engine.checkpoint_layout import Checkpoint
from halo.engine.hf_checkpoint import load_hf_checkpoint
from halo.engine.model_source import DEFAULT_MODEL, REGISTRY, default_cache_dir, resolve_model_path
from halo.engine.tokenizer import Tokenizer

__all__ = ["Checkpoint", "load_checkpoint", "load_tokenizer"]


def load_checkpoint(
    name_or_path: str | os.PathLike[str] | None = None,
    cache_dir: str | os.PathLike[str] | None = None,
    dtype: torch.dtype = torch.float32,
    use_cache: bool = True,
) -> Checkpoint:
    """Load a registered model name, a .gguf file or an HF directory (None = the default model).

    The weights come in ``dtype`` (the engine's compute dtype saves it a cast), mapped from the
    conversion cache under ``cache_dir`` when an entry exists; ``use_cache=False`` converts afresh.
    """
    path = resolve_model_path(name_or_path, cache_dir)
    if use_cache:
        cache = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
        ckpt = load_through_cache(path, dtype, cache, _convert).checkpoint
    else:
        ckpt = _convert(path)
        ckpt.weights = {name: w.to(dtype) for name, w in ckpt.weights.items()}
    key = os.fspath(name_or_path) if name_or_path is not None else None
    if key is None or key in REGISTRY:
        # A model asked for by its short name is reported under that name, not its file stem.
        ckpt.config = replace(ckpt.config, name=key or DEFAULT_MODEL)
    return ckpt


def _convert(path: Path) -> Checkpoint:
    if path.is_dir():
        return load_hf_checkpoint(path)
    # imported here: the gguf package costs start-up time (~0.1 s) that a cached load never needs
    from halo.engine.gguf_checkpoint import load_gguf_checkpoint

    return load_gguf_checkpoint(path)


def load_tokenizer(
    name_or_path: str | os.PathLike[str] | None = None,
    cache_dir: str | os.PathLike[str] | None = None,
) -> Tokenizer:
    """Only the tokenizer of a model (no weights are read): what planning and explain need.

    From a conversion cache entry's header when one exists (a GGUF's metadata is slow to parse)."""
    path = resolve_model_path(name_or_path, cache_dir)
    cached = cached_tokenizer(path, Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir())
    if cached is not None:
        return cached
    if path.is_dir():
        return Tokenizer.from_hf_dir(path)
    from halo.engine.gguf_checkpoint import load_gguf_tokenizer  # see _convert

    return load_gguf_tokenizer(path)
