"""Weight formats of the model: float (fp32/bf16), weight-only int8 and int4 layers on CPU, and the one factory.

The quantized products are torch's own CPU kernels (torch 2.13):

- int8: ``aten._weight_int8pack_mm(x, q, scales)``, q ``[N, K]`` int8, one scale per output row
  (symmetric, ``w ≈ q * scale``).
- int4: ``aten._weight_int4pack_mm_for_cpu(x, packed, group, scales_and_zeros)``, the nibbles packed
  by ``aten._convert_weight_to_int4pack_for_cpu``; per row and per group of ``group`` inputs a scale
  and a zero (asymmetric, ``w ≈ (q - 8) * scale + zero``, q in 0..15). The kernel takes groups of
  32/64/128/256 only, ``K`` a multiple of the group and ``N`` a multiple of 16: a layer it cannot
  take is stored as int8 instead (`Int4Linear.accepts`; `DecoderModel.layer_formats` counts them).

Both kernels accept fp32 activations, but their fp32 paths are scalar fallbacks (measured on this
machine at batch 64: 17x slower than bf16 for int8, 30x for int4), so the products always run on
bf16 activations: an fp32 model casts x to bf16 before the product and the result back to fp32
(the rest of its forward, KV cache included, stays fp32). Both kernels compute each row of the
output independently of the others in the batch (checked by tests), so a batched run and a serial
run of the same format give the same tokens.

Embedding and head: in int8 and int4 the head is int8 (the head is the largest matrix of a small
model and the most sensitive to rounding: llama.cpp's Q4_K_M keeps it at 6 bits too) and the
embedding is the same int8 rows, dequantized on lookup; a tied head and its embedding share one
int8 table, so they stay the same weight. GGUF Q4/Q5/Q6/Q8 tensors reach the model dequantized to
fp32 (gguf_checkpoint.py) and are quantized again here, from those fp32 values, to the chosen layout.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Protocol

import torch

from halo.engine.linear import Linear
from halo.engine.model_config import ModelConfig
from halo.engine.weight_formats import QUANTIZED_FORMATS, WEIGHT_FORMATS, WeightFormatName
from halo.errors import InvalidRequestError

INT4_GROUP_SIZES = (32, 64, 128, 256)  # what _weight_int4pack_mm_for_cpu accepts
INT4_GROUP_SIZE = 32  # the most accurate the kernel takes; 64 measured no faster at decode batch 1 here
KERNEL_DTYPE = torch.bfloat16  # the activation dtype the quantized products run in (see above)


class LinearLayer(Protocol):
    """What the forward calls: ``y = x @ W.T (+ b)`` in x's dtype, for x ``[T, in_features]``."""

    out_features: int
    in_features: int
    format: str

    def __call__(self, x: torch.Tensor) -> torch.Tensor: ...

    def numel(self) -> int: ...

    def nbytes(self) -> int: ...


def check_weight_format(weights: object, device: torch.device | None = None) -> str:
    """``weights`` itself if it names a format usable on ``device``, else an InvalidRequestError saying why."""
    if not isinstance(weights, str) or weights not in WEIGHT_FORMATS:
        allowed = ", ".join(repr(f) for f in WEIGHT_FORMATS)
        raise InvalidRequestError(f"weights must be one of {allowed}, got {weights!r}")
    if weights in QUANTIZED_FORMATS and device is not None and device.type != "cpu":
        raise InvalidRequestError(f"weights={weights!r} runs on CPU only (torch's CPU kernels), not on {device}")
    return weights


def _to_kernel(x: torch.Tensor) -> torch.Tensor:
    return (x if x.dtype == KERNEL_DTYPE else x.to(KERNEL_DTYPE)).contiguous()


def quantize_int8(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric per-row int8: ``(q [N, K] int8, scales [N] bf16)`` with ``weight ≈ q * scales[:, None]``."""
    w = weight.float()
    # the scale is rounded to the kernel's dtype first, so q is chosen against the scale the kernel uses
    scales = (w.abs().amax(dim=1) / 127.0).clamp(min=1e-12).to(KERNEL_DTYPE)
    q = torch.round(w / scales.float()[:, None]).clamp(-127, 127).to(torch.int8)
    return q.contiguous(), scales.contiguous()


class Int8Linear:
    """Weight-only int8 ``y = x @ (q * scale).T (+ bias)``, one scale per output row."""

    __slots__ = ("qweight", "scales", "bias", "out_features", "in_features")
    format: ClassVar[str] = "int8"

    def __init__(self, qweight: torch.Tensor, scales: torch.Tensor, bias: torch.Tensor | None = None) -> None:
        assert qweight.dtype == torch.int8 and qweight.dim() == 2 and scales.shape == qweight.shape[:1]
        self.out_features, self.in_features = qweight.shape
        self.qweight, self.scales, self.bias = qweight, scales, bias

    @classmethod
    def from_float(cls, weight: torch.Tensor, bias: torch.Tensor | None = None) -> Int8Linear:
        return cls(*quantize_int8(weight), bias)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.ops.aten._weight_int8pack_mm(_to_kernel(x), self.qweight, self.scales).to(x.dtype)
        return y if self.bias is None else y + self.bias

    def dequantize(self) -> torch.Tensor:
        """The fp32 weight this layer's products use."""
        return self.qweight.float() * self.scales.float()[:, None]

    def numel(self) -> int:
        return self.out_features * self.in_features

    def nbytes(self) -> int:
        return _nbytes(self.qweight, self.scales, self.bias)


def quantize_int4(weight: torch.Tensor, group: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Asymmetric int4 per row and group: ``(q [N, K] int32 in 0..15, scales_and_zeros [K/group, N, 2] bf16)``.

    The kernel's value of a nibble is ``(q - 8) * scale + zero``; a group's min and max map to 0 and 15.
    """
    n, k = weight.shape
    w = weight.float().reshape(n, k // group, group)
    lo, hi = w.amin(dim=-1), w.amax(dim=-1)
    scale = ((hi - lo) / 15.0).clamp(min=1e-12).to(KERNEL_DTYPE)
    zero = (lo + 8.0 * scale.float()).to(KERNEL_DTYPE)
    # chosen against the rounded scale and zero the kernel will use
    q = torch.round((w - zero.float()[..., None]) / scale.float()[..., None] + 8.0).clamp(0, 15)
    scales_and_zeros = torch.stack([scale, zero], dim=-1).transpose(0, 1).contiguous()
    return q.reshape(n, k).to(torch.int32), scales_and_zeros


def dequantize_int4(q: torch.Tensor, scales_and_zeros: torch.Tensor, group: int) -> torch.Tensor:
    """The fp32 weight ``[N, K]`` that `quantize_int4`'s output stands for: ``(q - 8) * scale + zero``."""
    scale = scales_and_zeros[..., 0].float().T.repeat_interleave(group, dim=1)
    zero = scales_and_zeros[..., 1].float().T.repeat_interleave(group, dim=1)
    return (q.float() - 8.0) * scale + zero


def _check_int4_shape(shape: torch.Size | tuple[int, ...], group: int) -> None:
    if not Int4Linear.accepts(shape, group):
        raise InvalidRequestError(
            f"int4 needs a group size in {INT4_GROUP_SIZES}, in_features a multiple of it and out_features "
            f"a multiple of 16; got weight {tuple(shape)} with group {group}"
        )


class Int4Linear:
    """Weight-only int4 ``y = x @ W.T (+ bias)`` with a scale and a zero per row and group of inputs."""

    __slots__ = ("packed", "scales_and_zeros", "group", "bias", "out_features", "in_features")
    format: ClassVar[str] = "int4"

    def __init__(
        self, q: torch.Tensor, scales_and_zeros: torch.Tensor, group: int, bias: torch.Tensor | None = None
    ) -> None:
        """``q`` and ``scales_and_zeros`` as `quantize_int4` returns them; the nibbles are packed here."""
        _check_int4_shape(q.shape, group)
        assert scales_and_zeros.shape == (q.shape[1] // group, q.shape[0], 2)
        self.out_features, self.in_features = q.shape
        self.group, self.bias, self.scales_and_zeros = group, bias, scales_and_zeros
        # the packed layout is the kernel's own; innerKTiles 8 as torchao passes it on CPU
        self.packed = torch.ops.aten._convert_weight_to_int4pack_for_cpu(q.to(torch.int32).contiguous(), 8)

    @classmethod
    def from_float(
        cls, weight: torch.Tensor, group: int = INT4_GROUP_SIZE, bias: torch.Tensor | None = None
    ) -> Int4Linear:
        _check_int4_shape(weight.shape, group)
        return cls(*quantize_int4(weight, group), group, bias)

    @staticmethod
    def accepts(shape: torch.Size | tuple[int, ...], group: int) -> bool:
        """Whether the CPU int4 kernel takes a weight of ``shape`` ``[N, K]`` at this group size."""
        n, k = shape
        return group in INT4_GROUP_SIZES and k % group == 0 and n % 16 == 0

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.ops.aten._weight_int4pack_mm_for_cpu(_to_kernel(x), self.packed, self.group, self.scales_and_zeros)
        y = y.to(x.dtype)
        return y if self.bias is None else y + self.bias

    def numel(self) -> int:
        return self.out_features * self.in_features

    def nbytes(self) -> int:
        return _nbytes(self.packed, self.scales_and_zeros, self.bias)


class Int8Embedding:
    """Embedding rows stored as int8 with a scale per row, dequantized to the model dtype on lookup."""

    __slots__ = ("qweight", "scales", "dtype")

    def __init__(self, qweight: torch.Tensor, scales: torch.Tensor, dtype: torch.dtype) -> None:
        self.qweight, self.scales, self.dtype = qweight, scales, dtype

    def __getitem__(self, ids: torch.Tensor) -> torch.Tensor:
        return (self.qweight[ids].float() * self.scales[ids].float()[:, None]).to(self.dtype)

    def nbytes(self) -> int:
        return _nbytes(self.qweight, self.scales)


def _nbytes(*tensors: torch.Tensor | None) -> int:
    return sum(t.numel() * t.element_size() for t in tensors if t is not None)


@dataclass(frozen=True)
class WeightFormat:
    """How the model stores its weight matrices: builds every linear layer, the head and the embedding.

    Takes the checkpoint's fp32 tensors (whatever format they were read from) and returns layers
    whose products are in the model's compute ``dtype``. ``name`` fp32/bf16 must equal ``dtype``'s.
    """

    name: WeightFormatName
    dtype: torch.dtype
    device: torch.device
    pack: bool = False  # pre-pack float bf16 weights for oneDNN (linear.py)
    group_size: int = INT4_GROUP_SIZE

    def __post_init__(self) -> None:
        check_weight_format(self.name, self.device)
        if self.name not in QUANTIZED_FORMATS and _FLOAT_DTYPES[self.name] != self.dtype:
            raise InvalidRequestError(
                f"weights={self.name!r} keeps the weights in the compute dtype, but the dtype is {self.dtype}"
            )

    @property
    def quantized(self) -> bool:
        return self.name in QUANTIZED_FORMATS

    def _float(self, t: torch.Tensor) -> torch.Tensor:
        return t.to(device=self.device, dtype=self.dtype).contiguous()

    def linear(self, weight: torch.Tensor, bias: torch.Tensor | None = None) -> LinearLayer:
        """One projection from its fp32 weight ``[out, in]`` (and bias ``[out]``)."""
        b = None if bias is None else self._float(bias)
        if self.name == "int4" and Int4Linear.accepts(weight.shape, self.group_size):
            return Int4Linear.from_float(weight, self.group_size, b)
        if self.quantized:  # int8, or an int4 layer the kernel cannot take
            return Int8Linear.from_float(weight, b)
        return Linear(self._float(weight), self.pack, b)

    def embedding_and_head(
        self, embed: torch.Tensor, lm_head: torch.Tensor | None
    ) -> tuple[torch.Tensor | Int8Embedding, LinearLayer]:
        """The token embedding and the output head; ``lm_head`` None means tied to the embedding."""
        if not self.quantized:
            table = self._float(embed)
            # a tied head gets its own packed copy when packed: the lookup needs the plain layout
            return table, Linear(table if lm_head is None else self._float(lm_head), self.pack)
        if lm_head is None:
            head = Int8Linear.from_float(embed)
            return Int8Embedding(head.qweight, head.scales, self.dtype), head
        q, scales = quantize_int8(embed)
        return Int8Embedding(q, scales, self.dtype), Int8Linear.from_float(lm_head)


_FLOAT_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


def float_format_name(dtype: torch.dtype) -> WeightFormatName:
    """The float weight format that keeps weights in ``dtype``."""
    return "bf16" if dtype == torch.bfloat16 else "fp32"


def weight_bytes(config: ModelConfig, name: str, group: int = INT4_GROUP_SIZE) -> int:
    """Resident bytes of the model's weight matrices in format ``name`` (norm vectors and biases aside).

    Float bf16 counts a tied head's packed copy; int4 counts layers the kernel cannot take as int8.
    """
    c = config
    qkv = (c.num_heads + 2 * c.num_kv_heads) * c.head_dim
    shapes = [
        (qkv, c.hidden_size),
        (c.hidden_size, c.num_heads * c.head_dim),
        (2 * c.intermediate_size, c.hidden_size),
        (c.hidden_size, c.intermediate_size),
    ]
    table = c.vocab_size * c.hidden_size
    if name in ("fp32", "bf16"):
        size = 4 if name == "fp32" else 2
        layers = sum(n * k for n, k in shapes) * size
        tables = 2 if (not c.tie_embeddings or name == "bf16") else 1
        return c.num_layers * layers + tables * table * size
    int8 = (table + c.vocab_size * 2) * (1 if c.tie_embeddings else 2)  # int8 head and embedding, bf16 scales
    per_layer = 0
    for n, k in shapes:
        if name == "int4" and Int4Linear.accepts((n, k), group):
            per_layer += n * k // 2 + (k // group) * n * 4
        else:
            per_layer += n * k + n * 2
    return c.num_layers * per_layer + int8
