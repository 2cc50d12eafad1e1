"""A tiny random Llama GGUF with a byte-level BPE vocab, written with the `gguf` package (no download).

Two layers of hidden 64, 4 query heads over 2 KV heads; the attention and MLP matrices are stored
as Q8_0 so a load dequantizes and un-permutes like a real llama.cpp file, the rest as F32. Small
enough (~0.3 MB) to build in every test that needs a GGUF to convert.
"""

from __future__ import annotations

from pathlib import Path

import gguf
import numpy as np
from tokenizers import pre_tokenizers

HIDDEN, HEADS, KV_HEADS, HEAD_DIM, FFN, LAYERS, CONTEXT = 64, 4, 2, 16, 128, 2, 128
MERGES = ["h e", "Ġ t", "Ġt he", "i n", "a n", "o n"]


def vocab() -> list[str]:
    """The 256 byte-level symbols, then the merges' results, then the end-of-text token."""
    tokens = sorted(pre_tokenizers.ByteLevel.alphabet())
    tokens += ["".join(m.split(" ")) for m in MERGES]
    return [*tokens, "<|endoftext|>"]


def write_tiny_gguf(path: Path, seed: int = 0) -> Path:
    """Write the tiny model to ``path`` (deterministic in ``seed``) and return the path."""
    rng = np.random.default_rng(seed)
    tokens = vocab()
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_block_count(LAYERS)
    writer.add_context_length(CONTEXT)
    writer.add_embedding_length(HIDDEN)
    writer.add_feed_forward_length(FFN)
    writer.add_head_count(HEADS)
    writer.add_head_count_kv(KV_HEADS)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_rope_freq_base(10000.0)
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("smollm")
    writer.add_token_list(tokens)
    writer.add_token_merges(MERGES)
    writer.add_token_types([1] * (len(tokens) - 1) + [3])
    writer.add_eos_token_id(len(tokens) - 1)
    writer.add_bos_token_id(len(tokens) - 1)

    def dense(*shape: int) -> np.ndarray:
        return (rng.standard_normal(shape) * 0.2).astype(np.float32)

    def quantized(name: str, *shape: int) -> None:
        q = gguf.quants.quantize(dense(*shape), gguf.GGMLQuantizationType.Q8_0)
        writer.add_tensor(name, q, raw_shape=q.shape, raw_dtype=gguf.GGMLQuantizationType.Q8_0)

    writer.add_tensor("token_embd.weight", dense(len(tokens), HIDDEN))
    writer.add_tensor("output_norm.weight", 1.0 + dense(HIDDEN))
    for i in range(LAYERS):
        p = f"blk.{i}."
        writer.add_tensor(p + "attn_norm.weight", 1.0 + dense(HIDDEN))
        writer.add_tensor(p + "ffn_norm.weight", 1.0 + dense(HIDDEN))
        quantized(p + "attn_q.weight", HEADS * HEAD_DIM, HIDDEN)
        quantized(p + "attn_k.weight", KV_HEADS * HEAD_DIM, HIDDEN)
        quantized(p + "attn_v.weight", KV_HEADS * HEAD_DIM, HIDDEN)
        quantized(p + "attn_output.weight", HIDDEN, HEADS * HEAD_DIM)
        quantized(p + "ffn_gate.weight", FFN, HIDDEN)
        quantized(p + "ffn_up.weight", FFN, HIDDEN)
        quantized(p + "ffn_down.weight", HIDDEN, FFN)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path
