"""KV offload: preempted sequences swap to host memory through the ring buffer and come back intact."""

from __future__ import annotations

import pytest
import torch
from halo.engine import LLMEngine, SamplingParams

PROMPTS = [
    "The history of the city begins with a small fishing village on the river, where",
    "List the steps to bake bread: first,",
    "In a distant galaxy, two robots argued about",
    "Dear customer, thank you for your order of three blue chairs. Unfortunately",
    "def fibonacci(n):\n    ",
    "The weather report for tomorrow says",
]
PARAMS = SamplingParams(max_tokens=24, ignore_eos=True)
TINY = {"kv_blocks": 24, "block_size": 8, "max_batch_tokens": 64}


@pytest.fixture(scope="module")
def roomy_outputs(checkpoint):
    eng = LLMEngine(model=checkpoint, dtype="fp32", kv_blocks=256)
    return [r.token_ids for r in eng.generate(PROMPTS, PARAMS)]


@pytest.mark.slow
def test_swap_instead_of_recompute_gives_identical_outputs(checkpoint, roomy_outputs):
    recompute = LLMEngine(model=checkpoint, dtype="fp32", enable_prefix_cache=False, swap_space_gb=0, **TINY)
    swap = LLMEngine(model=checkpoint, dtype="fp32", enable_prefix_cache=False, swap_space_gb=0.5, **TINY)
    out_recompute = [r.token_ids for r in recompute.generate(PROMPTS, PARAMS)]
    out_swap = [r.token_ids for r in swap.generate(PROMPTS, PARAMS)]
    assert out_recompute == roomy_outputs
    assert out_swap == roomy_outputs
    s_re, s_sw = recompute.stats(), swap.stats()
    assert s_re.preemptions > 0 and s_sw.preemptions > 0
    assert s_sw.swapped_out > 0 and s_sw.swapped_in == s_sw.swapped_out
    assert s_re.swapped_out == 0
    # swapped sequences skip their recompute: fewer tokens computed in total
    assert s_sw.prefill_tokens + s_sw.decode_tokens < s_re.prefill_tokens + s_re.decode_tokens
    assert swap.swapper.store == {}  # nothing left behind in host memory


@pytest.mark.slow
def test_swap_round_trip_is_bit_identical(checkpoint):
    eng = LLMEngine(model=checkpoint, dtype="bf16", kv_blocks=64, block_size=8, swap_space_gb=0.1)
    eng.add_request(PROMPTS[0], PARAMS)
    for _ in range(5):
        eng.step()
    (seq,) = eng.batch_scheduler.running
    nblocks = -(-seq.num_computed // 8)
    old_blocks = seq.block_table[:nblocks]
    k, v = eng.kv.read_blocks(torch.tensor(old_blocks))
    computed = seq.num_computed
    assert eng.swapper.should_swap(seq)
    eng.swapper.swap_out(seq)
    new_blocks = eng.block_manager.allocator.allocate(nblocks)
    assert set(new_blocks).isdisjoint(old_blocks)
    assert eng.swapper.swap_in(seq, new_blocks) == computed
    k2, v2 = eng.kv.read_blocks(torch.tensor(new_blocks))
    # compared as bits: slots past the computed tokens hold whatever the empty pool held (NaN patterns
    # included, and NaN != NaN as a value)
    assert torch.equal(k.view(torch.int16), k2.view(torch.int16))
    assert torch.equal(v.view(torch.int16), v2.view(torch.int16))
    eng.block_manager.allocator.free(new_blocks)


@pytest.mark.slow
def test_swap_declined_when_host_budget_is_too_small(checkpoint):
    eng = LLMEngine(model=checkpoint, dtype="fp32", enable_prefix_cache=False, swap_space_gb=1e-6, **TINY)
    eng.generate(PROMPTS, PARAMS)
    s = eng.stats()
    assert s.preemptions > 0 and s.swapped_out == 0
    assert eng.swapper.stats.declined == s.preemptions


@pytest.mark.slow
def test_cost_model_prefers_copying_on_cpu(checkpoint):
    eng = LLMEngine(model=checkpoint, dtype="fp32", kv_blocks=64, swap_space_gb=0.1)
    eng.add_request(PROMPTS[1], PARAMS)
    eng.step()
    (seq,) = eng.batch_scheduler.running
    swap_s, recompute_s = eng.swapper.predicted_costs(seq)
    # KV bytes move at memory bandwidth; recomputing costs a forward pass per token
    assert 0 < swap_s < recompute_s
    assert eng.swapper.copy_bytes_per_s > 1e8
