"""The paged, batched engine gives exactly what a plain dense forward gives (fp32 greedy)."""

from __future__ import annotations

import pytest
import torch
from halo.engine import LLMEngine, SamplingParams

FRANCE = [{"role": "user", "content": "What is the capital of France?"}]
SHARED = (
    "You are a careful analyst. Read the record below and answer in one short sentence. "
    "Record: order 1042, customer Alice, three items, shipped late because of a storm. "
)

MAX_TOKENS = 12


def _mixed_prompts(tokenizer) -> list[list[int]]:
    texts = [
        SHARED + "Question: was the order late?",
        SHARED + "Question: who is the customer?",
        SHARED + "Question: how many items were there?",
        "Hi",
        "The quick brown fox jumps over the lazy dog. " * 12 + "Then the fox",
    ]
    chats = [
        [{"role": "user", "content": "What is the capital of France?"}],
        [{"role": "user", "content": "Name a primary colour."}],
    ]
    return [tokenizer.encode(t) for t in texts] + [tokenizer.encode(tokenizer.render_chat(c)) for c in chats]


@pytest.fixture(scope="module")
def reference(checkpoint, dense):
    prompts = _mixed_prompts(checkpoint.tokenizer)
    stop = checkpoint.tokenizer.stop_ids
    return prompts, [dense.greedy(p, MAX_TOKENS, stop) for p in prompts]


@pytest.mark.slow
def test_france_greedy_answer(checkpoint):
    for dtype in ("fp32", "bf16"):
        eng = LLMEngine(model=checkpoint, dtype=dtype, kv_blocks=64)
        (res,) = eng.generate([FRANCE], SamplingParams(max_tokens=32))
        assert res.text == "The capital of France is Paris.", dtype
        assert res.finish_reason == "stop"
        assert res.prompt_tokens == 37


@pytest.mark.parametrize(
    "engine_kwargs",
    [
        pytest.param({"kv_blocks": 512}, id="roomy"),
        pytest.param({"kv_blocks": 512, "max_batch_tokens": 24}, id="chunked-prefill"),
        pytest.param({"kv_blocks": 40, "block_size": 4, "max_batch_tokens": 64}, id="tiny-pool-preemption"),
        pytest.param({"kv_blocks": 512, "enable_prefix_cache": False, "block_size": 4}, id="no-cache-bs4"),
    ],
)
@pytest.mark.slow
def test_mixed_batch_matches_dense_reference(checkpoint, reference, engine_kwargs):
    prompts, expected = reference
    eng = LLMEngine(model=checkpoint, dtype="fp32", **engine_kwargs)
    results = eng.generate(prompts, SamplingParams(max_tokens=MAX_TOKENS))
    for i, (res, exp) in enumerate(zip(results, expected, strict=True)):
        assert res.token_ids == exp, f"prompt {i} diverged from the dense reference"
        assert res.prompt_tokens == len(prompts[i])
    stats = eng.stats()
    assert stats.generated_tokens == sum(len(e) + (len(e) < MAX_TOKENS) for e in expected)
    if engine_kwargs.get("kv_blocks") == 40:
        assert stats.preemptions > 0, "the tiny pool was meant to force preemption"
    if engine_kwargs.get("enable_prefix_cache", True) and engine_kwargs.get("kv_blocks") != 40:
        # The three SHARED prompts reuse the prefix computed by the first one.
        assert sum(r.cached_tokens for r in results[:3]) >= 2 * 16
        assert results[0].cached_tokens == 0
    # Every block is back in the pool or held only by the prefix cache.
    assert eng.block_manager.num_free + eng.block_manager.tree.num_evictable == eng.block_manager.num_blocks


@pytest.mark.slow
def test_second_round_hits_cache_and_matches(checkpoint, reference):
    prompts, expected = reference
    eng = LLMEngine(model=checkpoint, dtype="fp32", kv_blocks=512)
    eng.generate(prompts, SamplingParams(max_tokens=MAX_TOKENS))
    again = eng.generate(prompts, SamplingParams(max_tokens=MAX_TOKENS))
    assert [r.token_ids for r in again] == expected
    for p, r in zip(prompts, again, strict=True):
        # all whole blocks except the one holding the last prompt token come from the cache
        assert r.cached_tokens == (len(p) - 1) // 16 * 16


@pytest.mark.slow
def test_bf16_first_token_logits_close_to_fp32(checkpoint, dense, reference):
    prompts, _ = reference
    eng = LLMEngine(model=checkpoint, dtype="bf16", kv_blocks=128)
    worst = 0.0
    for p in prompts:
        ref = dense.logits(p)[-1]
        got = eng.next_token_logits(p)
        worst = max(worst, float((got - ref).abs().max()))
        assert int(got.argmax()) == int(ref.argmax())
    # MODEL-NOTES measured up to 0.86 for bf16 weights; 1.5 leaves room for kernel differences.
    assert worst < 1.5, worst


@pytest.mark.slow
def test_fp32_logits_match_dense_closely(checkpoint, dense, reference):
    prompts, _ = reference
    eng = LLMEngine(model=checkpoint, dtype="fp32", kv_blocks=128)
    for p in prompts[:3]:
        assert torch.allclose(eng.next_token_logits(p), dense.logits(p)[-1], atol=2e-3, rtol=0)
