"""Read (and write) an HF-style Llama directory: config.json, *.safetensors, tokenizer files.

HF weights are already in rotate_half order for q/k, so they map to canonical names unchanged.
Writing is the inverse, so a GGUF model can be handed to tools that only read HF checkpoints.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from halo.engine.checkpoint_layout import Checkpoint, check_weights
from halo.engine.model_config import ModelConfig
from halo.engine.tokenizer import Tokenizer
from halo.errors import ModelLoadError

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
}


def load_hf_checkpoint(directory: Path) -> Checkpoint:
    """Load an HF Llama directory; every failure is a ModelLoadError that names the file."""
    if not directory.is_dir():
        raise ModelLoadError(f"model directory {directory} does not exist")
    config = config_from_json(directory / "config.json")
    tokenizer = Tokenizer.from_hf_dir(directory)
    weights = read_weights(directory, config)
    check_weights(directory, config, weights)
    return Checkpoint(path=directory, config=config, weights=weights, tokenizer=tokenizer)


def config_from_json(path: Path) -> ModelConfig:
    """ModelConfig from an HF config.json; only Llama without biases or RoPE scaling is accepted."""
    try:
        raw: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ModelLoadError(f"cannot read model config {path}: {exc}") from exc
    archs = raw.get("architectures") or []
    if raw.get("model_type") != "llama" and "LlamaForCausalLM" not in archs:
        found = raw.get("model_type") or ", ".join(archs) or "none given"
        raise ModelLoadError(f"{path}: architecture {found!r} is not supported (supported: llama)")
    if raw.get("rope_scaling"):
        raise ModelLoadError(f"{path}: rope_scaling {raw['rope_scaling']!r} is not supported")
    if raw.get("attention_bias") or raw.get("mlp_bias"):
        raise ModelLoadError(f"{path}: attention/MLP biases are not supported")
    # transformers 5 nests the rope settings under rope_parameters.
    rope = raw.get("rope_parameters") or {}
    if rope.get("rope_type", "default") != "default":
        raise ModelLoadError(f"{path}: rope_type {rope['rope_type']!r} is not supported")

    def need(key: str) -> Any:
        if key not in raw:
            raise ModelLoadError(f"{path}: key {key!r} is missing")
        return raw[key]

    hidden, heads = int(need("hidden_size")), int(need("num_attention_heads"))
    return ModelConfig(
        name=path.parent.name,
        num_layers=int(need("num_hidden_layers")),
        hidden_size=hidden,
        num_heads=heads,
        num_kv_heads=int(raw.get("num_key_value_heads") or heads),
        head_dim=int(raw.get("head_dim") or hidden // heads),
        intermediate_size=int(need("intermediate_size")),
        vocab_size=int(need("vocab_size")),
        rope_theta=float(rope.get("rope_theta", raw.get("rope_theta", 10000.0))),
        rms_eps=float(raw.get("rms_norm_eps", 1e-6)),
        context_length=int(raw.get("max_position_embeddings", 2048)),
        tie_embeddings=bool(raw.get("tie_word_embeddings", False)),
    )


def hf_names(config: ModelConfig) -> dict[str, str]:
    """Canonical weight name → HF tensor name."""
    names = {"embed": "model.embed_tokens.weight", "final_norm": "model.norm.weight"}
    if not config.tie_embeddings:
        names["lm_head"] = "lm_head.weight"
    for i in range(config.num_layers):
        for canon, hf in LAYER_TENSORS.items():
            names[f"layers.{i}.{canon}"] = f"model.layers.{i}.{hf}"
    return names


def read_weights(directory: Path, config: ModelConfig) -> dict[str, torch.Tensor]:
    """The model's tensors from every *.safetensors file, as fp32 under canonical names."""
    files = sorted(directory.glob("*.safetensors"))
    if not files:
        raise ModelLoadError(f"{directory}: no *.safetensors files")
    wanted = {hf: canon for canon, hf in hf_names(config).items()}
    weights: dict[str, torch.Tensor] = {}
    for file in files:
        try:
            with safe_open(str(file), framework="pt") as f:
                for hf in f.keys():  # noqa: SIM118 - safe_open handles are not iterable
                    if hf in wanted:
                        # bf16/fp16 checkpoints become fp32 here; fp32 ones are already owned copies.
                        weights[wanted[hf]] = f.get_tensor(hf).to(torch.float32).contiguous()
        except ModelLoadError:
            raise
        except Exception as exc:
            raise ModelLoadError(f"cannot read {file} (truncated or corrupt safetensors?): {exc}") from exc
    missing = [hf for hf, canon in wanted.items() if canon not in weights]
    if missing:
        shown = ", ".join(missing[:8]) + (f" and {len(missing) - 8} more" if len(missing) > 8 else "")
        raise ModelLoadError(f"{directory}: missing tensors {shown}")
    return weights


def save_hf_checkpoint(ckpt: Checkpoint, directory: Path) -> None:
    """Write `ckpt` as an fp32 HF Llama directory that load_hf_checkpoint (and transformers) can read."""
    directory.mkdir(parents=True, exist_ok=True)
    c = ckpt.config
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
