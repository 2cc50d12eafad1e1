"""Read (and write) an HF-style decoder directory: config.json, *.safetensors, tokenizer files.

`hf_config.py` turns config.json into a `ModelConfig` (family, switches, per-layer attention); this
module maps the family's tensor names to canonical ones (checkpoint_layout.py). HF weights are
already in rotate_half order for q/k, so they map unchanged. Writing is the inverse, for plain
Llama only, so a GGUF model can be handed to tools that only read HF checkpoints.
"""

from __future__ import annotations

import json
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from halo.engine.checkpoint_layout import Checkpoint, check_weights, layer_shapes
from halo.engine.hf_config import config_from_json
from halo.engine.model_config import ModelConfig
from halo.engine.tokenizer import Tokenizer
from halo.errors import ModelLoadError

__all__ = ["config_from_json", "hf_names", "load_hf_checkpoint", "save_hf_checkpoint"]

# canonical per-layer name → HF per-layer name (under model.layers.N.)
LAYER_TENSORS = {
    "attn_norm": "input_layernorm.weight",
    "wq": "self_attn.q_proj.weight",
    "wk": "self_attn.k_proj.weight",
    "wv": "self_attn.v_proj.weight",
    "wo": "self_attn.o_proj.weight",
    "ffn_norm": "post_attention_layernorm.weight",
    "w_gate": "mlp.gate_proj.weight",
    "w_up": "mlp.up_proj.weight",
    "w_down": "mlp.down_proj.weight",
    "bq": "self_attn.q_proj.bias",
    "bk": "self_attn.k_proj.bias",
    "bv": "self_attn.v_proj.bias",
    "bo": "self_attn.o_proj.bias",
    "b_gate": "mlp.gate_proj.bias",
    "b_up": "mlp.up_proj.bias",
    "b_down": "mlp.down_proj.bias",
    "q_norm": "self_attn.q_norm.weight",
    "k_norm": "self_attn.k_norm.weight",
}
# Gemma's post_attention_layernorm is the norm after attention; its pre-MLP norm has its own name.
SANDWICH_TENSORS = {
    "attn_post_norm": "post_attention_layernorm.weight",
    "ffn_norm": "pre_feedforward_layernorm.weight",
    "ffn_post_norm": "post_feedforward_layernorm.weight",
}
# Where the decoder sits: a causal LM, or the language model of gemma3's multimodal wrapper
# (transformers 5, then 4). The first whose embedding exists wins; vision weights are not read.
DECODER_PREFIXES = {
    "model.": "lm_head.weight",
    "model.language_model.": "lm_head.weight",
    "language_model.model.": "language_model.lm_head.weight",
}


def load_hf_checkpoint(directory: Path) -> Checkpoint:
    """Load an HF directory of a supported family; every failure is a ModelLoadError that names the file."""
    if not directory.is_dir():
        raise ModelLoadError(f"model directory {directory} does not exist")
    config = config_from_json(directory / "config.json")
    tokenizer = Tokenizer.from_hf_dir(directory)
    weights = read_weights(directory, config)
    check_weights(directory, config, weights)
    return Checkpoint(path=directory, config=config, weights=weights, tokenizer=tokenizer)


def hf_names(config: ModelConfig, prefix: str = "model.") -> dict[str, str]:
    """Canonical weight name → HF tensor name, for a decoder under ``prefix``."""
    names = {"embed": f"{prefix}embed_tokens.weight", "final_norm": f"{prefix}norm.weight"}
    if not config.tie_embeddings:
        names["lm_head"] = DECODER_PREFIXES.get(prefix, "lm_head.weight")
    per_layer = LAYER_TENSORS | (SANDWICH_TENSORS if config.sandwich_norms else {})
    for i in range(config.num_layers):
        for canon in layer_shapes(config):
            names[f"layers.{i}.{canon}"] = f"{prefix}layers.{i}.{per_layer[canon]}"
    return names


def read_weights(directory: Path, config: ModelConfig) -> dict[str, torch.Tensor]:
    """The model's tensors from every *.safetensors file, as fp32 under canonical names."""
    files = sorted(directory.glob("*.safetensors"))
    if not files:
        raise ModelLoadError(f"{directory}: no *.safetensors files")
    with ExitStack() as stack:
        handles = []
        for file in files:
            try:
                handles.append((file, stack.enter_context(safe_open(str(file), framework="pt"))))
            except Exception as exc:
                raise ModelLoadError(f"cannot read {file} (truncated or corrupt safetensors?): {exc}") from exc
        present = {name for _, f in handles for name in f.keys()}  # noqa: SIM118 - not iterable
        prefix = next((p for p in DECODER_PREFIXES if f"{p}embed_tokens.weight" in present), "model.")
        wanted = {hf: canon for canon, hf in hf_names(config, prefix).items()}
        weights: dict[str, torch.Tensor] = {}
        for file, f in handles:
            try:
                for hf in f.keys():  # noqa: SIM118 - safe_open handles are not iterable
                    if hf in wanted:
                        # bf16/fp16 checkpoints become fp32 here; fp32 ones are already owned copies.
                        weights[wanted[hf]] = f.get_tensor(hf).to(torch.float32).contiguous()
            except Exception as exc:
                raise ModelLoadError(f"cannot read {file} (truncated or corrupt safetensors?): {exc}") from exc
    missing = [hf for hf, canon in wanted.items() if canon not in weights]
    if missing:
        shown = ", ".join(missing[:8]) + (f" and {len(missing) - 8} more" if len(missing) > 8 else "")
        raise ModelLoadError(f"{directory}: missing tensors {shown}")
    return weights


def save_hf_checkpoint(ckpt: Checkpoint, directory: Path) -> None:
    """Write `ckpt` as an fp32 HF Llama directory that load_hf_checkpoint (and transformers) can read.

    Plain Llama only (what GGUF loading yields today): another family or switch would need its own
    config keys, and writing a config that reads back as a different model must not happen.
    """
    c = ckpt.config
    if not c.is_plain_llama:
        raise ModelLoadError(
            f"{ckpt.path}: only plain Llama checkpoints can be written as HF directories "
            f"(this one is {c.family} with other switches)"
        )
    directory.mkdir(parents=True, exist_ok=True)
    config = {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "num_hidden_layers": c.num_layers,
        "hidden_size": c.hidden_size,
        "num_attention_heads": c.num_heads,
        "num_key_value_heads": c.num_kv_heads,
        "head_dim": c.head_dim,
        "intermediate_size": c.intermediate_size,
        "vocab_size": c.vocab_size,
        "rope_theta": c.rope_theta,
        "rms_norm_eps": c.rms_eps,
        "max_position_embeddings": c.context_length,
        "tie_word_embeddings": c.tie_embeddings,
        "hidden_act": "silu",
        "attention_bias": False,
        "mlp_bias": False,
        "bos_token_id": ckpt.tokenizer.bos_id,
        "eos_token_id": ckpt.tokenizer.eos_id,
        "torch_dtype": "float32",
    }
    (directory / "config.json").write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
    tensors = {hf: ckpt.weights[canon].contiguous() for canon, hf in hf_names(c).items()}
    save_file(tensors, str(directory / "model.safetensors"), metadata={"format": "pt"})
    tok = ckpt.tokenizer
    tok.backend.save(str(directory / "tokenizer.json"))
    tok_config: dict[str, Any] = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "eos_token": tok.backend.id_to_token(tok.eos_id),
        "bos_token": None if tok.bos_id is None else tok.backend.id_to_token(tok.bos_id),
        "add_bos_token": False,
    }
    if tok.chat_template is not None:
        tok_config["chat_template"] = tok.chat_template
    tok_config_text = json.dumps(tok_config, indent=2) + "\n"
    (directory / "tokenizer_config.json").write_text(tok_config_text, encoding="utf-8")
