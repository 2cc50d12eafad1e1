"""Choice scoring (engine/choice_scoring.py): scores equal a dense full-forward reference, the options
share the prompt's prefill, batching with generation and preemption change nothing, and the errors are
clear. Fast tests run on the tiny GGUF (tests/tiny_gguf.py); one slow test on the real model.
"""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch
from halo.engine import LLMEngine, OutputFormat, SamplingParams
from halo.engine.batch_scheduler import ScheduledBatch
from halo.engine.checkpoint import Checkpoint, load_checkpoint
from halo.engine.sequence import Sequence
from halo.errors import ContextLengthError, InvalidRequestError, KVCacheFullError
from tiny_gguf import write_tiny_gguf

OPTIONS = ["the cat", "hello there", "on", "in the end", "he"]
PROMPTS = ["the cat sat on a", "hello", "in the end the cat", "on and on and on and on"]
CHAT = [{"role": "user", "content": "the cat?"}]
TOL = 1e-4


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Checkpoint:
    return load_checkpoint(write_tiny_gguf(tmp_path_factory.mktemp("tiny") / "tiny.gguf"), use_cache=False)


def make_engine(ckpt: Checkpoint, **kwargs) -> LLMEngine:
    kwargs = {"kv_blocks": 64, "swap_space_gb": 0, "block_size": 4, **kwargs}
    return LLMEngine(ckpt, dtype="fp32", **kwargs)


def scoring(options, **kwargs) -> SamplingParams:
    return SamplingParams(output_format=OutputFormat.of_choices(options), choice_mode="score", **kwargs)


def dense_logprobs(engine: LLMEngine, ids: list[int]) -> torch.Tensor:
    """log_softmax of the logits at every position of one full forward over ``ids`` (no cache, no fork)."""
    seq = Sequence("dense", ids, SamplingParams(max_tokens=1), -1, engine.config.context_length)
    engine.block_manager.append(seq, len(ids))
    try:
        ctx, _, _ = engine.runner.prepare(ScheduledBatch([seq], [len(ids)]))
        ctx = dataclasses.replace(ctx, logits_rows=torch.arange(len(ids)))
        return torch.log_softmax(engine.model.forward(ctx, engine.kv).float(), dim=-1)
    finally:
        engine.block_manager.release(seq)


def reference(engine: LLMEngine, prompt_ids: list[int], option: str) -> list[float]:
    """Each option token's logprob after the prompt, from the dense forward over prompt + option."""
    opt = engine.tokenizer.encode(option)
    lp = dense_logprobs(engine, prompt_ids + opt)
    return [float(lp[len(prompt_ids) - 1 + k, t]) for k, t in enumerate(opt)]


def assert_matches_reference(engine: LLMEngine, result, options) -> None:
    scores = result.choice_scores
    assert [o.text for o in scores.options] == list(options)
    for o in scores.options:
        assert list(o.token_ids) == engine.tokenizer.encode(o.text)
        ref = reference(engine, result.prompt_token_ids, o.text)
        assert o.num_tokens == len(ref)
        assert max(abs(a - b) for a, b in zip(o.token_logprobs, ref, strict=True)) < TOL, o.text
        assert abs(o.logprob - sum(ref)) < TOL * len(ref)


def flat(scores) -> list[float]:
    return [x for o in scores.options for x in o.token_logprobs]


# ---- fidelity ------------------------------------------------------------------------------------


@pytest.mark.parametrize("block_size", [4, 16])
def test_scores_equal_a_dense_full_forward_reference(tiny: Checkpoint, block_size: int) -> None:
    engine = make_engine(tiny, block_size=block_size)
    results = engine.generate([*PROMPTS, CHAT], [scoring(OPTIONS)] * (len(PROMPTS) + 1))
    for r in results:
        assert_matches_reference(engine, r, OPTIONS)


def test_the_pick_and_confidence_follow_the_scores(tiny: Checkpoint) -> None:
    engine = make_engine(tiny)
    for normalized in (False, True):
        (scores,) = engine.score(["the cat sat"], [OPTIONS], length_normalized=normalized)
        expect = [o.mean_logprob if normalized else o.logprob for o in scores.options]
        assert scores.scores == pytest.approx(expect)
        assert scores.chosen == max(range(len(expect)), key=lambda i: expect[i])
        z = sum(math.exp(s - max(expect)) for s in expect)
        probs = [math.exp(s - max(expect)) / z for s in expect]
        assert scores.probabilities == pytest.approx(probs)
        assert scores.confidence == pytest.approx(probs[scores.chosen])
        assert scores.length_normalized is normalized
    # the result of a scoring request is its chosen option
    (r,) = engine.generate(["the cat sat"], scoring(OPTIONS, logprobs=3))
    s = r.choice_scores
    chosen = s.options[s.chosen]
    assert (r.text, r.token_ids, r.finish_reason) == (chosen.text, list(chosen.token_ids), "stop")
    assert r.token_logprobs == list(chosen.token_logprobs)
    assert len(r.top_logprobs) == chosen.num_tokens and all(len(t) == 3 for t in r.top_logprobs)
    assert all(t[0][1] >= lp - 1e-6 for t, lp in zip(r.top_logprobs, r.token_logprobs, strict=True))
    (plain,) = engine.generate(["the cat sat"], scoring(OPTIONS))
    assert plain.token_logprobs == [] and plain.top_logprobs == []


def test_a_chat_prompt_is_scored_after_the_generation_prompt(tiny: Checkpoint) -> None:
    engine = make_engine(tiny)
    (r,) = engine.generate([CHAT], scoring(["yes", "no"]))
    assert r.prompt_token_ids == engine.encode_prompt(CHAT)
    assert_matches_reference(engine, r, ["yes", "no"])


# ---- sharing the prompt ----------------------------------------------------------------------------


def test_options_share_the_prompt_prefill(tiny: Checkpoint) -> None:
    engine = make_engine(tiny)
    prompt = "the cat sat on a mat in the end"
    n = len(engine.encode_prompt(prompt))
    lens = [len(engine.tokenizer.encode(o)) for o in OPTIONS]
    assert n % 4 and 1 in lens  # a partly filled last prompt block, and a one-token option
    (r,) = engine.generate([prompt], scoring(OPTIONS))
    s = engine.stats()
    # the prompt once, then each option's tokens but its last (no option needs the last one's logits)
    assert s.prefill_tokens == n + sum(k - 1 for k in lens)
    assert (s.decode_tokens, s.generated_tokens, s.steps) == (0, 0, 2)
    assert s.forked_options == sum(1 for k in lens if k > 1)
    assert (s.requests, s.scored_requests, s.scored_options, s.prompt_tokens) == (1, 1, len(OPTIONS), n)
    # again: the prompt's full blocks come from the prefix cache, the option positions are recomputed
    engine.reset_stats()
    (again,) = engine.generate([prompt], scoring(OPTIONS))
    s = engine.stats()
    assert again.cached_tokens == s.cached_tokens == n // 4 * 4
    assert s.prefill_tokens == n - n // 4 * 4 + sum(k - 1 for k in lens)
    assert flat(again.choice_scores) == pytest.approx(flat(r.choice_scores), abs=1e-5)
    engine.reset_prefix_cache()
    assert engine.block_manager.num_free == 64  # no part kept a block


def test_one_token_options_are_scored_by_the_prompt_prefill_alone(tiny: Checkpoint) -> None:
    engine = make_engine(tiny)
    one = [o for o in ["a", "b", "on", "he", "c"] if len(engine.tokenizer.encode(o)) == 1]
    assert len(one) == 5
    (r,) = engine.generate(["the cat sat"], scoring(one))
    s = engine.stats()
    assert (s.steps, s.prefill_tokens, s.forked_options) == (1, len(r.prompt_token_ids), 0)
    assert_matches_reference(engine, r, one)


def test_no_block_left_for_the_fork_queues_the_option_through_the_prefix_cache(tiny: Checkpoint) -> None:
    engine = make_engine(tiny)
    prompt = "the cat sat on a mat"  # 12 + 2 tokens: a partial last block
    ids = engine.encode_prompt(prompt)
    assert len(ids) % 4
    bm = engine.block_manager
    hog = bm.allocator.allocate(bm.num_free - bm.blocks_for(len(ids)))  # leave the prompt's blocks only
    try:
        rid = engine.add_request(prompt, scoring(["the cat", "on"]))
        engine.step()  # the prompt: no free block to copy its partial block into
        bm.allocator.free(hog)
        hog = []
        results = []
        while engine.has_unfinished():
            results += engine.step()
    finally:
        if hog:
            bm.allocator.free(hog)
    (r,) = results
    assert r.request_id == rid and engine.stats().forked_options == 0
    assert_matches_reference(engine, r, ["the cat", "on"])


# ---- batching and preemption -------------------------------------------------------------------


def test_scoring_batched_with_generation_equals_each_alone(tiny: Checkpoint) -> None:
    alone = make_engine(tiny)
    want_scores = [alone.score([p], [OPTIONS])[0] for p in PROMPTS]
    want_text = [alone.generate([p], SamplingParams(max_tokens=12))[0].token_ids for p in PROMPTS]
    engine = make_engine(tiny, max_batch_tokens=48)
    ids = {}
    for i, p in enumerate(PROMPTS):  # interleaved: generation and scoring in the same steps
        ids[engine.add_request(p, SamplingParams(max_tokens=12))] = ("gen", i)
        ids[engine.add_request(p, scoring(OPTIONS))] = ("score", i)
    done = {}
    mixed_steps = 0
    while engine.has_unfinished():
        running = engine.batch_scheduler.running
        mixed_steps += any(s.score_from is None for s in running) and any(s.score_from is not None for s in running)
        for r in engine.step():
            done[ids[r.request_id]] = r
    assert mixed_steps > 0
    for i in range(len(PROMPTS)):
        assert done[("gen", i)].token_ids == want_text[i]
        assert flat(done[("score", i)].choice_scores) == pytest.approx(flat(want_scores[i]), abs=1e-5)
        assert done[("score", i)].choice_scores.chosen == want_scores[i].chosen


@pytest.mark.parametrize("swap", [0, 0.01])
def test_scoring_under_preemption_in_a_tiny_kv_pool(tiny: Checkpoint, swap: float) -> None:
    alone = make_engine(tiny)
    want = [alone.score([p], [OPTIONS])[0] for p in PROMPTS]
    engine = make_engine(tiny, kv_blocks=12, max_batch_tokens=16, swap_space_gb=swap)
    if engine.swapper is not None:
        # Swap, not recompute, is the path under test. The cost model prices recomputing this tiny model
        # at the probe's FLOP rate (millions of tokens/s on an AVX-512 machine, 12x cheaper than the
        # ring's copy) and would decline every swap there; a slow recompute makes the choice machine-free.
        engine.swapper.prefill_tokens_per_s = 1.0
    params = [scoring(OPTIONS), SamplingParams(max_tokens=20, ignore_eos=True)] * len(PROMPTS)
    prompts = [p for p in PROMPTS for _ in range(2)]
    results = engine.generate(prompts, params)
    stats = engine.stats()
    assert stats.preemptions > 0 and (stats.swapped_out > 0) == (swap > 0)
    for i, r in enumerate(results[::2]):
        assert flat(r.choice_scores) == pytest.approx(flat(want[i]), abs=TOL)
        assert_matches_reference(alone, r, OPTIONS)
    engine.reset_prefix_cache()
    assert engine.block_manager.num_free == 12


def test_abort_frees_every_part(tiny: Checkpoint) -> None:
    engine = make_engine(tiny, enable_prefix_cache=False)
    free = engine.block_manager.num_free
    rid = engine.add_request("the cat sat on a mat", scoring(OPTIONS))
    assert engine.output_so_far(rid) == []
    engine.step()  # the prompt is computed and the option parts forked
    assert len(engine.batch_scheduler.running) == sum(len(engine.tokenizer.encode(o)) > 1 for o in OPTIONS)
    engine.abort(rid)
    assert not engine.has_unfinished() and engine.block_manager.num_free == free
    assert engine.output_so_far(rid) is None


# ---- errors ------------------------------------------------------------------------------------------


def test_an_option_that_does_not_fit_the_context_window_is_a_clear_error(tiny: Checkpoint) -> None:
    engine = make_engine(tiny, kv_blocks=128)
    ctx = engine.config.context_length
    prompt = list(range(ctx - 3))
    long = "in the end " * 3
    with pytest.raises(ContextLengthError, match=r"option 1 'in the end .*' has \d+ tokens; after the prompt's"):
        engine.add_request(prompt, scoring(["on", long]), request_id="r")
    with pytest.raises(ContextLengthError, match="prompt 0: option 1"):
        engine.generate([prompt], scoring(["on", long]))
    assert not engine.has_unfinished()
    (r,) = engine.generate([prompt], scoring(["on", "he"]))  # options that fit are fine at the edge
    assert r.choice_scores is not None
    small = make_engine(tiny, kv_blocks=2)
    with pytest.raises(KVCacheFullError, match="needs 4 KV blocks but the pool has only 2"):
        small.generate([list(range(8))], scoring(["on", "the cat"]))


def test_scoring_params_are_validated() -> None:
    with pytest.raises(InvalidRequestError, match="choice_mode='score' needs output_format"):
        SamplingParams(choice_mode="score")
    with pytest.raises(InvalidRequestError, match="choice_mode='score' needs output_format"):
        SamplingParams(choice_mode="score", output_format=OutputFormat.of_regex("a+"))
    with pytest.raises(InvalidRequestError, match="choice_mode must be"):
        SamplingParams(choice_mode="vote")  # type: ignore[arg-type]
    with pytest.raises(InvalidRequestError, match="length_normalized applies to choice_mode='score' only"):
        SamplingParams(length_normalized=True)


def test_request_ids_of_scoring_requests_are_unique(tiny: Checkpoint) -> None:
    engine = make_engine(tiny)
    engine.add_request("the cat", scoring(["on", "he"]), request_id="x")
    with pytest.raises(InvalidRequestError, match="already in use"):
        engine.add_request("the cat", scoring(["on", "he"]), request_id="x")
    while engine.has_unfinished():
        engine.step()


# ---- the real model ---------------------------------------------------------------------------------


@pytest.mark.slow
def test_the_real_model_scores_equal_a_dense_reference_and_greedy_agrees(checkpoint, dense) -> None:
    engine = LLMEngine(checkpoint, dtype="fp32", kv_blocks=64, swap_space_gb=0)
    messages = [{"role": "user", "content": "Is the sky blue? Answer yes or no."}]
    one = ["yes", "no", "No"]  # one token each
    (r,) = engine.generate([messages], scoring([*one, "Yes, it is blue."]))
    ids = r.prompt_token_ids
    *short, long = r.choice_scores.options
    assert [o.num_tokens for o in short] == [1, 1, 1] and long.num_tokens > 1
    # tests/dense_reference.py: a plain fp32 forward, no KV cache; the prompt's last row scores the short ones
    lp = torch.log_softmax(dense.logits(ids + list(long.token_ids)).float(), dim=-1)
    ref = [float(lp[len(ids) - 1 + k, t]) for k, t in enumerate(long.token_ids)]
    ref += [float(lp[len(ids) - 1, o.token_ids[0]]) for o in short]
    got = [*long.token_logprobs, *(o.token_logprobs[0] for o in short)]
    assert max(abs(a - b) for a, b in zip(got, ref, strict=True)) < TOL
    # one-token options: constrained greedy decoding picks the likeliest first token, the scored pick
    fmt = OutputFormat.of_choices(one)
    (greedy,) = engine.generate([messages], SamplingParams(output_format=fmt, max_tokens=4))
    assert greedy.text == max(short, key=lambda o: o.logprob).text
