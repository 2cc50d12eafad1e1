"""Tiny random checkpoints of every supported family, built with transformers from a config (no download).

Each spec is a transformers config (hidden 64, 2-4 layers, 4 query heads over 2 KV heads) whose
weights are re-drawn large enough that attention is peaked and every switch (norm gains, biases,
q/k norms, windows, RoPE scaling) moves the logits well past the 1e-4 the tests compare at. The
tokenizer is a byte-level BPE trained here on a few sentences, saved as tokenizer.json beside the
weights, so the directory is what a user would bring. transformers is a test-only dependency.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

CORPUS = [
    "The quick brown fox jumps over the lazy dog while the farmer watches from the gate.",
    "Order 1042 shipped late because of a storm; the customer Alice asked for a refund.",
    "def add(a, b):\n    return a + b\n\nprint(add(2, 3))",
    "Numbers like 12345 and 3.14159 appear in tables, invoices and scientific papers.",
    "In the morning the market opens, traders shout prices and the bell rings at nine.",
]
SPECIAL_TOKENS = ["<|endoftext|>", "<bos>", "<|im_start|>", "<|im_end|>"]
VOCAB_SIZE = 384

COMMON: dict[str, Any] = {
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "head_dim": 16,
    "max_position_embeddings": 256,
    "rms_norm_eps": 1e-6,
}


@dataclass(frozen=True)
class TinySpec:
    """One tiny model: a name, its transformers config class and the keys that make it that variant."""

    name: str
    config_class: str
    keys: dict[str, Any] = field(default_factory=dict)
    window: int | None = None  # the sliding window some layers use (the tests make prompts longer)


SPECS = [
    TinySpec(
        "llama3",
        "LlamaConfig",
        {
            "num_hidden_layers": 2,
            "rope_theta": 500000.0,
            "rope_scaling": {
                "rope_type": "llama3",
                "factor": 8.0,
                "low_freq_factor": 1.0,
                "high_freq_factor": 4.0,
                "original_max_position_embeddings": 32,
            },
        },
    ),
    TinySpec(
        "llama2-linear-tied-bias",
        "LlamaConfig",
        {
            "num_hidden_layers": 2,
            "tie_word_embeddings": True,
            "attention_bias": True,
            "mlp_bias": True,
            "rope_scaling": {"rope_type": "linear", "factor": 2.0},
        },
    ),
    TinySpec("mistral", "MistralConfig", {"num_hidden_layers": 2, "sliding_window": 8}, window=8),
    TinySpec(
        "qwen2-yarn-window",
        "Qwen2Config",
        {
            "num_hidden_layers": 3,
            "rope_theta": 1000000.0,
            "use_sliding_window": True,
            "sliding_window": 8,
            "max_window_layers": 1,
            "rope_scaling": {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 64},
        },
        window=8,
    ),
    TinySpec("qwen3", "Qwen3Config", {"num_hidden_layers": 2, "rope_theta": 1000000.0, "tie_word_embeddings": True}),
    TinySpec(
        "gemma3",
        "Gemma3TextConfig",
        {
            "num_hidden_layers": 4,
            "sliding_window": 8,
            "sliding_window_pattern": 2,
            "query_pre_attn_scalar": 24,
            "final_logit_softcapping": 30.0,
            "rope_parameters": {
                "sliding_attention": {"rope_type": "default", "rope_theta": 10000.0},
                "full_attention": {"rope_type": "linear", "factor": 8.0, "rope_theta": 1000000.0},
            },
        },
        window=8,
    ),
]
SPEC_BY_NAME = {s.name: s for s in SPECS}


def train_tokenizer(directory: Path) -> Any:
    """A small byte-level BPE (the `tokenizers` library) saved as tokenizer.json + tokenizer_config.json."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(CORPUS * 4, trainer)
    directory.mkdir(parents=True, exist_ok=True)
    tok.save(str(directory / "tokenizer.json"))
    config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "eos_token": "<|endoftext|>",
        "bos_token": "<bos>",
        "add_bos_token": False,
    }
    (directory / "tokenizer_config.json").write_text(json.dumps(config), encoding="utf-8")
    return tok


def build(spec: TinySpec, directory: Path, seed: int = 0) -> Any:
    """Write the spec's HF directory (config.json, model.safetensors, tokenizer) and return the fp32
    transformers model (eager attention: what soft-capping needs, and the plainest reference)."""
    import transformers

    tok = train_tokenizer(directory)
    vocab = tok.get_vocab_size()
    config_class = getattr(transformers, spec.config_class)
    config = config_class(
        **COMMON,
        **spec.keys,
        vocab_size=vocab,
        eos_token_id=tok.token_to_id("<|endoftext|>"),
        bos_token_id=tok.token_to_id("<bos>"),
        pad_token_id=None,
    )
    config._attn_implementation = "eager"
    torch.manual_seed(seed)
    model = transformers.AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    randomize(model, gemma=spec.config_class.startswith("Gemma"))
    model.eval()
    model.save_pretrained(directory)
    return model


@torch.no_grad()
def randomize(model: Any, gemma: bool) -> None:
    """Redraw every parameter so no switch is a no-op: norm gains off 1, biases non-zero, peaked attention."""
    g = torch.Generator().manual_seed(1234)
    for name, p in model.named_parameters():
        if name.endswith("norm.weight"):
            base = 0.0 if gemma else 1.0  # gemma's norms apply 1 + w
            p.copy_(base + 0.2 * torch.randn(p.shape, generator=g))
        elif name.endswith("bias"):
            p.copy_(0.2 * torch.randn(p.shape, generator=g))
        elif "embed_tokens" in name:
            p.copy_((0.25 if gemma else 1.0) * torch.randn(p.shape, generator=g))
        else:
            p.copy_(0.15 * torch.randn(p.shape, generator=g))
