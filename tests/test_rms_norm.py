"""RMSNorm: the native kernel (halo._core.CpuNorm) against the torch formulas it replaces.

Every ISA this CPU runs and both thread sources are checked: the same bits as torch in fp32 and bf16
(the kernel sums the squares in torch's order), each row's bits independent of the batch it is in and
of the thread count; tensors the kernel cannot read take the torch path.
"""

from __future__ import annotations

import pytest
import torch
from halo.engine import rms_norm as norms

core = pytest.importorskip("halo._core")
if not hasattr(core, "CpuNorm"):
    pytest.skip("halo._core was built without CpuNorm", allow_module_level=True)

ISAS = ["generic", "avx2", "avx512"][: ["generic", "avx2", "avx512"].index(core.CpuNorm(1).isa) + 1]
THREADS = ["openmp", "own"] if core.CpuAttention(1).threads == "openmp" else ["own"]
# widths: whole 8-lane vectors or not, fewer than four of them, and enough for the cascade of torch's sum
SHAPES = [(1, 576), (7, 100), (5, 16), (3, 3), (512, 576), (33, 2048), (4, 5120), (2, 8195)]


def _native(kernel, x: torch.Tensor, weight: torch.Tensor, eps: float, llama: bool) -> torch.Tensor:
    out = torch.empty_like(x)
    kernel.rms_norm(x.data_ptr(), weight.data_ptr(), out.data_ptr(), x.numel() // x.shape[-1], x.shape[-1], eps,
                    x.dtype == torch.bfloat16, llama)
    return out


def _inputs(rows: int, dim: int, dtype: torch.dtype, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = (3 * torch.randn(rows, dim, generator=g)).to(dtype)
    weight = (1 + 0.5 * torch.randn(dim, generator=g)).to(dtype)
    gain = 1 + 0.5 * torch.randn(dim, generator=g)  # fp32, as gemma's 1 + w
    return x, weight, gain


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: f"{s[0]}x{s[1]}")
def test_native_matches_the_torch_formulas(shape, dtype, isa):
    kernel = core.CpuNorm(2, isa)
    x, weight, gain = _inputs(*shape, dtype)
    assert torch.equal(_native(kernel, x, weight, 1e-5, True), norms.rms_norm_torch(x, weight, 1e-5))
    assert torch.equal(_native(kernel, x, gain, 1e-6, False), norms.gemma_rms_norm_torch(x, gain, 1e-6))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_the_wrappers_take_the_native_path_and_keep_the_shape(dtype):
    x, weight, gain = _inputs(12, 576, dtype)
    x3 = x.view(4, 3, 576)
    out = norms.rms_norm(x3, weight, 1e-5)
    assert out.shape == x3.shape and out.dtype == dtype
    assert torch.equal(out.view(12, 576), _native(norms.native_kernel(torch.get_num_threads()), x, weight, 1e-5, True))
    assert torch.equal(norms.gemma_rms_norm(x, gain, 1e-6), norms.gemma_rms_norm_torch(x, gain, 1e-6))


@pytest.mark.parametrize("threads", THREADS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_a_rows_bits_do_not_depend_on_the_batch_or_the_threads(dtype, threads):
    x, weight, _ = _inputs(700, 576, dtype, seed=3)  # past the inline size: split over row blocks
    batched = _native(core.CpuNorm(2, "auto", threads), x, weight, 1e-5, True)
    alone = torch.cat([_native(core.CpuNorm(1), x[r : r + 1], weight, 1e-5, True) for r in (0, 15, 16, 333, 699)])
    assert torch.equal(alone, batched[[0, 15, 16, 333, 699]])
    assert torch.equal(batched, _native(core.CpuNorm(1, "auto", "own"), x, weight, 1e-5, True))


def test_tensors_the_kernel_cannot_read_take_the_torch_path():
    x, weight, gain = _inputs(6, 2 * 64, torch.bfloat16)
    heads = x.view(6, 2, 64)[:, :1]  # a strided view, as a q/k norm's head slice
    assert torch.equal(norms.rms_norm(heads, weight[:64], 1e-6), norms.rms_norm_torch(heads, weight[:64], 1e-6))
    half = x.half()
    assert torch.equal(norms.rms_norm(half, weight.half(), 1e-6), norms.rms_norm_torch(half, weight.half(), 1e-6))
    mixed = norms.rms_norm(x, weight.float(), 1e-6)  # an fp32 weight promotes, as torch does
    assert mixed.dtype == torch.float32 and torch.equal(mixed, norms.rms_norm_torch(x, weight.float(), 1e-6))


def test_native_rejects_bad_arguments():
    kernel = core.CpuNorm(1)
    x, weight, _ = _inputs(2, 8, torch.float32)
    out = torch.full_like(x, 7.0)
    with pytest.raises(ValueError, match="dim >= 1"):
        kernel.rms_norm(x.data_ptr(), weight.data_ptr(), out.data_ptr(), 2, 0, 1e-5, False, True)
    with pytest.raises(ValueError, match="rows must be >= 0"):
        kernel.rms_norm(x.data_ptr(), weight.data_ptr(), out.data_ptr(), -1, 8, 1e-5, False, True)
    with pytest.raises(ValueError, match="eps"):
        kernel.rms_norm(x.data_ptr(), weight.data_ptr(), out.data_ptr(), 2, 8, float("nan"), False, True)
    with pytest.raises(ValueError, match="null pointer"):
        kernel.rms_norm(0, weight.data_ptr(), out.data_ptr(), 2, 8, 1e-5, False, True)
    assert torch.all(out == 7.0)
    kernel.rms_norm(0, 0, 0, 0, 8, 1e-5, False, True)  # no rows: nothing to read or write
    with pytest.raises(ValueError, match="isa"):
        core.CpuNorm(1, "avx9000")
    with pytest.raises(ValueError, match="num_threads"):
        core.CpuNorm(0)
