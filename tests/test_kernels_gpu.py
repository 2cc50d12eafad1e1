"""The Triton kernels compiled for a real CUDA device, against the torch references.

Skipped without CUDA. This module never sets TRITON_INTERPRET and imports the kernel modules only
inside tests. Triton fixes interpreter mode at a kernel module's first import, so when another
module of the same pytest process (tests/test_kernels_triton.py) has already imported them
interpreted, the direct tests skip and `test_compiled_in_fresh_process` runs this file again in
a clean process.
"""

import importlib
import os
import subprocess
import sys
from types import ModuleType

import pytest
import torch
from halo import kernels
from halo.kernels import reference, testing

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device"),
]

DTYPES = [torch.float32, torch.bfloat16, torch.float16]
SHAPES = testing.ATTENTION_SHAPES
_CHILD_MARK = "HALO_KERNELS_GPU_CHILD"


def _interpreted_here() -> bool:
    """Whether this process's kernel modules are (or, imported now, would be) interpreted."""
    if os.environ.get("TRITON_INTERPRET", "0").lower() in ("1", "true", "on"):
        return True
    names = ("triton_paged_attention", "triton_block_copy")
    return any(getattr(sys.modules.get(f"halo.kernels.{name}"), "_INTERPRETED", False) for name in names)


def _compiled(name: str) -> ModuleType:
    """A Triton kernel module, compiled (not interpreted), or skip."""
    pytest.importorskip("triton", reason="triton is not installed (pip install 'halo[triton]')")
    if _interpreted_here():
        pytest.skip("Triton kernels are interpreted in this process; "
                    "test_compiled_in_fresh_process runs these")
    return importlib.import_module(f"halo.kernels.{name}")


def test_compiled_in_fresh_process() -> None:
    if not _interpreted_here():
        pytest.skip("kernels compile in this process; the tests below run directly")
    if os.environ.get(_CHILD_MARK):
        pytest.fail("kernels are interpreted even in a fresh process: is TRITON_INTERPRET set by a conftest?")
    env = {key: val for key, val in os.environ.items() if key != "TRITON_INTERPRET"}
    env[_CHILD_MARK] = "1"  # the child must never start another child
    done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", __file__],
                          env=env, capture_output=True, text=True, timeout=1800)
    assert done.returncode == 0, done.stdout[-6000:] + done.stderr[-2000:]


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_decode_matches_reference(shape: testing.AttentionShape, dtype: torch.dtype) -> None:
    tpa = _compiled("triton_paged_attention")
    for seed in range(3):
        contexts, _ = testing.random_lengths(seed, batch=8, max_context=300)
        err = testing.decode_error(tpa.paged_decode_attention, shape, contexts, dtype, "cuda", seed)
        assert err < testing.TOLERANCE[dtype], f"contexts {contexts}: rel error {err:.2e}"


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_prefill_matches_reference(shape: testing.AttentionShape, dtype: torch.dtype) -> None:
    tpa = _compiled("triton_paged_attention")
    for seed in range(3):
        contexts, news = testing.random_lengths(100 + seed, batch=8, max_context=300)
        err = testing.prefill_error(tpa.paged_prefill_attention, shape, contexts, news, dtype, "cuda", seed)
        assert err < testing.TOLERANCE[dtype], f"contexts {contexts}, new {news}: rel error {err:.2e}"


def test_empty_sequences() -> None:
    tpa = _compiled("triton_paged_attention")
    shape = testing.AttentionShape(16, 8, 2, 128)
    err = testing.decode_error(tpa.paged_decode_attention, shape, [0, 19, 0], torch.float32, "cuda", 1)
    assert err < 1e-5
    err = testing.prefill_error(tpa.paged_prefill_attention, shape, [5, 0, 40], [5, 0, 33], torch.float32,
                                "cuda", 2)
    assert err < 1e-5


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_store_kv_matches_reference(dtype: torch.dtype) -> None:
    tpa = _compiled("triton_paged_attention")
    kv = testing.make_paged_kv([9, 20, 33], 16, 2, 128, dtype, "cuda", seed=3, poison=False)
    fused = torch.randn(40, 8 + 2 * 2, 128, device="cuda").to(dtype)
    k, v = fused[:, 8:10], fused[:, 10:12]
    slots = torch.randperm(kv.k_cache.shape[0] * 16, device="cuda")[:40]
    slots[::7] = -1
    expect_k, expect_v = kv.k_cache.clone(), kv.v_cache.clone()
    reference.store_kv_ref(k, v, expect_k, expect_v, slots)
    tpa.store_kv(k, v, kv.k_cache, kv.v_cache, slots)
    assert torch.equal(kv.k_cache, expect_k) and torch.equal(kv.v_cache, expect_v)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_copy_blocks_is_exact(dtype: torch.dtype) -> None:
    # kernels.copy_blocks picks the Triton kernel on CUDA by itself; the torch backend on the same
    # device tensors is the reference.
    _compiled("triton_block_copy")
    assert kernels.copy_backend_for(torch.device("cuda")) == "triton"
    pool = torch.randn(64, 2, 16 * 8 * 128 + 64, device="cuda").to(dtype)
    k, v = (pool[:, i, : 16 * 8 * 128].view(64, 16, 8, 128) for i in range(2))
    other_k = torch.randn(32, 16, 8, 128, device="cuda").to(dtype)
    other_v = torch.randn_like(other_k)
    cases = [
        (k, v, k, v, [3], [40]),  # copy-on-write
        (k, v, k, v, list(range(50, 60)), list(range(10))),  # compaction
        (k, v, other_k, other_v, torch.arange(20, 28, device="cuda", dtype=torch.int32),
         torch.arange(8, device="cuda")),  # migration, ids already on the device
    ]
    for src_k, src_v, dst_k, dst_v, src_ids, dst_ids in cases:
        expect_k, expect_v = dst_k.clone(), dst_v.clone()
        ref_src = (expect_k, expect_v) if dst_k is src_k else (src_k, src_v)
        kernels.copy_blocks(*ref_src, expect_k, expect_v, src_ids, dst_ids, backend="torch")
        kernels.copy_blocks(src_k, src_v, dst_k, dst_v, src_ids, dst_ids)
        assert torch.equal(dst_k, expect_k) and torch.equal(dst_v, expect_v)


def test_kv_cache_swap_round_trip_is_bit_identical() -> None:
    # The engine's gather (pool -> device staging), a trip through host memory, and scatter
    # (staging -> pool) into other, non-contiguous blocks.
    from halo.engine.kv_cache import KVCache
    from halo.engine.model_config import ModelConfig

    _compiled("triton_block_copy")
    config = ModelConfig("gpu-copy-test", 4, 256, 8, 2, 64, 512, 512, 1e4, 1e-5, 1024, True)
    kv = KVCache(config, num_blocks=16, block_size=16, dtype=torch.bfloat16, device="cuda")
    assert kv.copy_backend == "triton"
    kv.k.normal_()
    kv.v.normal_()
    k, v = kv.read_blocks([3, 7, 11])
    host_k, host_v = k.cpu(), v.cpu()  # offload
    kv.write_blocks([12, 0, 14], host_k, host_v)  # prefetch elsewhere
    assert torch.equal(kv.k[:, :, [12, 0, 14]], kv.k[:, :, [3, 7, 11]])
    assert torch.equal(kv.v[:, :, [12, 0, 14]], kv.v[:, :, [3, 7, 11]])
