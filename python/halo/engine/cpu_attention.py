"""Attention over the paged KV pool on CPU: grouped matmul for decode rows, SDPA for prefill spans."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from halo.engine.kv_cache import KVCache
from halo.engine.step_context import StepContext


def decode_attention(
    q: torch.Tensor, kv: KVCache, layer: int, ctx: StepContext, scale: float
) -> torch.Tensor:
    """q ``[B, H, D]`` of one new token per sequence -> ``[B, H * D]``.

    Grouped matmul instead of SDPA: bf16 SDPA with one query token is ~7x slower on CPU, and
    keeping the query heads of a KV group together lets each gathered K/V serve all of them.
    """
    b, h, d = q.shape
    groups = h // kv.num_kv_heads
    k, v = kv.gather(layer, ctx.decode_blocks)  # [KV, B * max_blocks * bs, D]
    length = ctx.decode_max_blocks * kv.block_size
    k = k.view(kv.num_kv_heads, b, length, d)
    v = v.view(kv.num_kv_heads, b, length, d)
    # scale folded into q: [B, H, D] is far smaller than the scores
    qg = (q * scale).view(b, kv.num_kv_heads, groups, d).transpose(0, 1)  # [KV, B, G, D]
    scores = torch.matmul(qg, k.transpose(-1, -2)).float()  # [KV, B, G, L]
    if ctx.decode_mask is not None:
        scores.masked_fill_(ctx.decode_mask.transpose(0, 1), float("-inf"))
    probs = torch.softmax(scores, dim=-1).to(q.dtype)
    out = torch.matmul(probs, v)  # [KV, B, G, D]
    return out.transpose(0, 1).reshape(b, h * d)


def prefill_attention(
    q: torch.Tensor,
    k_new: torch.Tensor,
    v_new: torch.Tensor,
    kv: KVCache,
    layer: int,
    ctx: StepContext,
    scale: float,
) -> torch.Tensor:
    """Causal attention of each prefill span over its cached prefix plus its new tokens.

    q ``[T, H, D]``, k_new/v_new ``[T, KV, D]`` (all rows of the step) -> ``[T_prefill, H * D]`` for the
    prefill rows in order. A span with no cached prefix attends to its own fresh K/V directly.
    """
    outs = []
    for span in ctx.prefills:
        rows = slice(span.q_start, span.q_start + span.q_len)
        qs = q[rows].transpose(0, 1).unsqueeze(0)  # [1, H, n, D]
        if span.context_len == span.q_len:
            ks = k_new[rows].transpose(0, 1).unsqueeze(0)
            vs = v_new[rows].transpose(0, 1).unsqueeze(0)
            o = F.scaled_dot_product_attention(qs, ks, vs, is_causal=True, scale=scale, enable_gqa=True)
        else:
            k, v = kv.gather(layer, span.blocks)
            ks = k[:, : span.context_len].unsqueeze(0)
            vs = v[:, : span.context_len].unsqueeze(0)
            first = span.context_len - span.q_len
            qpos = torch.arange(first, span.context_len).unsqueeze(1)
            allowed = torch.arange(span.context_len).unsqueeze(0) <= qpos  # [n, ctx]
            o = F.scaled_dot_product_attention(qs, ks, vs, attn_mask=allowed, scale=scale, enable_gqa=True)
        outs.append(o.squeeze(0).transpose(0, 1).reshape(span.q_len, -1))
    return torch.cat(outs, dim=0)
