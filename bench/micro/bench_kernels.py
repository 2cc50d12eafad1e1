"""Micro-benchmarks of the paged-KV kernels: torch reference decode attention and block copies on
CPU, and the Triton kernels when a CUDA device exists (skipped otherwise).

Run: ``.venv/bin/python -m pytest bench/micro/bench_kernels.py -s`` (``-s`` shows the GB/s lines;
they are also in ``extra_info`` of ``--benchmark-json``). GB/s counts the cache bytes a call has
to read (attention) or read plus write (copies). Shapes are SmolLM2's attention (9 query heads,
3 KV heads, head_dim 64) on CPU and a larger GQA model's (32/8, 128) on a GPU.
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Callable
from types import ModuleType

import pytest
import torch
from halo.kernels import copy_blocks, copy_blocks_ref, paged_decode_attention_ref, testing

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")


def _report(benchmark, label: str, nbytes: int, dtype: torch.dtype, device: str) -> None:
    """Attach GB/s and the machine to the benchmark's extra_info, and print them."""
    benchmark.extra_info.update(dtype=str(dtype), device=device, bytes=nbytes,
                                cpu_capability=torch.backends.cpu.get_cpu_capability())
    if benchmark.stats is None:  # --benchmark-disable: ran once, nothing measured
        return
    # Median and best rather than mean: the 2-core machines are shared and the mean swings.
    stats = benchmark.stats.stats
    median, best = nbytes / stats.median / 1e9, nbytes / stats.min / 1e9
    benchmark.extra_info.update({"GB/s median": round(median, 2), "GB/s best": round(best, 2)})
    print(f"\n{label}: {median:.2f} GB/s median, {best:.2f} best "
          f"({device}, {dtype}, cpu {benchmark.extra_info['cpu_capability']})")


def _decode_batch(batch: int, context: int, heads: int, kv_heads: int, head_dim: int, dtype: torch.dtype,
                  device: str) -> tuple[tuple, int]:
    kv = testing.make_paged_kv([context] * batch, 16, kv_heads, head_dim, dtype, device, seed=0,
                               poison=False)
    q = testing.make_queries(batch, heads, kv_heads, head_dim, dtype, device, seed=1)
    args = (q, kv.k_cache, kv.v_cache, kv.block_tables, kv.context_lens, head_dim ** -0.5)
    kv_bytes = 2 * batch * context * kv_heads * head_dim * kv.k_cache.element_size()
    return args, kv_bytes


def _pool(num_blocks: int, kv_heads: int, head_dim: int, dtype: torch.dtype,
          device: str) -> tuple[torch.Tensor, torch.Tensor]:
    shape = (num_blocks, 16, kv_heads, head_dim)
    return torch.randn(shape, device=device).to(dtype), torch.randn(shape, device=device).to(dtype)


def _copy_ids(num_blocks: int, count: int) -> tuple[torch.Tensor, torch.Tensor]:
    # Sources from the upper half, destinations in the lower half: one pool, no overlap.
    perm = torch.randperm(num_blocks // 2, generator=torch.Generator().manual_seed(0))
    return perm[:count] + num_blocks // 2, perm[count:2 * count]


def _synced(fn: Callable[[], object], device: str) -> Callable[[], None]:
    def run() -> None:
        fn()
        if device == "cuda":
            torch.cuda.synchronize()
    return run


def _triton_module(name: str) -> ModuleType:
    if os.environ.get("TRITON_INTERPRET") == "1":
        pytest.skip("TRITON_INTERPRET=1: interpreted kernels are not worth timing")
    pytest.importorskip("triton", reason="triton is not installed")
    return importlib.import_module(f"halo.kernels.{name}")


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_decode_attention_ref_cpu(benchmark, dtype: torch.dtype) -> None:
    args, kv_bytes = _decode_batch(8, 512, 9, 3, 64, dtype, "cpu")
    benchmark(paged_decode_attention_ref, *args)
    _report(benchmark, "reference decode attention, 8 x 512 tokens", kv_bytes, dtype, "cpu")


@pytest.mark.parametrize("copy", [copy_blocks, copy_blocks_ref], ids=["copy_blocks", "copy_blocks_ref"])
def test_block_copy_cpu(benchmark, copy: Callable[..., None]) -> None:
    k, v = _pool(1024, 3, 64, torch.float32, "cpu")
    src, dst = _copy_ids(1024, 256)
    benchmark(copy, k, v, k, v, src, dst)
    moved = 2 * 2 * 256 * k[0].numel() * k.element_size()  # K and V, read and write
    _report(benchmark, f"{copy.__name__}, 256 blocks within one pool", moved, torch.float32, "cpu")


def test_swap_out_cpu(benchmark) -> None:
    k, v = _pool(1024, 3, 64, torch.float32, "cpu")
    host_k, host_v = _pool(256, 3, 64, torch.float32, "cpu")
    src, _ = _copy_ids(1024, 256)
    benchmark(copy_blocks, k, v, host_k, host_v, src, torch.arange(256))
    moved = 2 * 2 * 256 * k[0].numel() * k.element_size()
    _report(benchmark, "copy_blocks, 256 blocks to a second pool", moved, torch.float32, "cpu")


@needs_cuda
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
def test_decode_attention_triton_cuda(benchmark, dtype: torch.dtype) -> None:
    tpa = _triton_module("triton_paged_attention")
    args, kv_bytes = _decode_batch(64, 1024, 32, 8, 128, dtype, "cuda")
    out = torch.empty_like(args[0])
    benchmark(_synced(lambda: tpa.paged_decode_attention(*args, out=out), "cuda"))
    _report(benchmark, "Triton decode attention, 64 x 1024 tokens", kv_bytes, dtype, "cuda")


@needs_cuda
def test_decode_attention_ref_cuda(benchmark) -> None:
    # The same batch through the torch reference on the GPU, as the side-by-side baseline.
    args, kv_bytes = _decode_batch(64, 1024, 32, 8, 128, torch.bfloat16, "cuda")
    benchmark(_synced(lambda: paged_decode_attention_ref(*args), "cuda"))
    _report(benchmark, "reference decode attention (cuda), 64 x 1024 tokens", kv_bytes, torch.bfloat16,
            "cuda")


@needs_cuda
def test_copy_blocks_triton_cuda(benchmark) -> None:
    _triton_module("triton_block_copy")  # skips when interpreted or without triton
    k, v = _pool(8192, 8, 128, torch.bfloat16, "cuda")
    src, dst = (ids.cuda() for ids in _copy_ids(8192, 2048))
    benchmark(_synced(lambda: copy_blocks(k, v, k, v, src, dst), "cuda"))
    moved = 2 * 2 * 2048 * k[0].numel() * k.element_size()
    _report(benchmark, "Triton copy_blocks, 2048 blocks within one pool", moved, torch.bfloat16, "cuda")
