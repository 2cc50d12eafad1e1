"""Engine behaviour: prefix reuse counters, sampling controls, stop conditions, and bad input."""

from __future__ import annotations

import shutil

import pytest
from halo.engine import LLMEngine, SamplingParams
from halo.errors import ContextLengthError, InvalidRequestError, KVCacheFullError, ModelLoadError

HEADER = " ".join(f"Rule {i}: always check item {i} twice before you answer." for i in range(30))


@pytest.fixture(scope="module")
def engine(checkpoint):
    return LLMEngine(model=checkpoint, dtype="auto", kv_blocks=1024)


@pytest.mark.slow
def test_shared_prefix_is_prefilled_once(engine):
    engine.reset_prefix_cache()
    engine.reset_stats()
    head = engine.tokenizer.encode(HEADER)[:400]
    assert len(head) == 400
    prompts = [head + engine.tokenizer.encode(f" Question {i}: what is rule {i}?") for i in range(32)]
    results = engine.generate(prompts, SamplingParams(max_tokens=2, ignore_eos=True))
    assert results[0].cached_tokens == 0
    for r in results[1:]:
        assert r.cached_tokens >= 400 // 16 * 16, r
    stats = engine.stats()
    total = sum(len(p) for p in prompts)
    assert stats.cached_tokens == sum(r.cached_tokens for r in results)
    assert stats.prefill_tokens == total - stats.cached_tokens
    assert stats.prefill_tokens < total / 4  # far fewer than prefilling every prompt in full


@pytest.mark.slow
def test_seeded_sampling_is_reproducible_and_varies(engine):
    prompt = [{"role": "user", "content": "Write a word."}]
    p = SamplingParams(max_tokens=8, temperature=1.2, top_p=0.95, seed=123, ignore_eos=True)
    a = engine.generate([prompt, prompt], [p, p])
    b = engine.generate([prompt], [p])
    assert a[0].token_ids == a[1].token_ids == b[0].token_ids
    others = engine.generate([prompt] * 4, [SamplingParams(max_tokens=8, temperature=1.5, seed=s,
                                                           ignore_eos=True) for s in range(4)])
    assert len({tuple(r.token_ids) for r in others}) > 1


@pytest.mark.slow
def test_top_k_one_is_greedy(engine):
    prompt = [{"role": "user", "content": "Count to five."}]
    greedy = engine.generate([prompt], SamplingParams(max_tokens=10))[0]
    topk = engine.generate([prompt], SamplingParams(max_tokens=10, temperature=0.8, top_k=1, seed=5))[0]
    assert topk.token_ids == greedy.token_ids


@pytest.mark.slow
def test_stop_conditions(engine):
    prompt = [{"role": "user", "content": "What is the capital of France?"}]
    full = engine.generate([prompt], SamplingParams(max_tokens=32))[0]
    assert full.finish_reason == "stop" and full.text == "The capital of France is Paris."
    cut = engine.generate([prompt], SamplingParams(max_tokens=32, stop=["France"]))[0]
    assert cut.text == "The capital of " and cut.finish_reason == "stop"
    short = engine.generate([prompt], SamplingParams(max_tokens=3))[0]
    assert len(short.token_ids) == 3 and short.finish_reason == "length"
    by_id = engine.generate([prompt], SamplingParams(max_tokens=32, stop_token_ids=[full.token_ids[2]]))[0]
    assert by_id.token_ids == full.token_ids[:2] and by_id.finish_reason == "stop"
    no_eos = engine.generate([prompt], SamplingParams(max_tokens=12, ignore_eos=True))[0]
    assert len(no_eos.token_ids) == 12 and no_eos.finish_reason == "length"


@pytest.mark.slow
def test_step_api_streams_requests(engine):
    a = engine.add_request("The sky is", SamplingParams(max_tokens=4, ignore_eos=True))
    b = engine.add_request([{"role": "user", "content": "Hi"}], SamplingParams(max_tokens=3, ignore_eos=True))
    done = {}
    while engine.has_unfinished():
        for r in engine.step():
            done[r.request_id] = r
    assert set(done) == {a, b}
    assert len(done[a].token_ids) == 4 and len(done[b].token_ids) == 3


@pytest.mark.parametrize(
    ("prompt", "params", "error", "message"),
    [
        ("", None, InvalidRequestError, "empty prompt"),
        ([], None, InvalidRequestError, "empty prompt"),
        ([{"role": "robot", "content": "x"}], None, InvalidRequestError, "role"),
        ([10**9], None, InvalidRequestError, "out of range"),
        (3.5, None, InvalidRequestError, "must be a string"),
        ([5] * 9000, None, ContextLengthError, "context window"),
    ],
)
@pytest.mark.slow
def test_bad_requests_raise_clear_errors_and_engine_stays_usable(engine, prompt, params, error, message):
    before = engine.block_manager.num_free
    with pytest.raises(error, match=message):
        engine.generate(["fine prompt", prompt], params)
    assert not engine.has_unfinished()  # the valid prompt in the same call was not queued either
    assert engine.block_manager.num_free == before
    ok = engine.generate(["The capital of France is"], SamplingParams(max_tokens=2))
    assert len(ok[0].token_ids) >= 1


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"max_tokens": 0}, "max_tokens"),
        ({"temperature": -1}, "temperature"),
        ({"top_p": 0}, "top_p"),
        ({"top_k": -2}, "top_k"),
        ({"seed": -5}, "seed"),
        ({"seed": 2**70}, r"seed must be an integer in \[0, 2\*\*63 - 1\]"),  # torch's manual_seed would raise
        ({"seed": True}, "seed"),
        ({"stop": [""]}, "stop"),
    ],
)
def test_invalid_sampling_params(kwargs, message):
    with pytest.raises(InvalidRequestError, match=message):
        SamplingParams(**kwargs)


@pytest.mark.slow
def test_request_larger_than_kv_pool_is_rejected(checkpoint):
    small = LLMEngine(model=checkpoint, dtype="auto", kv_blocks=8)
    with pytest.raises(KVCacheFullError, match="KV blocks"):
        small.generate(["hello"], SamplingParams(max_tokens=1000))
    assert small.generate(["hello"], SamplingParams(max_tokens=4, ignore_eos=True))[0].token_ids


@pytest.mark.slow
def test_unknown_model_and_corrupt_gguf(checkpoint, tmp_path):
    with pytest.raises(ModelLoadError, match="no-such-model"):
        LLMEngine(model="no-such-model")
    bad = tmp_path / "broken.gguf"
    with open(checkpoint.path, "rb") as src, open(bad, "wb") as dst:
        shutil.copyfileobj(src, dst, length=1 << 20)
        dst.truncate(5_000_000)
    with pytest.raises(ModelLoadError, match="broken.gguf"):
        LLMEngine(model=bad)


@pytest.mark.slow
def test_engine_construction_errors(checkpoint):
    with pytest.raises(InvalidRequestError, match="kv_blocks"):
        LLMEngine(model=checkpoint, kv_blocks=0)
    with pytest.raises(InvalidRequestError, match="dtype"):
        LLMEngine(model=checkpoint, dtype="int3")
