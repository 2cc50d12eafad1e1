"""KV export/import between engines: bit-identical round trips, cache hits, identical generations."""

from __future__ import annotations

import multiprocessing as mp

import pytest
import torch
from halo.engine import LLMEngine, SamplingParams
from halo.engine.kv_prefix import KVPrefix, SharedKVHandle
from halo.errors import InvalidRequestError

CONTEXT = ("Shared context: the warehouse ships orders on Monday and Thursday; returns are accepted "
           "within thirty days; premium customers get free shipping. ") * 3
QUESTION = CONTEXT + "Question: when are orders shipped?"


@pytest.fixture(scope="module")
def engines(checkpoint):
    return (LLMEngine(model=checkpoint, dtype="fp32", kv_blocks=256),
            LLMEngine(model=checkpoint, dtype="fp32", kv_blocks=256))


@pytest.mark.slow
def test_export_import_round_trip_and_generation(engines):
    src, dst = engines
    params = SamplingParams(max_tokens=10)
    plain = dst.generate([QUESTION], params)[0]  # dst computes everything itself once
    dst.reset_prefix_cache()
    first = src.generate([QUESTION], params)[0]
    assert first.token_ids == plain.token_ids
    exported = src.export_prefix(QUESTION)
    assert exported is not None
    n = exported.num_tokens
    assert n == (len(first.prompt_token_ids)) // 16 * 16 and n > 0

    assert dst.import_prefix(exported) == n
    assert dst.import_prefix(exported) == 0  # already cached: nothing copied twice
    back = dst.export_prefix(QUESTION)
    assert back.token_ids == exported.token_ids
    assert torch.equal(back.k, exported.k) and torch.equal(back.v, exported.v)  # bit-identical

    dst.reset_stats()
    after = dst.generate([QUESTION], params)[0]
    assert after.token_ids == plain.token_ids
    assert after.cached_tokens == n
    assert dst.stats().prefill_tokens == len(after.prompt_token_ids) - n


def _child_reads(handle: SharedKVHandle, queue) -> None:
    prefix = handle.load()
    queue.put((prefix.token_ids, prefix.k.double().sum().item(), prefix.v.double().sum().item()))


@pytest.mark.slow
def test_shared_memory_crosses_processes(engines):
    src, _ = engines
    src.generate([QUESTION], SamplingParams(max_tokens=1))
    exported = src.export_prefix(QUESTION)
    handle = exported.to_shared_memory()
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=_child_reads, args=(handle, queue))
    proc.start()
    tokens, ksum, vsum = queue.get(timeout=120)
    proc.join(timeout=60)
    assert proc.exitcode == 0
    assert tokens == exported.token_ids
    assert ksum == exported.k.double().sum().item() and vsum == exported.v.double().sum().item()


def test_shared_memory_round_trip_in_process_bf16():
    k = torch.randn(2, 3, 32, 8).to(torch.bfloat16)
    prefix = KVPrefix("m", tuple(range(32)), k, -k)
    back = prefix.to_shared_memory().load()
    assert torch.equal(back.k, k) and torch.equal(back.v, -k) and back.token_ids == prefix.token_ids


@pytest.mark.slow
def test_import_rejects_mismatched_prefix(engines):
    _, dst = engines
    bad = KVPrefix("other", tuple(range(16)), torch.zeros(2, 3, 16, 64), torch.zeros(2, 3, 16, 64))
    with pytest.raises(InvalidRequestError, match="shape"):
        dst.import_prefix(bad)
    c = dst.config
    wrong_dtype = torch.zeros(c.num_layers, c.num_kv_heads, 16, c.head_dim, dtype=torch.bfloat16)
    with pytest.raises(InvalidRequestError, match="dtype"):
        dst.import_prefix(KVPrefix(c.name, tuple(range(16)), wrong_dtype, wrong_dtype))
