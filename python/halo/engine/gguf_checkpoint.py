"""Read a Llama GGUF file into a Checkpoint: metadata → ModelConfig, tensors dequantized to fp32.

llama.cpp's converter permutes the rows of attn_q/attn_k for GGML's interleaved RoPE; they are
permuted back here so every checkpoint uses HF's rotate_half convention (MODEL-NOTES recipe 3b).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import gguf
import numpy as np
import torch
from gguf.gguf_reader import ReaderTensor

from halo.engine.checkpoint_layout import Checkpoint, check_weights
from halo.engine.model_config import ModelConfig
from halo.engine.tokenizer import Tokenizer
from halo.errors import ModelLoadError

SUPPORTED_ARCHITECTURES = ("llama",)

# canonical per-layer name → GGUF per-layer name
LAYER_TENSORS = {
    "attn_norm": "attn_norm",
    "wq": "attn_q",
    "wk": "attn_k",
    "wv": "attn_v",
    "wo": "attn_output",
    "ffn_norm": "ffn_norm",
    "w_gate": "ffn_gate",
    "w_up": "ffn_up",
    "w_down": "ffn_down",
}


def load_gguf_checkpoint(path: Path) -> Checkpoint:
    """Load a GGUF file; every failure is a ModelLoadError that names the file."""
    reader = open_gguf(path)
    meta = read_metadata(reader)
    # The parsed fields (~100k small arrays for the vocab) are ~150 MB; drop them before dequantizing.
    reader.fields.clear()
    config = config_from_metadata(path, meta, reader)
    sources = tensor_sources(path, reader, config)  # cheap checks first, before seconds of dequantizing
    tokenizer = Tokenizer.from_gguf_metadata(meta, source=str(path))
    weights = dequantize_weights(path, reader, config, sources)
    del sources, reader  # drops the memmap; only the fp32 torch copies stay alive
    check_weights(path, config, weights)
    return Checkpoint(path=path, config=config, weights=weights, tokenizer=tokenizer)


def load_gguf_tokenizer(path: Path) -> Tokenizer:
    """Only the tokenizer of a GGUF file (no tensors are dequantized)."""
    return Tokenizer.from_gguf_metadata(read_metadata(open_gguf(path)), source=str(path))


def open_gguf(path: Path) -> gguf.GGUFReader:
    """A memory-mapped reader whose every tensor lies inside the file."""
    if not path.is_file():
        raise ModelLoadError(f"model file {path} does not exist")
    try:
        reader = gguf.GGUFReader(path)
    except Exception as exc:
        # gguf raises ValueError, IndexError, struct errors … on a truncated or foreign file.
        raise ModelLoadError(f"{path} is not a readable GGUF file (truncated or corrupt?): {exc}") from exc
    size = len(reader.data)
    for t in reader.tensors:
        end = t.data_offset + t.n_bytes
        if end > size:
            raise ModelLoadError(
                f"{path} is truncated: tensor {t.name} ends at byte {end} but the file has {size} bytes"
            )
    return reader


def read_metadata(reader: gguf.GGUFReader) -> dict[str, Any]:
    """Every key/value pair as plain Python values (strings decoded, arrays as lists)."""
    return {key: field.contents() for key, field in reader.fields.items() if not key.startswith("GGUF.")}


def config_from_metadata(path: Path, meta: dict[str, Any], reader: gguf.GGUFReader) -> ModelConfig:
    """ModelConfig from `{arch}.*` keys; only Llama with full, unscaled RoPE is accepted."""
    arch = meta.get("general.architecture")
    if arch not in SUPPORTED_ARCHITECTURES:
        raise ModelLoadError(
            f"{path}: architecture {arch!r} is not supported "
            f"(supported: {', '.join(SUPPORTED_ARCHITECTURES)})"
        )

    def need(key: str) -> Any:
        value = meta.get(f"{arch}.{key}")
        if value is None:
            raise ModelLoadError(f"{path}: GGUF metadata key {arch}.{key} is missing")
        return value

    scaling = meta.get(f"{arch}.rope.scaling.type")
    if scaling not in (None, "none"):
        raise ModelLoadError(f"{path}: RoPE scaling {scaling!r} is not supported")
    hidden, heads = int(need("embedding_length")), int(need("attention.head_count"))
    head_dim = int(meta.get(f"{arch}.attention.key_length", hidden // heads))
    rotary = int(meta.get(f"{arch}.rope.dimension_count", head_dim))
    if rotary != head_dim:
        raise ModelLoadError(f"{path}: partial rotary ({rotary} of {head_dim} dims) is not supported")
    tensor_names = {t.name for t in reader.tensors}
    embed = next((t for t in reader.tensors if t.name == "token_embd.weight"), None)
    vocab = int(embed.shape[-1]) if embed is not None else len(meta.get("tokenizer.ggml.tokens", []))
    return ModelConfig(
        name=path.stem,
        num_layers=int(need("block_count")),
        hidden_size=hidden,
        num_heads=heads,
        num_kv_heads=int(meta.get(f"{arch}.attention.head_count_kv", heads)),
        head_dim=head_dim,
        intermediate_size=int(need("feed_forward_length")),
        vocab_size=vocab,
        rope_theta=float(meta.get(f"{arch}.rope.freq_base", 10000.0)),
        rms_eps=float(need("attention.layer_norm_rms_epsilon")),
        context_length=int(need("context_length")),
        tie_embeddings="output.weight" not in tensor_names,
    )


def tensor_sources(path: Path, reader: gguf.GGUFReader, config: ModelConfig) -> dict[str, ReaderTensor]:
    """Canonical weight name → the GGUF tensor holding it; ModelLoadError naming any that are missing."""
    names = {"embed": "token_embd.weight", "final_norm": "output_norm.weight"}
    if not config.tie_embeddings:
        names["lm_head"] = "output.weight"
    for i in range(config.num_layers):
        for canon, name in LAYER_TENSORS.items():
            names[f"layers.{i}.{canon}"] = f"blk.{i}.{name}.weight"
    by_name = {t.name: t for t in reader.tensors}
    missing = [name for name in names.values() if name not in by_name]
    if missing:
        shown = ", ".join(missing[:8]) + (f" and {len(missing) - 8} more" if len(missing) > 8 else "")
        raise ModelLoadError(f"{path}: missing tensors {shown}")
    return {canon: by_name[name] for canon, name in names.items()}


def dequantize_weights(
    path: Path, reader: gguf.GGUFReader, config: ModelConfig, sources: dict[str, ReaderTensor]
) -> dict[str, torch.Tensor]:
    """Dequantize the model's tensors one at a time into fp32 torch tensors in HF q/k order."""
    weights: dict[str, torch.Tensor] = {}
    for canon, tensor in sources.items():
        try:
            array = gguf.quants.dequantize(tensor.data, tensor.tensor_type)
        except Exception as exc:
            raise ModelLoadError(f"{path}: cannot dequantize tensor {tensor.name}: {exc}") from exc
        # F32 tensors come back as read-only views of the memmap: copy those so weights are owned
        # and writable; quantized ones are already fresh arrays, and a second copy would cost time.
        if np.may_share_memory(array, reader.data) or array.dtype != np.float32:
            array = np.array(array, dtype=np.float32, copy=True)
        weight = torch.from_numpy(np.ascontiguousarray(array))
        del array
        if canon.endswith((".wq", ".wk")):
            heads = config.num_heads if canon.endswith(".wq") else config.num_kv_heads
            weight = unpermute_rope_rows(weight, heads)
        weights[canon] = weight
    return weights


def unpermute_rope_rows(weight: torch.Tensor, n_heads: int) -> torch.Tensor:
    """Undo llama.cpp's q/k row permutation: interleaved-pair order → HF rotate_half order."""
    # GGUF stores each head's rows as (pair index, member) where HF stores (half, index).
    out, inp = weight.shape
    return weight.reshape(n_heads, out // n_heads // 2, 2, inp).transpose(1, 2).reshape(out, inp).contiguous()
