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


# -- the same tiny models as GGUF files, written the way llama.cpp's converter writes them ---------

# GGUF can say less than config.json: llama.cpp fixes gemma3's score scale to head_dim ** -0.5 and
# has no per-layer windows for qwen2, so those two variants drop what a GGUF cannot carry.
GGUF_SPECS = [
    s
    if s.name not in ("gemma3", "qwen2-yarn-window")
    else TinySpec(
        s.name.replace("-window", ""),
        s.config_class,
        {k: v for k, v in s.keys.items() if k not in ("use_sliding_window", "sliding_window", "max_window_layers")}
        if s.name != "gemma3"
        else s.keys | {"query_pre_attn_scalar": COMMON["head_dim"]},
        window=s.window if s.name == "gemma3" else None,
    )
    for s in SPECS
]
GGUF_SPEC_BY_NAME = {s.name: s for s in GGUF_SPECS}
GGUF_ARCH = {"LlamaConfig": "llama", "MistralConfig": "llama", "Qwen2Config": "qwen2", "Qwen3Config": "qwen3"}


def gguf_metadata_from_tokenizer(directory: Path, pre: str) -> dict[str, Any]:
    """tokenizer.ggml.* keys of a byte-level BPE tokenizer.json, as llama.cpp's converter writes them."""
    raw = json.loads((directory / "tokenizer.json").read_text(encoding="utf-8"))
    vocab: dict[str, int] = raw["model"]["vocab"] | {t["content"]: t["id"] for t in raw["added_tokens"]}
    tokens = [tok for tok, _ in sorted(vocab.items(), key=lambda kv: kv[1])]
    special = {t["content"] for t in raw["added_tokens"] if t.get("special")}
    merges = [m if isinstance(m, str) else " ".join(m) for m in raw["model"]["merges"]]
    cfg = json.loads((directory / "tokenizer_config.json").read_text(encoding="utf-8"))
    return {
        "tokenizer.ggml.model": "gpt2",
        "tokenizer.ggml.pre": pre,
        "tokenizer.ggml.tokens": tokens,
        "tokenizer.ggml.token_type": [3 if t in special else 1 for t in tokens],
        "tokenizer.ggml.merges": merges,
        "tokenizer.ggml.eos_token_id": vocab[cfg["eos_token"]],
        "tokenizer.ggml.bos_token_id": vocab[cfg["bos_token"]],
        "tokenizer.ggml.add_bos_token": bool(cfg.get("add_bos_token", False)),
    }


def add_metadata(writer: Any, meta: dict[str, Any]) -> None:
    """Write plain Python values with the GGUF type their value implies (ints as u32, floats as f32)."""
    for key, value in meta.items():
        if isinstance(value, bool):
            writer.add_bool(key, value)
        elif isinstance(value, int):
            writer.add_uint32(key, value)
        elif isinstance(value, float):
            writer.add_float32(key, value)
        elif isinstance(value, str):
            writer.add_string(key, value)
        else:
            writer.add_array(key, value)  # the element type follows the Python values


def write_metadata_gguf(path: Path, arch: str, meta: dict[str, Any]) -> Path:
    """A GGUF file of `meta` and no tensors (load errors, tokenizers)."""
    import gguf

    writer = gguf.GGUFWriter(str(path), arch)
    add_metadata(writer, meta)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def _permute(w: Any, n_head: int) -> Any:
    # llama.cpp's LlamaModel.permute: HF rotate_half rows → GGML's interleaved pairs
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def _unpermute(w: Any, n_head: int) -> Any:
    return w.reshape(n_head, w.shape[0] // n_head // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def llama3_rope_factors(head_dim: int, theta: float, scaling: dict[str, Any]) -> Any:
    """The rope_freqs tensor llama.cpp's converter writes for `rope_type: llama3` (its formula)."""
    import math

    import numpy as np

    freqs = 1.0 / (theta ** (np.arange(0, head_dim, 2, dtype=np.float32) / head_dim))
    factor, low, high = scaling["factor"], scaling["low_freq_factor"], scaling["high_freq_factor"]
    old = scaling["original_max_position_embeddings"]
    out = []
    for freq in freqs:
        wavelen = 2 * math.pi / freq
        if wavelen < old / high:
            out.append(1.0)
        elif wavelen > old / low:
            out.append(factor)
        else:
            smooth = (old / wavelen - low) / (high - low)
            out.append(1 / ((1 - smooth) / factor + smooth))
    return np.array(out, dtype=np.float32)


def write_gguf(
    spec: TinySpec, model: Any, directory: Path, path: Path, quant: str = "F32", extra: dict[str, Any] | None = None
) -> dict[str, torch.Tensor]:
    """Write `model` (built by `build` into `directory`) as a GGUF at `path`, tensors in `quant`
    (F32, F16 or Q8_0 for the matrices; norms and biases stay F32 as in llama.cpp).

    Returns the HF state dict the file holds (rounded/dequantized, back in HF's convention), which
    a transformers reference loads so it computes with exactly the file's numbers. `extra` adds
    GGUF tensors by name (arrays), for files halo must refuse.
    """
    import gguf
    import numpy as np

    cfg = model.config
    gemma = spec.config_class.startswith("Gemma")
    arch = "gemma3" if gemma else GGUF_ARCH[spec.config_class]
    heads, kv_heads, head_dim = cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim
    meta: dict[str, Any] = {
        "general.architecture": arch,
        "general.name": spec.name,
        f"{arch}.block_count": cfg.num_hidden_layers,
        f"{arch}.context_length": cfg.max_position_embeddings,
        f"{arch}.embedding_length": cfg.hidden_size,
        f"{arch}.feed_forward_length": cfg.intermediate_size,
        f"{arch}.attention.head_count": heads,
        f"{arch}.attention.head_count_kv": kv_heads,
        f"{arch}.attention.key_length": head_dim,
        f"{arch}.attention.value_length": head_dim,
        f"{arch}.attention.layer_norm_rms_epsilon": float(cfg.rms_norm_eps),
    }
    rope = dict(getattr(cfg, "rope_parameters", None) or {})
    if gemma:
        full, local = rope["full_attention"], rope["sliding_attention"]
        meta[f"{arch}.rope.freq_base"] = float(full["rope_theta"])
        meta[f"{arch}.rope.freq_base_swa"] = float(local["rope_theta"])
        if full.get("rope_type") == "linear":
            meta[f"{arch}.rope.scaling.type"] = "linear"
            meta[f"{arch}.rope.scaling.factor"] = float(full["factor"])
        meta[f"{arch}.attention.sliding_window"] = cfg.sliding_window
        meta[f"{arch}.attention.sliding_window_pattern"] = [t == "sliding_attention" for t in cfg.layer_types]
        if cfg.final_logit_softcapping:
            meta[f"{arch}.final_logit_softcapping"] = float(cfg.final_logit_softcapping)
    else:
        meta[f"{arch}.rope.freq_base"] = float(rope["rope_theta"])
        kind = rope.get("rope_type", "default")
        if kind in ("linear", "yarn"):
            meta[f"{arch}.rope.scaling.type"] = kind
            meta[f"{arch}.rope.scaling.factor"] = float(rope["factor"])
        if kind == "yarn":
            meta[f"{arch}.rope.scaling.original_context_length"] = rope["original_max_position_embeddings"]
        if arch == "llama":
            meta[f"{arch}.rope.dimension_count"] = head_dim
            meta[f"{arch}.vocab_size"] = cfg.vocab_size
        if getattr(cfg, "sliding_window", None) and spec.config_class == "MistralConfig":
            meta[f"{arch}.attention.sliding_window"] = cfg.sliding_window
    meta |= gguf_metadata_from_tokenizer(directory, "gpt2")

    qtype = gguf.GGMLQuantizationType[quant]
    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH[arch.upper()], cfg.num_hidden_layers)
    writer = gguf.GGUFWriter(str(path), arch)
    add_metadata(writer, {k: v for k, v in meta.items() if k != "general.architecture"})
    held: dict[str, torch.Tensor] = {}
    if spec.config_class == "LlamaConfig" and rope.get("rope_type") == "llama3":
        writer.add_tensor("rope_freqs.weight", llama3_rope_factors(head_dim, float(rope["rope_theta"]), rope))
    for hf_name, tensor in model.state_dict().items():
        if hf_name == "lm_head.weight" and cfg.tie_word_embeddings:
            continue
        name = names.get_name(hf_name, try_suffixes=(".weight", ".bias"))
        assert name is not None, hf_name
        w = tensor.detach().to(torch.float64).numpy()
        permuted = arch == "llama" and (".q_proj." in hf_name or ".k_proj." in hf_name)
        n_head = heads if ".q_proj." in hf_name else kv_heads
        if permuted:
            w = _permute(w, n_head)
        if gemma and hf_name.endswith("norm.weight"):
            w = w + 1.0  # llama.cpp folds Gemma's 1 + w into the stored weight
        stored = w.astype(np.float32)
        if stored.ndim == 2 and qtype != gguf.GGMLQuantizationType.F32:
            data = stored.astype(np.float16) if quant == "F16" else gguf.quants.quantize(stored, qtype)
            writer.add_tensor(name, data, raw_dtype=qtype)
            back = np.asarray(gguf.quants.dequantize(data, qtype), dtype=np.float64).reshape(stored.shape)
        else:
            writer.add_tensor(name, stored)
            back = stored.astype(np.float64)
        if gemma and hf_name.endswith("norm.weight"):
            back = back - 1.0
        if permuted:
            back = _unpermute(back, n_head)
        held[hf_name] = torch.from_numpy(np.ascontiguousarray(back)).to(torch.float32)
    for name, array in (extra or {}).items():
        writer.add_tensor(name, array)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return held
