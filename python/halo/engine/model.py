"""The Llama-family transformer over a paged KV cache: fused QKV, RoPE, GQA, fp32 RMSNorm, SwiGLU."""

from __future__ import annotations

from types import ModuleType

import torch
import torch.nn.functional as F

from halo.engine import cpu_attention
from halo.engine.kv_cache import KVCache
from halo.engine.model_config import ModelConfig
from halo.engine.step_context import StepContext


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    # In fp32 whatever the model dtype: the variance of bf16 activations is too coarse.
    xf = x.float()
    xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)
    return weight * xf.to(x.dtype)


def rope_tables(config: ModelConfig, max_positions: int) -> tuple[torch.Tensor, torch.Tensor]:
    """cos/sin ``[max_positions, head_dim]`` in fp32 for rotate_half RoPE."""
    d = config.head_dim
    inv_freq = 1.0 / (config.rope_theta ** (torch.arange(0, d, 2, dtype=torch.int64).float() / d))
    freqs = torch.outer(torch.arange(max_positions, dtype=torch.float32), inv_freq)
    emb = torch.cat([freqs, freqs], dim=-1)
    return emb.cos(), emb.sin()


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x ``[T, heads, D]``; cos/sin ``[T, 1, D]`` already in x's dtype."""
    half = x.shape[-1] // 2
    rotated = torch.cat([-x[..., half:], x[..., :half]], dim=-1)
    return x * cos + rotated * sin


class LlamaModel:
    """Inference-only weights and forward pass. Not an nn.Module: no autograd, no hooks, plain tensors."""

    def __init__(self, config: ModelConfig, weights: dict[str, torch.Tensor], dtype: torch.dtype,
                 device: torch.device | str = "cpu", attention: ModuleType = cpu_attention) -> None:
        """``attention`` is the backend module (``cpu_attention`` or ``triton_attention``)."""
        self.config = config
        self.dtype = dtype
        self.device = torch.device(device)
        self.attention = attention
        c = config

        def take(name: str) -> torch.Tensor:
            # pop so the fp32 originals are released as soon as each converted copy exists
            return weights.pop(name).to(device=self.device, dtype=dtype).contiguous()

        self.embed = take("embed")
        self.lm_head = take("lm_head") if "lm_head" in weights else self.embed
        self.final_norm = take("final_norm")
        self.layers = []
        for i in range(c.num_layers):
            p = f"layers.{i}."
            wqkv = torch.cat([weights.pop(p + "wq"), weights.pop(p + "wk"), weights.pop(p + "wv")])
            gate_up = torch.cat([weights.pop(p + "w_gate"), weights.pop(p + "w_up")])
            self.layers.append(
                {
                    "attn_norm": take(p + "attn_norm"),
                    "wqkv": wqkv.to(device=self.device, dtype=dtype).contiguous(),
                    "wo": take(p + "wo"),
                    "ffn_norm": take(p + "ffn_norm"),
                    "w_gate_up": gate_up.to(device=self.device, dtype=dtype).contiguous(),
                    "w_down": take(p + "w_down"),
                }
            )
        cos, sin = rope_tables(c, c.context_length)
        self.cos, self.sin = cos.to(self.device, dtype), sin.to(self.device, dtype)
        self.q_size = c.num_heads * c.head_dim
        self.kv_size = c.num_kv_heads * c.head_dim
        self.scale = c.head_dim**-0.5
        # Two FLOPs per weight per token (attention over the context excluded): what prefill costs.
        self.flops_per_token = 2 * (
            sum(w.numel() for layer in self.layers for name, w in layer.items() if name.startswith("w"))
            + self.lm_head.numel()
        )

    @torch.inference_mode()
    def forward(self, ctx: StepContext, kv: KVCache) -> torch.Tensor:
        """Compute the step's tokens, store their K/V, return fp32 logits of ``ctx.logits_rows``."""
        c = self.config
        x = self.embed[ctx.input_ids]
        t = x.shape[0]
        cos = self.cos[ctx.positions].unsqueeze(1)
        sin = self.sin[ctx.positions].unsqueeze(1)
        nd = ctx.num_decode
        for i, w in enumerate(self.layers):
            h = rms_norm(x, w["attn_norm"], c.rms_eps)
            qkv = F.linear(h, w["wqkv"])
            # q and k heads rotate together: one pass over [T, H + KV, D] instead of two
            qk = apply_rope(qkv[:, : self.q_size + self.kv_size].view(t, -1, c.head_dim), cos, sin)
            q, k = qk[:, : c.num_heads], qk[:, c.num_heads :]
            v = qkv[:, self.q_size + self.kv_size :].view(t, c.num_kv_heads, c.head_dim)
            kv.store(i, k, v, ctx.slots)
            parts = []
            if nd:
                parts.append(self.attention.decode_attention(q[:nd], kv, i, ctx, self.scale))
            if ctx.prefills:
                parts.append(self.attention.prefill_attention(q, k, v, kv, i, ctx, self.scale))
            attn = parts[0] if len(parts) == 1 else torch.cat(parts, dim=0)
            x = x + F.linear(attn, w["wo"])
            h = rms_norm(x, w["ffn_norm"], c.rms_eps)
            gate, up = F.linear(h, w["w_gate_up"]).chunk(2, dim=-1)
            x = x + F.linear(F.silu(gate) * up, w["w_down"])
        x = rms_norm(x[ctx.logits_rows], self.final_norm, c.rms_eps)
        return F.linear(x, self.lm_head).float()
