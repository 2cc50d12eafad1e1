"""RMSNorm of the families: one native call on CPU (``halo._core.CpuNorm``), torch everywhere else.

Two forms, as the families define them, both with the statistics in fp32 whatever the model dtype
(the variance of bf16 activations is too coarse):

- `rms_norm` (Llama and most families): ``weight * round(x * r)``, the weight applied in the model
  dtype after rounding;
- `gemma_rms_norm`: ``round(x * r * gain)`` with ``gain = 1 + w`` in fp32, rounded once.

with ``r = 1 / sqrt(mean(x^2) + eps)``. The torch versions (``*_torch``) are eight calls each, every
one allocating: at decode batch 1 that was a tenth of the default model's step for 61 norms. The
native kernel computes the same formula in one call, the same bits as torch (it sums the squares in
torch's order, csrc/cpu_norm.cpp; tests/test_rms_norm.py), so switching paths moves no output. Each
row is computed alone in a fixed order, so a row's result never depends on the batch around it. The
torch path serves tensors the kernel cannot read: another device, another dtype, a strided view (q/k
norms over one head slice).
"""

from __future__ import annotations

import torch

from halo.engine import native_kernels

_NATIVE_DTYPES = (torch.float32, torch.bfloat16)


def rms_norm_torch(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    xf = x.float()
    xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)
    return weight * xf.to(x.dtype)


def gemma_rms_norm_torch(x: torch.Tensor, gain: torch.Tensor, eps: float) -> torch.Tensor:
    xf = x.float()
    xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)
    return (xf * gain).to(x.dtype)


def native_kernel(num_threads: int):
    """The process's ``halo._core.CpuNorm`` for a thread count, or None (an older build of the core)."""
    return native_kernels.native_kernel("CpuNorm", num_threads)


def _native(x: torch.Tensor, weight: torch.Tensor, eps: float, weight_dtype: torch.dtype,
            scale_after_rounding: bool) -> torch.Tensor | None:
    """The kernel's result, or None where it cannot read these tensors."""
    if (x.device.type != "cpu" or x.dtype not in _NATIVE_DTYPES or weight.dtype != weight_dtype
            or not x.is_contiguous() or not weight.is_contiguous() or weight.shape != x.shape[-1:]):
        return None
    kernel = native_kernel(torch.get_num_threads())
    if kernel is None:
        return None
    out = torch.empty_like(x)
    dim = x.shape[-1]
    kernel.rms_norm(x.data_ptr(), weight.data_ptr(), out.data_ptr(), x.numel() // dim, dim, eps,
                    x.dtype == torch.bfloat16, scale_after_rounding)
    return out


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """``weight * round(x * r)`` over the last dim; ``weight`` in x's dtype."""
    out = _native(x, weight, eps, x.dtype, scale_after_rounding=True)
    return rms_norm_torch(x, weight, eps) if out is None else out


def gemma_rms_norm(x: torch.Tensor, gain: torch.Tensor, eps: float) -> torch.Tensor:
    """Gemma's RMSNorm: ``round(x * r * gain)``, ``gain`` = 1 + w in fp32."""
    out = _native(x, gain, eps, torch.float32, scale_after_rounding=False)
    return gemma_rms_norm_torch(x, gain, eps) if out is None else out
