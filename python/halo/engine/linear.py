"""The model's weight products: oneDNN pre-packed weights for bf16 on CPU, plain ``F.linear`` elsewhere.

``F.linear`` on a bf16 CPU tensor goes to oneDNN, which re-lays the weight out into its blocked
format on every call. At decode batch sizes that re-layout costs as much as the product itself
(the weights are read twice and written once), so a decode step spends about half its matmul time
moving weights. Packing each weight once at load time removes that: the products are the same
oneDNN kernels on the same blocked data, so the results are bit-identical to ``F.linear`` (checked
once per weight shape, see `packing_exact`). Measured on 2 threads (AVX-512 + AMX, bf16): decode at batch
1 / 8 / 32 / 64 runs 1.26x / 1.20x / 1.09x / 0.97x the unpacked speed, prefill unchanged
(`bench/engine_throughput.py --compare-unpacked`); one thread's matmuls alone gain up to 2x at decode
batch sizes (`bench/micro/bench_linear.py`).

fp32 stays on ``F.linear``: oneDNN's packed fp32 path sums in another order than MKL's sgemm (results
differ in the last bits) and is not faster here, and fp32 is the mode the fidelity checks run in.
"""

from __future__ import annotations

from functools import cache

import torch
import torch.nn.functional as F

from halo.engine.probe_cache import remembered


def packing_available(device: torch.device, dtype: torch.dtype) -> bool:
    """Whether weights of this dtype on this device can be pre-packed for oneDNN."""
    mkldnn = getattr(torch.ops, "mkldnn", None)
    return (
        device.type == "cpu"
        and dtype == torch.bfloat16
        and torch.backends.mkldnn.is_available()
        and mkldnn is not None
        and hasattr(mkldnn, "_reorder_linear_weight")
        and hasattr(mkldnn, "_linear_pointwise")
    )


class Linear:
    """``y = x @ weight.T (+ bias)`` for one weight, packed when that gives the same numbers faster."""

    __slots__ = ("weight", "bias", "packed", "out_features", "in_features", "format")

    def __init__(self, weight: torch.Tensor, pack: bool, bias: torch.Tensor | None = None) -> None:
        self.out_features, self.in_features = weight.shape
        self.format = "bf16" if weight.dtype == torch.bfloat16 else "fp32"  # the weight format (quantized_linear.py)
        packed = pack_weight_checked(weight, bias) if pack else None
        self.packed = packed is not None
        self.weight = packed if packed is not None else weight
        self.bias = bias

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if self.packed:
            return torch.ops.mkldnn._linear_pointwise(x, self.weight, self.bias, "none", [], "")
        return F.linear(x, self.weight, self.bias)

    def numel(self) -> int:
        return self.out_features * self.in_features

    def nbytes(self) -> int:
        """Resident bytes of the weight (packed or not: the same element count) and the bias."""
        size = 2 if self.format == "bf16" else 4
        return self.numel() * size + (0 if self.bias is None else self.bias.numel() * self.bias.element_size())


def pack_weight_checked(weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor | None:
    """The packed weight if packed products equal ``F.linear``'s bit for bit for its shape, else None.

    A torch or oneDNN build whose packed kernels round differently falls back to ``F.linear`` instead
    of changing outputs (see `packing_exact`).
    """
    if not packing_exact(tuple(weight.shape), weight.dtype, bias is not None):
        return None
    try:
        return torch.ops.mkldnn._reorder_linear_weight(weight)
    except RuntimeError:  # a shape this build does not take
        return None


@cache
def packing_exact(shape: tuple[int, ...], dtype: torch.dtype, with_bias: bool) -> bool:
    """Whether packed products equal ``F.linear``'s bit for bit for ``[out, in]`` weights of this shape and dtype.

    Checked on a few small products of a random weight (and bias) once per shape: the rounding is the
    kernel's (its blocking and summation order for the shape), the same for every weight of that
    shape, so a model's 30 layers pay one check per distinct projection, not one each; the verdict is
    remembered per CPU, torch build and thread count (probe_cache.py), so later processes skip it.
    """
    key = {"shape": list(shape), "dtype": str(dtype), "bias": with_bias, "threads": torch.get_num_threads()}
    return bool(remembered("packing", key, lambda: _check_packing(shape, dtype, with_bias)))


def _check_packing(shape: tuple[int, ...], dtype: torch.dtype, with_bias: bool) -> bool:
    generator = torch.Generator().manual_seed(0)
    out_features, in_features = shape
    # 256 random rows repeated to the full height: every output still sums a random row (what its
    # rounding depends on), and a head-sized probe weight costs a copy instead of 28M random draws
    block = torch.randn(min(out_features, 256), in_features, generator=generator).to(dtype)
    weight = block.repeat(-(-out_features // block.shape[0]), 1)[:out_features].contiguous()
    bias = torch.randn(out_features, generator=generator).to(dtype) if with_bias else None
    try:
        packed = torch.ops.mkldnn._reorder_linear_weight(weight)
        for rows in (1, 5, 33):
            x = torch.randn(rows, in_features, generator=generator).to(dtype)
            got = torch.ops.mkldnn._linear_pointwise(x, packed, bias, "none", [], "")
            if not torch.equal(got, F.linear(x, weight, bias)):
                return False
    except RuntimeError:  # an op missing from this build, or a shape it does not take
        return False
    return True
