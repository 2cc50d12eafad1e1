"""A plain fp32 Llama forward over a Checkpoint, with no KV cache: the engine's token-for-token reference.

Every call recomputes the whole sequence, so it is slow but has nothing to get wrong: RMSNorm in fp32,
rotate_half RoPE at positions 0..T-1, causal grouped-query SDPA, SwiGLU MLP, tied or separate lm head.
"""

from __future__ import annotations

from collections.abc import Collection

import torch
import torch.nn.functional as F
from halo.engine.checkpoint import Checkpoint


class DenseReference:
    """Full-recompute greedy decoding over a Checkpoint's canonical fp32 weights."""

    def __init__(self, ckpt: Checkpoint) -> None:
        self.config = ckpt.config
        self.w = ckpt.weights
        self.lm_head = self.w["embed"] if self.config.tie_embeddings else self.w["lm_head"]

    def _rms(self, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        x = x.float()
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.config.rms_eps) * weight

    def _rope(self, x: torch.Tensor) -> torch.Tensor:
        """rotate_half RoPE over x [heads, T, head_dim] at positions 0..T-1."""
        t, hd = x.shape[1], x.shape[2]
        inv_freq = 1.0 / (self.config.rope_theta ** (torch.arange(0, hd, 2, dtype=torch.float64) / hd))
        angles = torch.arange(t, dtype=torch.float64)[:, None] * inv_freq[None, :]  # [T, hd/2]
        angles = torch.cat([angles, angles], dim=-1)
        cos, sin = angles.cos().float(), angles.sin().float()
        x1, x2 = x[..., : hd // 2], x[..., hd // 2 :]
        rotated = torch.cat([-x2, x1], dim=-1)
        return x * cos + rotated * sin

    @torch.inference_mode()
    def logits(self, token_ids: list[int]) -> torch.Tensor:
        """Logits [T, V] for every position of `token_ids`."""
        c, w = self.config, self.w
        t = len(token_ids)
        x = w["embed"][torch.tensor(token_ids, dtype=torch.long)]
        group = c.num_heads // c.num_kv_heads
        for i in range(c.num_layers):
            p = f"layers.{i}."
            h = self._rms(x, w[p + "attn_norm"])
            q = (h @ w[p + "wq"].T).view(t, c.num_heads, c.head_dim).transpose(0, 1)
            k = (h @ w[p + "wk"].T).view(t, c.num_kv_heads, c.head_dim).transpose(0, 1)
            v = (h @ w[p + "wv"].T).view(t, c.num_kv_heads, c.head_dim).transpose(0, 1)
            q, k = self._rope(q), self._rope(k)
            # q head j reads kv head j // group, exactly repeat_interleave's order.
            k = k.repeat_interleave(group, dim=0)
            v = v.repeat_interleave(group, dim=0)
            attn = F.scaled_dot_product_attention(q, k, v, is_causal=True)
            x = x + attn.transpose(0, 1).reshape(t, c.num_heads * c.head_dim) @ w[p + "wo"].T
            h = self._rms(x, w[p + "ffn_norm"])
            x = x + (F.silu(h @ w[p + "w_gate"].T) * (h @ w[p + "w_up"].T)) @ w[p + "w_down"].T
        return self._rms(x, w["final_norm"]) @ self.lm_head.T

    def greedy(self, prompt_ids: list[int], max_tokens: int, stop_ids: Collection[int]) -> list[int]:
        """Greedy continuation (stop token excluded), recomputing the full sequence each step."""
        ids = list(prompt_ids)
        out: list[int] = []
        for _ in range(max_tokens):
            nxt = int(self.logits(ids)[-1].argmax())
            if nxt in stop_ids:
                break
            out.append(nxt)
            ids.append(nxt)
        return out
