"""The native paged decode-attention kernel (halo._core.CpuAttention) against plain torch references.

References: per-sequence SDPA in fp32 over each sequence's gathered K/V, and the engine's torch path
(``decode_attention_torch``). Pools hold random values with block tables scattered over the pool,
ragged lengths (1, block boundaries, non-multiples, a full table, 0) and padded tables. Every ISA
this CPU runs is tested, so an AVX-512 machine also checks the AVX2 and portable code.
"""

from __future__ import annotations

import threading

import pytest
import torch
import torch.nn.functional as F

core = pytest.importorskip("halo._core")
if not hasattr(core, "CpuAttention"):
    pytest.skip("halo._core was built without CpuAttention", allow_module_level=True)

from halo.engine import cpu_attention  # noqa: E402
from halo.engine.kv_cache import KVCache  # noqa: E402
from halo.engine.model_config import ModelConfig  # noqa: E402
from halo.engine.step_context import StepContext  # noqa: E402

TOL = {torch.float32: {"rtol": 1e-5, "atol": 1e-5}, torch.bfloat16: {"rtol": 1e-2, "atol": 1e-3}}


def _supported_isas() -> list[str]:
    best = core.CpuAttention(1).isa
    order = ["generic", "avx2", "avx512"]
    return order[: order.index(best) + 1]


ISAS = _supported_isas()
# Where the kernel's threads come from: torch's OpenMP team where the core is built with OpenMP (CI's
# build is), and the parked threads of its own that a build without OpenMP runs: both are tested.
THREADS = ["openmp", "own"] if core.CpuAttention(1).threads == "openmp" else ["own"]


def _lengths(block_size: int) -> list[int]:
    """Ragged context lengths: 1, around block boundaries, a non-multiple, several tiles long, and
    around the kernel's 256-token chunk, past which a sequence is split across tasks and merged."""
    return [1, block_size, block_size + 1, 2 * block_size - 1, 37, 3 * block_size, 100, 255, 256, 257, 600]


def _problem(dtype, heads, kv_heads, head_dim, block_size, lens, pad=0, seed=0, sharp=1.0):
    """Random pool, q, and per-sequence tables scattered over the pool, padded with ``pad``."""
    g = torch.Generator().manual_seed(seed)
    max_blocks = max(-(-n // block_size) for n in lens) + 1  # one spare column: padding is always present
    num_blocks = len(lens) * max_blocks + 5
    k = torch.randn(kv_heads, num_blocks, block_size, head_dim, generator=g).to(dtype)
    v = torch.randn(kv_heads, num_blocks, block_size, head_dim, generator=g).to(dtype)
    q = (sharp * torch.randn(len(lens), heads, head_dim, generator=g)).to(dtype)
    perm = torch.randperm(num_blocks, generator=g)
    tables = torch.full((len(lens), max_blocks), pad, dtype=torch.int64)
    used = 0
    for b, n in enumerate(lens):
        nb = -(-n // block_size)
        tables[b, :nb] = perm[used : used + nb]
        used += nb
    return q, k, v, tables, torch.tensor(lens, dtype=torch.int64)


def _sdpa_reference(q, k, v, tables, lens, scale):
    """fp32 SDPA of each sequence over its own gathered K/V: [B, H * D] fp32."""
    kv_heads, _, block_size, d = k.shape
    out = torch.zeros(q.shape[0], q.shape[1] * d)
    for b, n in enumerate(lens.tolist()):
        if n == 0:
            continue
        blocks = tables[b, : -(-n // block_size)]
        kb = k[:, blocks].reshape(kv_heads, -1, d)[:, :n].float().unsqueeze(0)
        vb = v[:, blocks].reshape(kv_heads, -1, d)[:, :n].float().unsqueeze(0)
        qb = q[b].float().view(1, -1, 1, d)
        out[b] = F.scaled_dot_product_attention(qb, kb, vb, scale=scale, enable_gqa=True).reshape(-1)
    return out


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("groups", [1, 3, 4])
@pytest.mark.parametrize("head_dim", [64, 48])
@pytest.mark.parametrize("block_size", [4, 16])
def test_matches_per_sequence_sdpa(isa, dtype, groups, head_dim, block_size):
    lens = _lengths(block_size) + [0]
    q, k, v, tables, lens_t = _problem(dtype, 2 * groups, 2, head_dim, block_size, lens, pad=-1)
    scale = head_dim**-0.5
    out = cpu_attention.paged_decode(core.CpuAttention(2, isa), q, k, v, tables, lens_t, scale)
    assert out.dtype == dtype and out.shape == (len(lens), 2 * groups * head_dim)
    ref = _sdpa_reference(q, k, v, tables, lens_t, scale)
    torch.testing.assert_close(out.float(), ref, **TOL[dtype])
    assert torch.count_nonzero(out[-1]) == 0  # a context of length 0 gives zeros


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_online_softmax_with_peaked_scores(isa, dtype):
    """Large scores whose max moves from tile to tile and chunk to chunk: rescaling and merging hold."""
    lens = [300, 17, 129]
    q, k, v, tables, lens_t = _problem(dtype, 9, 3, 64, 16, lens, sharp=8.0, seed=3)
    # Make later tokens score ever higher for sequence 0, so the max changes on every tile.
    ramp = torch.linspace(0, 4, 300).view(1, 300, 1)
    blocks = tables[0, : 300 // 16 + 1]
    rows = k[:, blocks].reshape(3, -1, 64)
    rows[:, :300] = (rows[:, :300].float() + ramp * q[0, ::3].float().unsqueeze(1)).to(dtype)
    k[:, blocks] = rows.view(3, len(blocks), 16, 64)
    out = cpu_attention.paged_decode(core.CpuAttention(2, isa), q, k, v, tables, lens_t, 0.125)
    torch.testing.assert_close(out.float(), _sdpa_reference(q, k, v, tables, lens_t, 0.125), **TOL[dtype])


CONFIG = ModelConfig("test", 1, 576, 9, 3, 64, 1536, 49152, 1e5, 1e-5, 8192, True)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_decode_attention_routes_to_native_and_matches_torch_path(dtype, monkeypatch):
    """The engine entry point on a KVCache and StepContext as the model runner builds them."""
    real = cpu_attention.native_kernel(torch.get_num_threads())
    assert real is not None, "this build of halo._core has no CpuAttention"
    decoded: list[int] = []

    class CountingKernel:  # the real kernel, with its decode calls counted: proves which path ran
        def decode(self, *args):
            decoded.append(args[6])  # the batch size
            return real.decode(*args)

    monkeypatch.setattr(cpu_attention, "native_kernel", lambda num_threads: CountingKernel())
    bs, lens = 16, [5, 16, 33, 64, 1]
    _, k, v, tables, lens_t = _problem(dtype, 9, 3, 64, bs, lens, pad=0)
    kv = KVCache(CONFIG, k.shape[1], bs, dtype)
    kv.k[0].copy_(k)
    kv.v[0].copy_(v)
    max_blocks = tables.shape[1]
    mask = (torch.arange(max_blocks * bs).unsqueeze(0) >= lens_t.unsqueeze(1)).view(len(lens), 1, 1, -1)
    n = len(lens)
    ctx = StepContext(
        input_ids=torch.zeros(n, dtype=torch.int64), positions=torch.zeros(n, dtype=torch.int64),
        slots=torch.zeros(n, dtype=torch.int64), num_decode=n, decode_blocks=tables.reshape(-1),
        decode_max_blocks=max_blocks, decode_lens=lens_t, decode_mask=mask, prefills=(),
        logits_rows=torch.zeros(0, dtype=torch.int64),
    )
    # q as the model passes it: a strided view of the fused q/k projection
    qk = torch.randn(n, 12, 64, generator=torch.Generator().manual_seed(1)).to(dtype)
    q = qk[:, :9]
    native = cpu_attention.decode_attention(q, kv, 0, ctx, 0.125)
    assert decoded == [n]  # routed to the native kernel, once, for the whole decode batch
    torch_path = cpu_attention.decode_attention_torch(q, kv, 0, ctx, 0.125)
    assert decoded == [n]  # the reference did not touch it
    ref = _sdpa_reference(q, k, v, tables, lens_t, 0.125)
    torch.testing.assert_close(native.float(), ref, **TOL[dtype])
    # The torch path rounds q, scores and probabilities to bf16 on the way: compare it loosely.
    loose = TOL[dtype] if dtype == torch.float32 else {"rtol": 2e-2, "atol": 2e-2}
    torch.testing.assert_close(native.float(), torch_path.float(), **loose)


def _decode_context(tables: torch.Tensor, lens: torch.Tensor, bs: int) -> StepContext:
    """A decode-only step over `tables` (padded block ids) and `lens`, as the model runner builds it."""
    n, max_blocks = tables.shape
    mask = (torch.arange(max_blocks * bs).unsqueeze(0) >= lens.unsqueeze(1)).view(n, 1, 1, -1)
    return StepContext(
        input_ids=torch.zeros(n, dtype=torch.int64), positions=torch.zeros(n, dtype=torch.int64),
        slots=torch.zeros(n, dtype=torch.int64), num_decode=n, decode_blocks=tables.reshape(-1),
        decode_max_blocks=max_blocks, decode_lens=lens, decode_mask=mask, prefills=(),
        logits_rows=torch.zeros(0, dtype=torch.int64),
    )


def test_decode_attention_falls_back_without_native(monkeypatch):
    bs, lens = 16, [5, 40]
    _, k, v, tables, lens_t = _problem(torch.float32, 9, 3, 64, bs, lens)
    kv = KVCache(CONFIG, k.shape[1], bs, torch.float32)
    kv.k[0].copy_(k)
    kv.v[0].copy_(v)
    ctx = _decode_context(tables, lens_t, bs)
    q = torch.randn(2, 9, 64)
    monkeypatch.setattr(cpu_attention, "native_kernel", lambda num_threads: None)
    out = cpu_attention.decode_attention(q, kv, 0, ctx, 0.125)
    torch.testing.assert_close(out, _sdpa_reference(q, k, v, tables, lens_t, 0.125), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("threads", THREADS)
@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_thread_count_does_not_change_bits(isa, dtype, threads):
    lens = [1, 7, 16, 17, 64, 100, 250, 3, 700] * 3
    q, k, v, tables, lens_t = _problem(dtype, 9, 3, 64, 16, lens, seed=5)
    one = cpu_attention.paged_decode(core.CpuAttention(1, isa, threads), q, k, v, tables, lens_t, 0.125)
    two = cpu_attention.paged_decode(core.CpuAttention(2, isa, threads), q, k, v, tables, lens_t, 0.125)
    assert torch.equal(one, two)
    again = cpu_attention.paged_decode(core.CpuAttention(2, isa, threads), q, k, v, tables, lens_t, 0.125)
    assert torch.equal(two, again)
    # and the other source of threads computes the same bits (each task is one thread's, in order)
    other = cpu_attention.paged_decode(core.CpuAttention(2, isa, THREADS[-1]), q, k, v, tables, lens_t, 0.125)
    assert torch.equal(two, other)
    torch.testing.assert_close(two.float(), _sdpa_reference(q, k, v, tables, lens_t, 0.125).float(), **TOL[dtype])


@pytest.mark.skipif("openmp" not in THREADS, reason="this build of the core has no OpenMP")
def test_openmp_threads_are_torchs_own():
    """The reason the kernel runs on OpenMP: the process holds one OpenMP runtime, torch's, so the
    attention call after a layer's matmuls is served by the team that just ran them instead of by
    threads that wait for the cores torch's spinning threads hold."""
    assert core.CpuAttention(2).threads == "openmp"
    with open("/proc/self/maps") as maps:
        runtimes = {line.split()[-1] for line in maps if "libgomp" in line}
    assert len(runtimes) == 1, runtimes
    # a call from a thread that is not the one torch's team belongs to also gets a team, and the same bits
    q, k, v, tables, lens_t = _problem(torch.bfloat16, 9, 3, 64, 16, [300, 5, 77], seed=2)
    here = cpu_attention.paged_decode(core.CpuAttention(2), q, k, v, tables, lens_t, 0.125)
    there: list[torch.Tensor] = []
    worker = threading.Thread(
        target=lambda: there.append(cpu_attention.paged_decode(core.CpuAttention(2), q, k, v, tables, lens_t, 0.125))
    )
    worker.start()
    worker.join(timeout=60)
    assert there and torch.equal(there[0], here)


def test_empty_batch_and_native_kernel_cache():
    kernel = cpu_attention.native_kernel(2)
    assert kernel is cpu_attention.native_kernel(2) and kernel.num_threads == 2
    q, k, v, tables, lens_t = _problem(torch.float32, 9, 3, 64, 16, [5])
    out = cpu_attention.paged_decode(kernel, q[:0], k, v, tables[:0], lens_t[:0], 0.125)
    assert out.shape == (0, 9 * 64)


def _raw_decode(kernel, q, k, v, tables, lens, out, **override):
    args = dict(
        q=q.data_ptr(), k_pool=k.data_ptr(), v_pool=v.data_ptr(), tables=tables.data_ptr(), lens=lens.data_ptr(),
        out=out.data_ptr(), batch=q.shape[0], num_heads=q.shape[1], num_kv_heads=k.shape[0], head_dim=q.shape[2],
        num_blocks=k.shape[1], block_size=k.shape[2], max_blocks=tables.shape[1], scale=0.125, is_bf16=False,
    )
    args.update(override)
    kernel.decode(**args)


def test_native_rejects_bad_arguments():
    kernel = core.CpuAttention(2)
    q, k, v, tables, lens = _problem(torch.float32, 9, 3, 64, 16, [5, 40])
    out = torch.full((2, 9 * 64), 7.0)
    with pytest.raises(ValueError, match="multiple of num_kv_heads"):
        _raw_decode(kernel, q, k, v, tables, lens, out, num_heads=8)
    for field in ("num_heads", "num_kv_heads", "head_dim", "num_blocks", "block_size"):
        with pytest.raises(ValueError, match="must all be >= 1"):
            _raw_decode(kernel, q, k, v, tables, lens, out, **{field: 0})
    with pytest.raises(ValueError, match="batch must be >= 0"):
        _raw_decode(kernel, q, k, v, tables, lens, out, batch=-1)
    with pytest.raises(ValueError, match="context length 40 of sequence 1"):
        _raw_decode(kernel, q, k, v, tables, lens, out, max_blocks=2)  # 2 * 16 < 40
    bad_lens = torch.tensor([5, -1])
    with pytest.raises(ValueError, match="context length -1"):
        _raw_decode(kernel, q, k, v, tables, bad_lens, out)
    for bad in (k.shape[1], -3):
        bad_tables = tables.clone()
        bad_tables[1, 2] = bad
        with pytest.raises(ValueError, match=rf"block id {bad} at table\[1, 2\]"):
            _raw_decode(kernel, q, k, v, bad_tables, lens, out)
    with pytest.raises(ValueError, match="scale"):
        _raw_decode(kernel, q, k, v, tables, lens, out, scale=float("nan"))
    assert torch.all(out == 7.0)  # nothing was written
    with pytest.raises(ValueError, match="num_threads"):
        core.CpuAttention(0)
    with pytest.raises(ValueError, match="isa"):
        core.CpuAttention(1, "avx9000")
    with pytest.raises(ValueError, match="threads must be"):
        core.CpuAttention(1, "auto", "pthreads")


def test_wrapper_rejects_bad_tensors():
    kernel = core.CpuAttention(1)
    q, k, v, tables, lens = _problem(torch.float32, 9, 3, 64, 16, [5, 40])
    decode = cpu_attention.paged_decode
    with pytest.raises(ValueError, match="one dtype"):
        decode(kernel, q.bfloat16(), k, v, tables, lens, 0.125)
    with pytest.raises(ValueError, match="one dtype"):
        decode(kernel, q.half(), k.half(), v.half(), tables, lens, 0.125)
    with pytest.raises(ValueError, match="int64"):
        decode(kernel, q, k, v, tables.int(), lens, 0.125)
    with pytest.raises(ValueError, match="head_dim"):
        decode(kernel, q[..., :32], k, v, tables, lens, 0.125)
    with pytest.raises(ValueError, match="must match"):
        decode(kernel, q, k, v[:, :-1], tables, lens, 0.125)
    with pytest.raises(ValueError, match="contiguous"):
        decode(kernel, q, k.transpose(1, 2), v.transpose(1, 2), tables, lens, 0.125)
    with pytest.raises(ValueError, match="tables must be"):
        decode(kernel, q, k, v, tables[:1], lens, 0.125)
    with pytest.raises(ValueError, match=r"\[B, H, D\]"):
        decode(kernel, q[0], k, v, tables, lens, 0.125)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_slots_past_a_length_may_hold_nan(dtype):
    """The pool is allocated empty, so unwritten slots can hold NaN bit patterns: neither path reads them."""
    bs, lens = 16, [5, 40]
    _, k, v, tables, lens_t = _problem(dtype, 9, 3, 64, bs, lens)
    kv = KVCache(CONFIG, k.shape[1], bs, dtype)
    kv.k[0].copy_(k)
    kv.v[0].copy_(v)
    for row, length in enumerate(lens):
        for pos in range(length, tables.shape[1] * bs):
            block = tables[row, pos // bs]
            kv.k[0][:, block, pos % bs] = float("nan")
            kv.v[0][:, block, pos % bs] = float("nan")
    ctx = _decode_context(tables, lens_t, bs)
    q = torch.randn(2, 9, 64).to(dtype)
    for out in (cpu_attention.decode_attention(q, kv, 0, ctx, 0.125),
                cpu_attention.decode_attention_torch(q, kv, 0, ctx, 0.125)):
        assert torch.isfinite(out.float()).all()
