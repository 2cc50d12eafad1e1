"""Attention over the paged KV pool on CPU: a native kernel for decode rows, SDPA for prefill spans.

The model builds `decode_step` once per step and calls it per layer (`decode_attention` is one such
call); `prefill_attention` serves the prefill spans.

Decode runs ``halo._core.CpuAttention``, which reads each sequence's blocks in place; the grouped-matmul
torch version (``decode_attention_torch``) is the fallback when the native core lacks it, and the
reference the kernel is tested against.

Sliding windows (``window``: a query sees the last ``window`` positions, itself included) and attention
soft-capping are honoured by masking: blocks that fell out of a layer's window stay in the pool (other
layers, and prefix sharing, still need them) and are masked, never freed. The native kernel knows
neither, so a windowed layer's decode goes to the torch path once some row's context is longer than
the window, and a soft-capped model's always does.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from halo.engine import native_kernels
from halo.engine.kv_cache import KVCache
from halo.engine.step_context import StepContext

_NATIVE_DTYPES = {torch.float32: False, torch.bfloat16: True}  # dtype -> is_bf16
SUPPORTS_ATTENTION_SOFTCAP = True  # (the model asks its backend before it loads a soft-capped config)


def native_kernel(num_threads: int):
    """The process's ``halo._core.CpuAttention`` for a thread count (its worker threads persist), or None."""
    return native_kernels.native_kernel("CpuAttention", num_threads)


def paged_decode(
    kernel,
    q: torch.Tensor,
    k_pool: torch.Tensor,
    v_pool: torch.Tensor,
    tables: torch.Tensor,
    lens: torch.Tensor,
    scale: float,
) -> torch.Tensor:
    """Decode attention with the native kernel, reading K/V in place from one layer's pool.

    q ``[B, H, D]``; k_pool/v_pool ``[KV, num_blocks, block_size, D]`` contiguous; tables int64
    ``[B, max_blocks]``; lens int64 ``[B]`` (tokens including the current one) -> ``[B, H * D]`` in
    q's dtype. ValueError for shapes, dtypes or layouts the kernel cannot read, and (from the kernel)
    for lengths or block ids out of range.
    """
    if q.dim() != 3 or k_pool.dim() != 4:
        raise ValueError(f"q must be [B, H, D], the pools [KV, blocks, block_size, D]: {q.shape}, {k_pool.shape}")
    b, h, d = q.shape
    kvh, nblocks, bs, pool_d = k_pool.shape
    if q.dtype not in _NATIVE_DTYPES or k_pool.dtype != q.dtype or v_pool.dtype != q.dtype:
        raise ValueError(f"q and the pools need one dtype, fp32 or bf16: {q.dtype}, {k_pool.dtype}, {v_pool.dtype}")
    if v_pool.shape != k_pool.shape or pool_d != d:
        raise ValueError(f"k_pool {k_pool.shape} and v_pool {v_pool.shape} must match and end in q's head_dim {d}")
    if not (k_pool.is_contiguous() and v_pool.is_contiguous()):
        raise ValueError("k_pool and v_pool must be contiguous")
    if tables.dtype != torch.int64 or lens.dtype != torch.int64:
        raise ValueError(f"tables and lens must be int64, got {tables.dtype}, {lens.dtype}")
    if tables.dim() != 2 or tables.shape[0] != b or lens.shape != (b,):
        raise ValueError(f"tables must be [B={b}, max_blocks] and lens [B], got {tables.shape}, {lens.shape}")
    if q.device.type != "cpu" or k_pool.device.type != "cpu":
        raise ValueError("paged_decode runs on CPU tensors")
    # q is usually a strided view of the fused qkv projection; copying it is B*H*D elements, cheap.
    q = q.contiguous()
    tables = tables.contiguous()
    lens = lens.contiguous()
    out = torch.empty(b, h * d, dtype=q.dtype)
    kernel.decode(
        q.data_ptr(), k_pool.data_ptr(), v_pool.data_ptr(), tables.data_ptr(), lens.data_ptr(), out.data_ptr(),
        b, h, kvh, d, nblocks, bs, tables.shape[1], scale, _NATIVE_DTYPES[q.dtype],
    )
    return out


class DecodeStep:
    """One step's decode rows, for every layer: ``step(q, layer, scale, window, softcap)`` is
    `decode_attention` of that layer. What does not change from layer to layer (the kernel, the
    block tables and lengths, the pools' layout) is checked once per step: per layer those checks
    were ~30 torch calls, 0.5 ms of a 19 ms step at batch 1 (bench/engine_throughput.py --profile).
    """

    __slots__ = ("kv", "ctx", "kernel", "tables", "batch", "k_base", "v_base", "layer_bytes", "is_bf16")

    def __init__(self, kv: KVCache, ctx: StepContext) -> None:
        self.kv, self.ctx, self.batch = kv, ctx, ctx.num_decode
        pool = kv.k
        kernel = native_kernel(torch.get_num_threads())
        if (kernel is None or pool.dtype not in _NATIVE_DTYPES or pool.device.type != "cpu"
                or not (pool.is_contiguous() and kv.v.is_contiguous()) or kv.v.shape != pool.shape):
            kernel = None  # the torch path serves every layer
        self.kernel = kernel
        self.tables = ctx.decode_blocks.view(self.batch, ctx.decode_max_blocks).contiguous()
        if kernel is not None and (self.tables.dtype != torch.int64 or ctx.decode_lens.dtype != torch.int64
                                   or ctx.decode_lens.shape != (self.batch,) or not ctx.decode_lens.is_contiguous()):
            raise ValueError(f"decode tables and lengths must be int64 [B, max_blocks] and [B], got "
                             f"{self.tables.dtype} {tuple(self.tables.shape)}, {ctx.decode_lens.dtype} "
                             f"{tuple(ctx.decode_lens.shape)}")
        self.k_base, self.v_base = pool.data_ptr(), kv.v.data_ptr()
        self.layer_bytes = pool.stride(0) * pool.element_size()
        self.is_bf16 = _NATIVE_DTYPES.get(pool.dtype, False)

    def __call__(self, q: torch.Tensor, layer: int, scale: float, window: int | None = None,
                 softcap: float | None = None) -> torch.Tensor:
        """q ``[B, H, D]`` of one new token per decode row -> ``[B, H * D]``: the native kernel where
        q is the pool's dtype and no window (that some row's context exceeds) or soft-cap applies."""
        kv, ctx = self.kv, self.ctx
        windowed = window is not None and ctx.decode_max_len > window
        if self.kernel is None or windowed or softcap is not None or q.dtype != kv.k.dtype:
            return decode_attention_torch(q, kv, layer, ctx, scale, window, softcap)
        b, h, d = q.shape
        if b != self.batch or d != kv.head_dim or not 0 <= layer < kv.k.shape[0]:
            raise ValueError(f"q {tuple(q.shape)} of layer {layer} does not fit this step's {self.batch} decode rows "
                             f"and the pool's {kv.k.shape[0]} layers of head_dim {kv.head_dim}")
        # q is usually a strided view of the fused qkv projection; copying it is B*H*D elements, cheap.
        q = q.contiguous()
        out = torch.empty(b, h * d, dtype=q.dtype)
        offset = layer * self.layer_bytes
        self.kernel.decode(
            q.data_ptr(), self.k_base + offset, self.v_base + offset, self.tables.data_ptr(),
            ctx.decode_lens.data_ptr(), out.data_ptr(), b, h, kv.num_kv_heads, d, kv.num_blocks, kv.block_size,
            ctx.decode_max_blocks, scale, self.is_bf16,
        )
        return out


def decode_step(kv: KVCache, ctx: StepContext) -> DecodeStep:
    """The step's decode attention for every layer (see `DecodeStep`); the model builds it once per step."""
    return DecodeStep(kv, ctx)


def decode_attention(
    q: torch.Tensor, kv: KVCache, layer: int, ctx: StepContext, scale: float,
    window: int | None = None, softcap: float | None = None,
) -> torch.Tensor:
    """q ``[B, H, D]`` of one new token per sequence -> ``[B, H * D]``, for one layer.

    Native paged kernel where the core has it, q is a CPU fp32 or bf16 tensor and no window or
    soft-cap applies (a window no row's context exceeds changes nothing), else the torch path.
    """
    return DecodeStep(kv, ctx)(q, layer, scale, window, softcap)


def decode_attention_torch(
    q: torch.Tensor, kv: KVCache, layer: int, ctx: StepContext, scale: float,
    window: int | None = None, softcap: float | None = None,
) -> torch.Tensor:
    """q ``[B, H, D]`` of one new token per sequence -> ``[B, H * D]``, by gather and matmul.

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
    if softcap is not None:
        scores = torch.tanh(scores / softcap) * softcap
    mask = ctx.decode_mask
    if window is not None and ctx.decode_max_len > window:
        # the query sits at position len - 1 and sees positions [len - window, len)
        early = torch.arange(length, device=q.device).unsqueeze(0) < (ctx.decode_lens - window).unsqueeze(1)
        early = early.view(b, 1, 1, length)
        mask = early if mask is None else mask | early
    if mask is not None:
        scores.masked_fill_(mask.transpose(0, 1), float("-inf"))
        # the pool is allocated empty: a slot past a sequence's length may hold a NaN bit pattern,
        # and a zero weight times NaN is NaN
        v = v.masked_fill(mask.view(1, b, length, 1), 0.0)
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
    window: int | None = None,
    softcap: float | None = None,
) -> torch.Tensor:
    """Causal attention of each prefill span over its cached prefix plus its new tokens.

    q ``[T, H, D]``, k_new/v_new ``[T, KV, D]`` (all rows of the step) -> ``[T_prefill, H * D]`` for the
    prefill rows in order. A span with no cached prefix attends to its own fresh K/V directly.
    """
    outs = []
    for span in ctx.prefills:
        rows = slice(span.q_start, span.q_start + span.q_len)
        qs = q[rows].transpose(0, 1).unsqueeze(0)  # [1, H, n, D]
        windowed = window is not None and span.context_len > window
        if span.context_len == span.q_len and not windowed and softcap is None:
            ks = k_new[rows].transpose(0, 1).unsqueeze(0)
            vs = v_new[rows].transpose(0, 1).unsqueeze(0)
            o = F.scaled_dot_product_attention(qs, ks, vs, is_causal=True, scale=scale, enable_gqa=True)
        else:
            if span.context_len == span.q_len:
                ks = k_new[rows].transpose(0, 1).unsqueeze(0)
                vs = v_new[rows].transpose(0, 1).unsqueeze(0)
            else:
                k, v = kv.gather(layer, span.blocks)
                ks = k[:, : span.context_len].unsqueeze(0)
                vs = v[:, : span.context_len].unsqueeze(0)
            first = span.context_len - span.q_len
            qpos = torch.arange(first, span.context_len, device=q.device).unsqueeze(1)
            kpos = torch.arange(span.context_len, device=q.device).unsqueeze(0)
            allowed = kpos <= qpos  # [n, ctx]
            if windowed:
                allowed &= kpos > qpos - window
            o = _attend(qs, ks, vs, allowed, scale, softcap)
        outs.append(o.squeeze(0).transpose(0, 1).reshape(span.q_len, -1))
    return torch.cat(outs, dim=0)


def _attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, allowed: torch.Tensor, scale: float,
            softcap: float | None) -> torch.Tensor:
    """Masked GQA attention, q ``[1, H, n, D]``, k/v ``[1, KV, ctx, D]``: SDPA, or by hand to soft-cap scores."""
    if softcap is None:
        return F.scaled_dot_product_attention(q, k, v, attn_mask=allowed, scale=scale, enable_gqa=True)
    groups = q.shape[1] // k.shape[1]
    k, v = k.repeat_interleave(groups, dim=1), v.repeat_interleave(groups, dim=1)
    scores = torch.matmul(q, k.transpose(-1, -2)) * scale
    scores = torch.tanh(scores / softcap) * softcap
    scores = scores.masked_fill(~allowed, float("-inf"))
    return torch.matmul(torch.softmax(scores, dim=-1, dtype=torch.float32).to(q.dtype), v)


# ---- batch-invariant attention (LLMEngine(deterministic=True)) ---------------------------------------
# Every row of the step, decode or prefill, attends as a decode row: one query over its own context
# [0, position], read from the pool after the step's K/V are stored. The native kernel's result for a
# row depends on that row's context alone (its chunking is fixed by the length, each (row, KV head)
# runs on one thread in a fixed order; cpu_attention.h), so a token's attention output, and with it
# its K/V in later layers, is the same bits whether it was computed alone, in a batch of 64, in a long
# prefill, in a short chunk after a prefix hit, or as a decode step. SDPA's is not: its blocking
# follows the span's length and its masked and causal paths round differently.


def row_tables(ctx: StepContext) -> tuple[torch.Tensor, torch.Tensor]:
    """Every row's block table ``[T, max_blocks]`` and context length ``[T]`` (its own token included),
    decode rows first as in ``ctx``: what `attention_rows` reads, built once per step."""
    t = int(ctx.input_ids.shape[0])
    width = max([ctx.decode_max_blocks] + [int(s.blocks.numel()) for s in ctx.prefills])
    tables = torch.zeros(t, width, dtype=torch.int64)
    lens = torch.empty(t, dtype=torch.int64)
    nd = ctx.num_decode
    if nd:
        tables[:nd, : ctx.decode_max_blocks] = ctx.decode_blocks.view(nd, ctx.decode_max_blocks)
        lens[:nd] = ctx.decode_lens
    for span in ctx.prefills:
        rows = slice(span.q_start, span.q_start + span.q_len)
        tables[rows, : span.blocks.numel()] = span.blocks
        first = span.context_len - span.q_len
        lens[rows] = torch.arange(first + 1, span.context_len + 1)
    return tables, lens


def attention_rows(
    q: torch.Tensor, kv: KVCache, layer: int, tables: torch.Tensor, lens: torch.Tensor, scale: float,
    window: int | None = None, softcap: float | None = None,
) -> torch.Tensor:
    """q ``[T, H, D]`` of every row of the step -> ``[T, H * D]``, each row by itself (see above).

    The native kernel where it applies, else `attend_row_torch` per row: exact in the same sense (each
    row's shapes are its own length's), and slower. Which of the two serves a row depends on that row
    alone (its length against the layer's window), never on the step's other rows."""
    kernel = native_kernel(torch.get_num_threads())
    if kernel is None or q.dtype not in _NATIVE_DTYPES or q.device.type != "cpu" or softcap is not None:
        native = torch.zeros(q.shape[0], dtype=torch.bool)
    else:  # the kernel knows no window: rows whose context is longer than it take the torch path
        native = torch.ones(q.shape[0], dtype=torch.bool) if window is None else lens <= window
    if bool(native.all()):
        return paged_decode(kernel, q, kv.k[layer], kv.v[layer], tables, lens, scale)
    out = torch.empty(q.shape[0], q.shape[1] * q.shape[2], dtype=q.dtype, device=q.device)
    if bool(native.any()):
        out[native] = paged_decode(kernel, q[native], kv.k[layer], kv.v[layer], tables[native], lens[native], scale)
    for r in torch.nonzero(~native).flatten().tolist():
        out[r] = attend_row_torch(q[r], kv, layer, tables[r], int(lens[r]), scale, window, softcap)[0]
    return out


def attend_row_torch(
    q: torch.Tensor, kv: KVCache, layer: int, table: torch.Tensor, length: int, scale: float,
    window: int | None, softcap: float | None,
) -> torch.Tensor:
    """One query ``[H, D]`` over its own context of ``length`` tokens -> ``[1, H * D]``; its window's
    positions only, so every shape here is the row's own (nothing padded to another row's length)."""
    h, d = q.shape
    groups = h // kv.num_kv_heads
    k, v = kv.gather(layer, table[: -(-length // kv.block_size)])
    start = 0 if window is None else max(0, length - window)
    k, v = k[:, start:length], v[:, start:length]  # [KV, L, D]
    qg = (q * scale).view(kv.num_kv_heads, groups, d)
    scores = torch.matmul(qg, k.transpose(-1, -2)).float()  # [KV, G, L]
    if softcap is not None:
        scores = torch.tanh(scores / softcap) * softcap
    probs = torch.softmax(scores, dim=-1).to(q.dtype)
    return torch.matmul(probs, v).reshape(1, h * d)
