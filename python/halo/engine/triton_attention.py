"""Attention over the paged KV pool with the Triton kernels of ``halo.kernels`` (the GPU backend).

Same contract as ``cpu_attention``: the model builds ``decode_step(kv, ctx)`` once per step and calls
it per layer for the one-token rows (``decode_attention`` is one such call), and ``prefill_attention``
for the prefill spans of a step. The pool stays KV-head-major; the kernels
read it through a ``[num_blocks, block_size, kv_heads, head_dim]`` strided view, so no copy is
made. On CPU tensors these kernels run only under ``TRITON_INTERPRET=1`` (how tests check them).
Sliding windows are the kernels' ``window`` argument (blocks before it are skipped, not freed);
attention soft-capping is not implemented here, so a model that needs it refuses this backend.
"""

from __future__ import annotations

import torch

from halo.engine.kv_cache import KVCache
from halo.engine.step_context import StepContext

SUPPORTS_ATTENTION_SOFTCAP = False


def _caches(kv: KVCache, layer: int) -> tuple[torch.Tensor, torch.Tensor]:
    return kv.k[layer].permute(1, 2, 0, 3), kv.v[layer].permute(1, 2, 0, 3)


def decode_step(kv: KVCache, ctx: StepContext):
    """The step's decode attention for every layer, ``step(q, layer, scale, window, softcap)``: the
    block tables and lengths converted to int32 once per step, not once per layer."""
    from halo.kernels import paged_decode_attention

    b = ctx.num_decode
    tables = ctx.decode_blocks.view(b, ctx.decode_max_blocks).to(torch.int32)
    lens = ctx.decode_lens.to(torch.int32)

    def step(q: torch.Tensor, layer: int, scale: float, window: int | None = None,
             softcap: float | None = None) -> torch.Tensor:
        assert softcap is None, "the model refuses this backend for soft-capped attention"
        k_cache, v_cache = _caches(kv, layer)
        out = paged_decode_attention(q.contiguous(), k_cache, v_cache, tables, lens, scale, window=window)
        return out.reshape(b, -1)

    return step


def decode_attention(q: torch.Tensor, kv: KVCache, layer: int, ctx: StepContext, scale: float,
                     window: int | None = None, softcap: float | None = None) -> torch.Tensor:
    return decode_step(kv, ctx)(q, layer, scale, window, softcap)


def prefill_attention(q: torch.Tensor, k_new: torch.Tensor, v_new: torch.Tensor, kv: KVCache, layer: int,
                      ctx: StepContext, scale: float, window: int | None = None,
                      softcap: float | None = None) -> torch.Tensor:
    """Prefill rows follow the decode rows contiguously, so the spans pack as one varlen batch."""
    from halo.kernels import paged_prefill_attention

    assert softcap is None, "the model refuses this backend for soft-capped attention"
    spans = ctx.prefills
    first = spans[0].q_start
    rows = q[first : spans[-1].q_start + spans[-1].q_len].contiguous()
    width = max(s.blocks.numel() for s in spans)
    tables = torch.zeros(len(spans), width, dtype=torch.int32, device=q.device)
    for i, s in enumerate(spans):
        tables[i, : s.blocks.numel()] = s.blocks.to(device=q.device, dtype=torch.int32)
    cu = torch.tensor([0] + [s.q_start - first + s.q_len for s in spans], dtype=torch.int32, device=q.device)
    lens = torch.tensor([s.context_len for s in spans], dtype=torch.int32, device=q.device)
    k_cache, v_cache = _caches(kv, layer)
    out = paged_prefill_attention(rows, cu, k_cache, v_cache, tables, lens, scale,
                                  max_seqlen_q=max(s.q_len for s in spans), window=window)
    return out.reshape(rows.shape[0], -1)
