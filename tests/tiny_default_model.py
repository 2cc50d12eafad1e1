"""A tiny random model with the default model's tokenizer, saved as an HF directory (no download).

Two layers of width 32: it loads in milliseconds, so tests that start engines in other processes (Ray
actors) stay fast, while prompts, chat templates and token ids are the default model's own. Mapped
over the default source (`models={"smollm2-135m": str(path)}`), a workflow runs on it unchanged.
"""

from __future__ import annotations

from pathlib import Path

import torch
from halo.engine.checkpoint import load_tokenizer
from halo.engine.checkpoint_layout import Checkpoint, expected_shapes
from halo.engine.hf_checkpoint import save_hf_checkpoint
from halo.engine.model_config import ModelConfig

SOURCE = "smollm2-135m"  # the default model source the tiny model stands in for


def build_tiny_default(directory: Path, seed: int = 0, context_length: int = 512) -> Path:
    """Write the tiny model into `directory` (created) and return it."""
    tokenizer = load_tokenizer()  # the default model's tokenizer only: no weights are read
    config = ModelConfig(
        name="tiny",
        num_layers=2,
        hidden_size=32,
        num_heads=4,
        num_kv_heads=2,
        head_dim=8,
        intermediate_size=64,
        vocab_size=tokenizer.vocab_size,
        rope_theta=10000.0,
        rms_eps=1e-5,
        context_length=context_length,
        tie_embeddings=True,
    )
    generator = torch.Generator().manual_seed(seed)
    weights = {
        name: (torch.ones(shape) if len(shape) == 1 else torch.randn(shape, generator=generator) * 0.2)
        for name, shape in expected_shapes(config).items()
    }
    save_hf_checkpoint(Checkpoint(directory, config, weights, tokenizer), directory)
    return directory
