"""The Llama-family transformer over a paged KV cache: fused QKV, RoPE, GQA, fp32 RMSNorm, SwiGLU."""

from __future__ import annotations

from types import ModuleType

import torch
import torch.nn.functional as F

from halo.engine import cpu_attention
from halo.engine.kv_cache import KVCache
from halo.engine.linear import Linear, packing_available
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
                 device: torch.device | str = "cpu", attention: ModuleType = cpu_attention,
                 pack_weights: bool = True) -> None:
        """``attention`` is the backend module (``cpu_attention`` or ``triton_attention``);
        ``pack_weights`` pre-packs bf16 CPU weights for oneDNN where that is bit-identical (see linear.py)."""
        self.config = config
        self.dtype = dtype
        self.device = torch.device(device)
        self.attention = attention
        c = config

        def convert(w: torch.Tensor) -> torch.Tensor:
            return w.to(device=self.device, dtype=dtype).contiguous()

        def take(name: str) -> torch.Tensor:
            # pop so the fp32 originals are released as soon as each converted copy exists
            return convert(weights.pop(name))

        pack = pack_weights and packing_available(self.device, dtype)
        self.packed_weights = pack
        self.embed = take("embed")
        # a tied head gets its own packed copy: the embedding lookup needs the plain layout
        self.lm_head = Linear(take("lm_head") if "lm_head" in weights else self.embed, pack)
        self.final_norm = take("final_norm")
        self.layers: list[dict[str, torch.Tensor]] = []
        self.linears: list[dict[str, Linear]] = []
        for i in range(c.num_layers):
            p = f"layers.{i}."
            wqkv = torch.cat([weights.pop(p + "wq"), weights.pop(p + "wk"), weights.pop(p + "wv")])
            gate_up = torch.cat([weights.pop(p + "w_gate"), weights.pop(p + "w_up")])
            self.layers.append({"attn_norm": take(p + "attn_norm"), "ffn_norm": take(p + "ffn_norm")})
            self.linears.append(
                {
                    "wqkv": Linear(convert(wqkv), pack),
                    "wo": Linear(take(p + "wo"), pack),
                    "w_gate_up": Linear(convert(gate_up), pack),
                    "w_down": Linear(take(p + "w_down"), pack),
                }
            )
        cos, sin = rope_tables(c, c.context_length)
        self.cos, self.sin = cos.to(self.device, dtype), sin.to(self.device, dtype)
        self.q_size = c.num_heads * c.head_dim
        self.kv_size = c.num_kv_heads * c.head_dim
        self.scale = c.head_dim**-0.5
        # Two FLOPs per weight per token (attention over the context excluded): what prefill costs.
        self.flops_per_token = 2 * (
            sum(w.numel() for layer in self.linears for w in layer.values()) + self.lm_head.numel()
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
        for i, (w, lin) in enumerate(zip(self.layers, self.linears, strict=True)):
            h = rms_norm(x, w["attn_norm"], c.rms_eps)
            qkv = lin["wqkv"](h)
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
            x = x + lin["wo"](attn)
            h = rms_norm(x, w["ffn_norm"], c.rms_eps)
            gate, up = lin["w_gate_up"](h).chunk(2, dim=-1)
            x = x + lin["w_down"](F.silu(gate) * up)
        x = rms_norm(x[ctx.logits_rows], self.final_norm, c.rms_eps)
        return self.lm_head(x).float()
