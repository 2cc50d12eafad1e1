"""The decoder of every supported family over a paged KV cache: one forward, family switches as data.

Fused QKV (biases optional), optional per-head q/k RMSNorm, rotate_half RoPE from one table per
distinct (base, scaling) among the layers, GQA attention over the paged pool within each layer's
sliding window, optional norms after attention and after the MLP (gemma3), SwiGLU or GeGLU, tied
or separate head, optional logit soft-capping. RMSNorm runs in fp32. `ModelConfig` holds the
switches (model_config.py); docs/models.md says what each family sets.
"""

from __future__ import annotations

from collections.abc import Callable
from types import ModuleType

import torch
import torch.nn.functional as F

from halo.engine import cpu_attention, cpu_rope
from halo.engine.batch_invariant import RowTiledLinear
from halo.engine.kv_cache import KVCache
from halo.engine.linear import packing_available
from halo.engine.model_config import ModelConfig
from halo.engine.quantized_linear import Int8Embedding, LinearLayer, WeightFormat, WeightFormatName, float_format_name
from halo.engine.rms_norm import gemma_rms_norm, rms_norm
from halo.engine.rope import rope_tables
from halo.engine.step_context import StepContext
from halo.errors import ModelLoadError


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x ``[T, heads, D]``; cos/sin ``[T, 1, D]`` already in x's dtype."""
    half = x.shape[-1] // 2
    rotated = torch.cat([-x[..., half:], x[..., :half]], dim=-1)
    return x * cos + rotated * sin


def gelu_tanh(x: torch.Tensor) -> torch.Tensor:
    return F.gelu(x, approximate="tanh")


ACTIVATIONS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {"silu": F.silu, "gelu_tanh": gelu_tanh}


class DecoderModel:
    """Inference-only weights and forward pass. Not an nn.Module: no autograd, no hooks, plain tensors."""

    def __init__(self, config: ModelConfig, weights: dict[str, torch.Tensor], dtype: torch.dtype,
                 device: torch.device | str = "cpu", attention: ModuleType = cpu_attention,
                 pack_weights: bool = True, weight_format: WeightFormatName | None = None,
                 deterministic: bool = False) -> None:
        """``attention`` is the backend module (``cpu_attention`` or ``triton_attention``);
        ``pack_weights`` pre-packs bf16 CPU weights for oneDNN where that is bit-identical (see linear.py);
        ``weight_format`` (fp32/bf16/int8/int4, None = the float format of ``dtype``) is how every weight
        matrix is stored: one factory builds them all (quantized_linear.py). ``deterministic`` makes
        the forward batch-invariant: every weight product runs in fixed-height row tiles
        (batch_invariant.py) and every row attends by itself (``attention.attention_rows``), so a
        row's logits and its K/V are the same bits whatever else its step computes."""
        self.config = config
        self.dtype = dtype
        self.device = torch.device(device)
        self.attention = attention
        self.deterministic = deterministic
        c = config
        backend = attention.__name__.rsplit(".", 1)[-1]
        if c.attn_softcap is not None and not getattr(attention, "SUPPORTS_ATTENTION_SOFTCAP", False):
            raise ModelLoadError(f"{c.name}: attention soft-capping is not supported by the {backend} backend")
        if deterministic and not hasattr(attention, "attention_rows"):
            raise ModelLoadError(f"deterministic (batch-invariant) mode is not available with the {backend} backend")

        def convert(w: torch.Tensor) -> torch.Tensor:
            return w.to(device=self.device, dtype=dtype).contiguous()

        def take(name: str) -> torch.Tensor:
            # pop so the fp32 originals are released as soon as each converted copy exists
            return convert(weights.pop(name))

        def take_norm(name: str) -> torch.Tensor:
            w = take(name)
            # gemma's gain is 1 + w of the model-dtype weight, kept in fp32 as transformers computes it
            return (1.0 + w.float()).contiguous() if c.norm == "gemma" else w

        def take_all(*names: str) -> torch.Tensor:
            # the checkpoint's own (fp32) values: the weight format converts or quantizes them
            return torch.cat([weights.pop(n) for n in names])

        pack = pack_weights and packing_available(self.device, dtype)
        fmt = WeightFormat(weight_format or float_format_name(dtype), dtype, self.device, pack)
        self.weight_format = fmt.name
        self.packed_weights = pack and not fmt.quantized
        linear = fmt.linear
        self.norm = rms_norm if c.norm == "rms" else gemma_rms_norm
        self.act = ACTIVATIONS[c.activation]
        self.embed, self.lm_head = fmt.embedding_and_head(weights.pop("embed"), weights.pop("lm_head", None))
        # transformers rounds the scale to the weight dtype before multiplying (sqrt(3072) -> 55.5 in bf16)
        self.embed_scale = None if c.embed_scale is None else torch.tensor(c.embed_scale).to(self.device, dtype)
        self.final_norm = take_norm("final_norm")
        norm_names = ["attn_norm", "ffn_norm"]
        norm_names += ["q_norm", "k_norm"] if c.qk_norm else []
        norm_names += ["attn_post_norm", "ffn_post_norm"] if c.sandwich_norms else []
        self.layers: list[dict[str, torch.Tensor]] = []
        self.linears: list[dict[str, LinearLayer]] = []
        for i in range(c.num_layers):
            p = f"layers.{i}."
            self.layers.append({name: take_norm(p + name) for name in norm_names})
            self.linears.append(
                {
                    "wqkv": linear(take_all(p + "wq", p + "wk", p + "wv"),
                                   take_all(p + "bq", p + "bk", p + "bv") if c.qkv_bias else None),
                    "wo": linear(take_all(p + "wo"), take_all(p + "bo") if c.o_bias else None),
                    "w_gate_up": linear(take_all(p + "w_gate", p + "w_up"),
                                        take_all(p + "b_gate", p + "b_up") if c.mlp_bias else None),
                    "w_down": linear(take_all(p + "w_down"), take_all(p + "b_down") if c.mlp_bias else None),
                }
            )
        if deterministic:
            self.lm_head = RowTiledLinear(self.lm_head, dtype)
            self.linears = [{name: RowTiledLinear(lin, dtype) for name, lin in layer.items()} for layer in self.linears]
        # One cos/sin table per distinct RoPE among the layers (gemma3: local and global bases).
        self.rope: list[tuple[torch.Tensor, torch.Tensor]] = []
        self.rope_of_layer: list[int] = []
        self.window_of_layer: list[int | None] = []
        seen: dict[tuple, int] = {}
        for i in range(c.num_layers):
            layer = c.layer(i)
            key = (layer.rope_theta, layer.rope_scaling)
            if key not in seen:
                seen[key] = len(self.rope)
                cos, sin = rope_tables(c.head_dim, layer.rope_theta, layer.rope_scaling, c.context_length)
                self.rope.append((cos.to(self.device, dtype), sin.to(self.device, dtype)))
            self.rope_of_layer.append(seen[key])
            self.window_of_layer.append(layer.window)
        self.q_size = c.num_heads * c.head_dim
        self.kv_size = c.num_kv_heads * c.head_dim
        self.scale = c.attention_scale
        # Two FLOPs per weight per token (attention over the context excluded): what prefill costs.
        self.flops_per_token = 2 * (
            sum(w.numel() for layer in self.linears for w in layer.values()) + self.lm_head.numel()
        )

    def layer_formats(self) -> dict[str, int]:
        """How many weight matrices (head included) each format holds: int4 layers the kernel cannot take are int8."""
        counts: dict[str, int] = {}
        for layer in [*(lin for layers in self.linears for lin in layers.values()), self.lm_head]:
            counts[layer.format] = counts.get(layer.format, 0) + 1
        return counts

    def weight_bytes(self) -> int:
        """Resident bytes of every weight: matrices (a packed tied head's own copy included), embedding, norms."""
        total = sum(lin.nbytes() for layers in self.linears for lin in layers.values()) + self.lm_head.nbytes()
        embed = self.embed
        head = getattr(self.lm_head, "inner", self.lm_head)  # a batch-invariant head wraps the layer
        # a tied head may be the embedding's own table (fp32, or unpacked bf16, or the shared int8 rows)
        shared = getattr(head, "weight", None) is embed or (
            isinstance(embed, Int8Embedding) and getattr(head, "qweight", None) is embed.qweight
        )
        if not shared:
            total += embed.nbytes() if isinstance(embed, Int8Embedding) else embed.numel() * embed.element_size()
        total += sum(t.numel() * t.element_size() for layer in self.layers for t in layer.values())
        return total + self.final_norm.numel() * self.final_norm.element_size()

    @torch.inference_mode()
    def forward(self, ctx: StepContext, kv: KVCache) -> torch.Tensor:
        """Compute the step's tokens, store their K/V, return fp32 logits of ``ctx.logits_rows``."""
        c = self.config
        norm, eps = self.norm, c.rms_eps
        x = self.embed[ctx.input_ids]
        if self.embed_scale is not None:
            x = x * self.embed_scale
        t = x.shape[0]
        # RoPE and the KV store in one native call per layer where it applies, else torch's
        store = None if c.qk_norm else cpu_rope.rope_store(kv, self.rope, ctx, c.num_heads)
        if store is None:
            rope = [(cos[ctx.positions].unsqueeze(1), sin[ctx.positions].unsqueeze(1)) for cos, sin in self.rope]
        nd = ctx.num_decode
        if self.deterministic:
            row_tables, row_lens = self.attention.row_tables(ctx)  # once per step, read by every layer
        elif nd:
            decode = self.attention.decode_step(kv, ctx)  # checked once per step, called by every layer
        for i, (w, lin) in enumerate(zip(self.layers, self.linears, strict=True)):
            h = norm(x, w["attn_norm"], eps)
            qkv = lin["wqkv"](h)
            v = qkv[:, self.q_size + self.kv_size :].view(t, c.num_kv_heads, c.head_dim)
            if store is not None:
                q, k = store(qkv, i, self.rope_of_layer[i])
            else:
                qk = qkv[:, : self.q_size + self.kv_size].view(t, -1, c.head_dim)
                if c.qk_norm:
                    heads = c.num_heads
                    qk = torch.cat([norm(qk[:, :heads], w["q_norm"], eps), norm(qk[:, heads:], w["k_norm"], eps)], 1)
                # q and k heads rotate together: one pass over [T, H + KV, D] instead of two
                qk = apply_rope(qk, *rope[self.rope_of_layer[i]])
                q, k = qk[:, : c.num_heads], qk[:, c.num_heads :]
                kv.store(i, k, v, ctx.slots)
            window, softcap = self.window_of_layer[i], c.attn_softcap
            if self.deterministic:
                attn = self.attention.attention_rows(q, kv, i, row_tables, row_lens, self.scale,
                                                     window=window, softcap=softcap)
            else:
                parts = []
                if nd:
                    parts.append(decode(q[:nd], i, self.scale, window=window, softcap=softcap))
                if ctx.prefills:
                    parts.append(self.attention.prefill_attention(q, k, v, kv, i, ctx, self.scale,
                                                                  window=window, softcap=softcap))
                attn = parts[0] if len(parts) == 1 else torch.cat(parts, dim=0)
            h = lin["wo"](attn)
            if c.sandwich_norms:
                h = norm(h, w["attn_post_norm"], eps)
            x = x + h
            h = norm(x, w["ffn_norm"], eps)
            gate, up = lin["w_gate_up"](h).chunk(2, dim=-1)
            h = lin["w_down"](self.act(gate) * up)
            if c.sandwich_norms:
                h = norm(h, w["ffn_post_norm"], eps)
            x = x + h
        x = norm(x[ctx.logits_rows], self.final_norm, eps)
        logits = self.lm_head(x).float()
        if c.final_softcap is not None:
            logits = torch.tanh(logits / c.final_softcap) * c.final_softcap
        return logits
