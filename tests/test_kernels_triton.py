"""Triton kernels under TRITON_INTERPRET=1 (CPU tensors) against their torch references.

Triton fixes interpreter mode when a kernel is decorated, so the variable is set before anything
imports a kernel module. Grids stay small: the interpreter costs ~0.4 ms per program instance.
"""

import os

os.environ["TRITON_INTERPRET"] = "1"  # before any import of a Triton kernel module

import subprocess
import sys

import pytest
import torch

pytest.importorskip("triton", reason="triton is not installed (pip install 'halo[triton]')")

from halo import kernels  # noqa: E402
from halo.engine.kv_cache import KVCache  # noqa: E402
from halo.engine.model_config import ModelConfig  # noqa: E402
from halo.kernels import reference, testing  # noqa: E402
from halo.kernels import triton_block_copy as tbc  # noqa: E402
from halo.kernels import triton_paged_attention as tpa  # noqa: E402

if not (tpa._INTERPRETED and tbc._INTERPRETED):
    pytest.fail("halo.kernels' Triton modules were imported before TRITON_INTERPRET=1 was set in this "
                "process; run this file in its own pytest process", pytrace=False)
# The kernels are now interpreted for good, but triton still reads the variable at launch. Keep it
# set only while this module's tests run, so that it does not leak into other test modules of the
# process (their triton_available(), their subprocesses, the GPU test module).
del os.environ["TRITON_INTERPRET"]


@pytest.fixture(autouse=True)
def _interpret(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TRITON_INTERPRET", "1")

DTYPES = [torch.float32, torch.bfloat16, torch.float16]
SHAPES = testing.ATTENTION_SHAPES


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_decode_matches_reference(shape: testing.AttentionShape, dtype: torch.dtype) -> None:
    seed = SHAPES.index(shape)
    contexts, _ = testing.random_lengths(seed, batch=3)
    err = testing.decode_error(tpa.paged_decode_attention, shape, contexts, dtype, "cpu", seed)
    assert err < testing.TOLERANCE[dtype], f"contexts {contexts}: rel error {err:.2e}"


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_prefill_matches_reference(shape: testing.AttentionShape, dtype: torch.dtype) -> None:
    seed = 100 + SHAPES.index(shape)
    contexts, news = testing.random_lengths(seed, batch=3)
    err = testing.prefill_error(tpa.paged_prefill_attention, shape, contexts, news, dtype, "cpu", seed)
    assert err < testing.TOLERANCE[dtype], f"contexts {contexts}, new {news}: rel error {err:.2e}"


def test_empty_sequences() -> None:
    # A padded batch slot (context 0, no new tokens) yields zeros and leaves its neighbours intact.
    shape = testing.AttentionShape(8, 4, 2, 64)
    err = testing.decode_error(tpa.paged_decode_attention, shape, [0, 19], torch.float32, "cpu", 7)
    assert err < 1e-5
    err = testing.prefill_error(tpa.paged_prefill_attention, shape, [5, 0, 12], [5, 0, 4], torch.float32,
                                "cpu", 8)
    assert err < 1e-5


def test_chunked_prefill_then_decode_matches_dense_attention() -> None:
    # store_kv + the attention kernels, step by step, against causal SDPA over the whole sequence:
    # an independent check that "new tokens are the last positions of the context".
    block_size, heads, kv_heads, dim, chunks = 4, 6, 2, 32, [7, 6, 1]
    total = sum(chunks)
    gen = torch.Generator().manual_seed(3)
    q, k, v = (torch.randn(total, n, dim, generator=gen) for n in (heads, kv_heads, kv_heads))
    k_cache = torch.full((8, block_size, kv_heads, dim), float("nan"))
    v_cache = torch.full_like(k_cache, float("nan"))
    block_table = torch.tensor([[5, 2, 7, 1]], dtype=torch.int32)
    scale = dim ** -0.5
    group = heads // kv_heads
    dense = torch.nn.functional.scaled_dot_product_attention(
        q.transpose(0, 1), k.repeat_interleave(group, 1).transpose(0, 1),
        v.repeat_interleave(group, 1).transpose(0, 1), is_causal=True, scale=scale).transpose(0, 1)
    start = 0
    for n in chunks:
        pos = torch.arange(start, start + n)
        slots = block_table[0, pos // block_size].long() * block_size + pos % block_size
        tpa.store_kv(k[start:start + n], v[start:start + n], k_cache, v_cache, slots)
        ctx = torch.tensor([start + n], dtype=torch.int32)
        if n == 1:
            out = tpa.paged_decode_attention(q[start:start + 1], k_cache, v_cache, block_table, ctx, scale)
        else:
            cu = testing.cu_seqlens([n], "cpu")
            out = tpa.paged_prefill_attention(q[start:start + n], cu, k_cache, v_cache, block_table, ctx,
                                              scale)
        assert testing.rel_error(out, dense[start:start + n]) < 1e-5, f"chunk at {start}"
        start += n


@pytest.mark.parametrize(("dtype", "head_major"), [(torch.float32, False), (torch.bfloat16, True)], ids=str)
def test_store_kv_matches_reference(dtype: torch.dtype, head_major: bool) -> None:
    kv = testing.make_paged_kv([9, 20], 8, 3, 48, dtype, "cpu", seed=11, poison=False, head_major=head_major)
    fused = torch.randn(6, 9 + 2 * 3, 48).to(dtype)  # k and v as strided views into a QKV tensor
    k, v = fused[:, 9:12], fused[:, 12:15]
    slots = torch.tensor([0, 17, -1, 40, 3, -1], dtype=torch.int64)
    expect_k, expect_v = kv.k_cache.clone(), kv.v_cache.clone()
    reference.store_kv_ref(k, v, expect_k, expect_v, slots)
    tpa.store_kv(k, v, kv.k_cache, kv.v_cache, slots.int())
    assert torch.equal(kv.k_cache, expect_k) and torch.equal(kv.v_cache, expect_v)


def _pool(num_blocks: int, dtype: torch.dtype, seed: int,
          head_major: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    # Random (non-NaN, so torch.equal works) caches of block shape [4, 2, 16] in either layout.
    kv = testing.make_paged_kv([4 * (num_blocks - 1)], 4, 2, 16, dtype, "cpu", seed, spare_blocks=0,
                               poison=False, head_major=head_major)
    return kv.k_cache, kv.v_cache


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_copy_blocks_triton_matches_torch(dtype: torch.dtype) -> None:
    # kernels.copy_blocks, the entry point the engine uses, with each backend on the same inputs:
    # the torch backend is the reference.
    k, v = _pool(12, dtype, seed=1)
    other_k, other_v = _pool(6, dtype, seed=2, head_major=True)
    staging_k, staging_v = _pool(4, dtype, seed=3, head_major=True)
    cases = [
        (k, v, k, v, [3], [9]),  # copy-on-write of a shared block
        (k, v, k, v, [10, 11, 7], [0, 1, 2]),  # compaction
        (k, v, other_k, other_v, torch.tensor([4, 9, 8], dtype=torch.int32), [5, 1, 0]),  # migration
        (other_k, other_v, k, v, torch.tensor([2, 3]), torch.tensor([11, 4])),
        (k, v, staging_k, staging_v, [9, 2, 6, 3], [0, 1, 2, 3]),  # gather into a whole staging buffer
        (staging_k, staging_v, k, v, [0, 1, 2, 3], [8, 1, 10, 5]),  # scatter a whole staging buffer
        (k, v, k, v, [], []),
    ]
    for src_k, src_v, dst_k, dst_v, src_ids, dst_ids in cases:
        expect_k, expect_v = dst_k.clone(), dst_v.clone()
        same = dst_k is src_k
        ref_src = (expect_k, expect_v) if same else (src_k, src_v)
        kernels.copy_blocks(*ref_src, expect_k, expect_v, src_ids, dst_ids, backend="torch")
        kernels.copy_blocks(src_k, src_v, dst_k, dst_v, src_ids, dst_ids, backend="triton")
        assert torch.equal(dst_k, expect_k) and torch.equal(dst_v, expect_v), f"{src_ids} -> {dst_ids}"
        src = torch.as_tensor(src_ids, dtype=torch.int64)
        dst = torch.as_tensor(dst_ids, dtype=torch.int64)
        if src.numel():  # and the reference did what it says
            assert torch.equal(dst_k[dst], ref_src[0][src])


def _kv_cache(backend: str, seed: int) -> KVCache:
    # The engine's pool: 3 layers, 2 KV heads, 10 blocks of 4 tokens, head_dim 8, random contents.
    config = ModelConfig("copy-test", 3, 32, 4, 2, 8, 64, 64, 1e4, 1e-5, 256, True)
    kv = KVCache(config, num_blocks=10, block_size=4, dtype=torch.float32, copy_backend=backend)
    gen = torch.Generator().manual_seed(seed)
    kv.k.copy_(torch.randn(kv.k.shape, generator=gen))
    kv.v.copy_(torch.randn(kv.v.shape, generator=gen))
    return kv


def test_kv_cache_gather_and_scatter_triton_match_torch() -> None:
    # KVCache.read_blocks (pool -> staging: swap-out, export) and write_blocks (staging -> pool:
    # swap-in, import) through the Triton kernel against the torch path, with non-contiguous,
    # unordered block ids and a sliced staging source, as import_prefix passes.
    kv_torch, kv_triton = _kv_cache("torch", seed=5), _kv_cache("triton", seed=5)
    assert (kv_torch.copy_backend, kv_triton.copy_backend) == ("torch", "triton")
    blocks = [7, 2, 9, 4]
    k_ref, v_ref = kv_torch.read_blocks(blocks)
    k_tri, v_tri = kv_triton.read_blocks(torch.tensor(blocks))
    assert torch.equal(k_tri, k_ref) and torch.equal(v_tri, v_ref)
    assert torch.equal(k_ref, kv_torch.k[:, :, blocks].flatten(2, 3))  # the reference is right, too

    gen = torch.Generator().manual_seed(6)
    staged_k = torch.randn(kv_torch.staging_shape(5), generator=gen)
    staged_v = torch.randn(staged_k.shape, generator=gen)
    for kv in (kv_torch, kv_triton):
        kv.write_blocks([8, 0, 5], staged_k[:, :, 8:], staged_v[:, :, 8:])  # the last 3 of 5 blocks
    assert torch.equal(kv_triton.k, kv_torch.k) and torch.equal(kv_triton.v, kv_torch.v)
    assert torch.equal(kv_torch.k[:, :, [8, 0, 5]].flatten(2, 3), staged_k[:, :, 8:])

    out = (torch.empty(kv_triton.staging_shape(3)), torch.empty(kv_triton.staging_shape(3)))
    k_back, v_back = kv_triton.read_blocks([8, 0, 5], out=out)  # the swapper gathers into its buffer
    assert k_back is out[0] and torch.equal(k_back, staged_k[:, :, 8:]) and torch.equal(v_back, staged_v[:, :, 8:])


def test_wrappers_reject_bad_inputs() -> None:
    kv = testing.make_paged_kv([5], 4, 2, 16, torch.float32, "cpu", seed=0)
    q = torch.randn(1, 4, 16)
    args = (kv.k_cache, kv.v_cache, kv.block_tables, kv.context_lens, 0.25)
    with pytest.raises(ValueError, match="block_tables must be int32"):
        tpa.paged_decode_attention(q, kv.k_cache, kv.v_cache, kv.block_tables.long(), kv.context_lens, 0.25)
    with pytest.raises(ValueError, match="multiple of kv heads"):
        tpa.paged_decode_attention(torch.randn(1, 3, 16), *args)
    with pytest.raises(ValueError, match="q dtype"):
        tpa.paged_decode_attention(q.half(), *args)
    strided = torch.zeros(kv.k_cache.shape[:2] + (16, 2)).transpose(2, 3)  # head_dim not contiguous
    with pytest.raises(ValueError, match="contiguous in head_dim"):
        tpa.paged_decode_attention(q, strided, strided, *args[2:])
    with pytest.raises(ValueError, match="strides"):
        tpa.paged_decode_attention(q, kv.k_cache, kv.v_cache.contiguous(), *args[2:])
    with pytest.raises(ValueError, match="cu_seqlens_q must be int32"):
        tpa.paged_prefill_attention(q, torch.tensor([0, 1]), *args)
    k, v = _pool(4, torch.float32, seed=0)
    for backend in ("torch", "triton"):
        with pytest.raises(ValueError, match="both source and destination"):
            kernels.copy_blocks(k, v, k, v, [0, 1], [1, 2], backend=backend)
        with pytest.raises(ValueError, match="unique"):
            kernels.copy_blocks(k, v, k, v, [0, 1], [2, 2], backend=backend)
        with pytest.raises(ValueError, match="out of range"):
            kernels.copy_blocks(k, v, k, v, [0], [4], backend=backend)
        with pytest.raises(ValueError, match="block shapes differ"):
            kernels.copy_blocks(k, v, k[:, :2], v[:, :2], [0], [1], backend=backend)
    with pytest.raises(ValueError, match="backend must be one of"):
        kernels.copy_blocks(k, v, k, v, [0], [1], backend="cuda")  # type: ignore[arg-type]


def test_package_import_leaves_triton_alone() -> None:
    assert kernels.triton_available()
    assert kernels.paged_decode_attention is tpa.paged_decode_attention
    # In a fresh process: importing the package does not import triton, and without triton the
    # package still works and reports the kernels unavailable.
    code = (
        "import sys, torch, halo.kernels as k\n"
        "assert 'triton' not in sys.modules, 'halo.kernels imported triton'\n"
        "sys.modules['triton'] = None\n"
        "assert not k.triton_available()\n"
        "a = torch.randn(3, 4, 1, 8); b = torch.zeros(2, 4, 1, 8)\n"
        "k.copy_blocks(a, a, b, b, [2, 0], [0, 1]); assert torch.equal(b[1], a[0])\n"
        "assert 'triton' not in sys.modules or sys.modules['triton'] is None\n"
    )
    # TRITON_INTERPRET=1 is inherited, so only the missing triton can make it say False.
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
