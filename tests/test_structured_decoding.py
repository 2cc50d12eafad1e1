"""Constrained decoding (engine/grammar.py): formats hold, greedy equals a plain masked reference loop,
batching and preemption change nothing, jump-forward saves steps, truncation is flagged, logprobs are
those under the mask. Fast tests run on the tiny GGUF (tests/tiny_gguf.py); one slow test on the real model.
"""

from __future__ import annotations

import json
import math
import re

import jsonschema
import llguidance
import numpy as np
import pytest
import torch
from halo.engine import LLMEngine, OutputFormat, SamplingParams
from halo.engine.checkpoint import Checkpoint, load_checkpoint
from halo.engine.grammar import GrammarCompiler, format_error, grammar_text
from halo.errors import InvalidRequestError
from tiny_gguf import write_tiny_gguf

PERSON = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 6},
        "age": {"type": "integer", "minimum": 0, "maximum": 99},
        "kind": {"enum": ["cat", "dog"]},
    },
    "required": ["name", "age", "kind"],
    "additionalProperties": False,
}
FORMATS = {
    "choices": OutputFormat.of_choices(["APPROVE", "REJECT", "REVIEW later"]),
    "regex": OutputFormat.of_regex(r"[a-z]{2,4}-\d{2}"),
    "json": OutputFormat.of_json(PERSON),
    "json_object": OutputFormat.of_json(),
}
PROMPTS = ["the cat", "hello there", "in the end", "on and on"]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Checkpoint:
    return load_checkpoint(write_tiny_gguf(tmp_path_factory.mktemp("tiny") / "tiny.gguf"), use_cache=False)


def make_engine(ckpt: Checkpoint, **kwargs) -> LLMEngine:
    kwargs = {"kv_blocks": 64, "swap_space_gb": 0, **kwargs}
    return LLMEngine(ckpt, dtype="fp32", **kwargs)


@pytest.fixture(scope="module")
def engine(tiny: Checkpoint) -> LLMEngine:
    return make_engine(tiny)


def accepts(fmt: OutputFormat, text: str) -> bool:
    """The format's meaning, checked without llguidance."""
    if fmt.kind == "choices":
        return text in fmt.choices
    if fmt.kind == "regex":
        return re.fullmatch(fmt.regex or "", text) is not None
    try:
        value = json.loads(text)
    except ValueError:
        return False
    if fmt.schema is None:
        return isinstance(value, dict)
    try:
        jsonschema.validate(value, json.loads(fmt.schema))
    except jsonschema.ValidationError:
        return False
    return True


def outcome(results: list) -> list[tuple]:
    """What a request produced, without its request id."""
    return [(r.token_ids, r.text, r.finish_reason, r.output_complete, r.format_error) for r in results]


def params(fmt: OutputFormat | None, **kwargs) -> SamplingParams:
    return SamplingParams(**{"max_tokens": 80, "output_format": fmt, **kwargs})


# ---- a plain reference: full recompute per token, the same llguidance masks and forced tokens, argmax ----


def reference_greedy(engine: LLMEngine, prompt: str, fmt: OutputFormat, max_tokens: int) -> list[int]:
    tok = engine.tokenizer
    lltok = llguidance.LLTokenizer(
        tok.backend.to_str(), n_vocab=engine.config.vocab_size, eos_token=sorted(tok.stop_ids)
    )
    matcher = llguidance.LLMatcher(lltok, grammar_text(fmt), log_level=0)
    ids = engine.encode_prompt(prompt)
    out: list[int] = []
    while True:
        logits = engine.next_token_logits(ids + out).clone()
        bits = np.unpackbits(np.frombuffer(matcher.compute_bitmask(), dtype=np.uint8), bitorder="little")
        logits[torch.from_numpy(bits[: logits.numel()] == 0)] = float("-inf")
        token = int(logits.argmax())
        if token in tok.stop_ids:
            return out
        assert matcher.consume_token(token)
        out.append(token)
        if matcher.is_stopped() or len(out) >= max_tokens:
            return out
        for t in matcher.compute_ff_tokens():  # forced: appended without sampling
            assert matcher.consume_token(t)
            out.append(t)
            if matcher.is_stopped() or len(out) >= max_tokens:
                return out


@pytest.mark.parametrize("kind", sorted(FORMATS))
def test_every_format_produces_text_the_format_accepts(engine: LLMEngine, kind: str) -> None:
    fmt = FORMATS[kind]
    results = engine.generate(PROMPTS, params(fmt, max_tokens=120))
    for r in results:
        if kind == "json_object" and not r.output_complete:
            # any object is unbounded: random weights may never close it, and that is flagged, not returned
            assert r.finish_reason == "length" and r.format_error == "json output truncated at max_tokens=120"
            continue
        assert r.finish_reason == "stop" and r.output_complete and r.format_error is None, r
        assert accepts(fmt, r.text), r.text


@pytest.mark.parametrize("kind", sorted(FORMATS))
def test_constrained_greedy_equals_a_plain_masked_reference_loop(engine: LLMEngine, kind: str) -> None:
    fmt = FORMATS[kind]
    for prompt in PROMPTS[:2]:
        (r,) = engine.generate([prompt], params(fmt, max_tokens=40))
        assert r.token_ids == reference_greedy(engine, prompt, fmt, 40), prompt


def test_batched_mixed_formats_equal_one_at_a_time(tiny: Checkpoint) -> None:
    plist = [params(FORMATS[k], max_tokens=40) for k in sorted(FORMATS)] + [params(None, max_tokens=30)]
    plist += [params(FORMATS["json"], temperature=0.8, seed=7, max_tokens=40)]
    plist += [params(FORMATS["regex"], temperature=1.2, seed=1)]
    prompts = [PROMPTS[i % len(PROMPTS)] for i in range(len(plist))]
    # a small token budget: prompts and forced tails are computed in chunks next to other sequences' decodes
    batched = make_engine(tiny, max_batch_tokens=7).generate(prompts, plist)
    alone = make_engine(tiny)
    for prompt, p, r in zip(prompts, plist, batched, strict=True):
        assert outcome([r]) == outcome(alone.generate([prompt], p))


def test_preemption_and_prefix_cache_keep_constrained_outputs(tiny: Checkpoint) -> None:
    prompts = [f"{p} {i}" for i, p in enumerate(PROMPTS * 2)]
    plist = [params(FORMATS["json"])] * len(prompts)
    roomy = make_engine(tiny).generate(prompts, plist)
    for swap_gb in (0, 1.0):  # preempted by recompute, or (where the swapper predicts it cheaper) by swapping
        tight = make_engine(tiny, kv_blocks=24, block_size=4, max_batch_tokens=16, swap_space_gb=swap_gb)
        assert outcome(tight.generate(prompts, plist)) == outcome(roomy)
        assert tight.stats().preemptions > 0 and tight.stats().jump_forward_tokens > 0
    # what was published from the outputs (forced tokens included) serves a continuation's prefill
    cold = make_engine(tiny, enable_prefix_cache=False)
    warm = make_engine(tiny, block_size=4)
    warm.generate(prompts[:1], plist[:1])
    ids = roomy[0].prompt_token_ids + roomy[0].token_ids
    free = SamplingParams(max_tokens=8, ignore_eos=True)
    (w,) = warm.generate([ids], free)
    # every whole block computed before it finished (its last sampled token and forced tail were not)
    assert w.cached_tokens >= len(roomy[0].prompt_token_ids) + 16
    assert w.token_ids == cold.generate([ids], free)[0].token_ids


def test_seeded_temperature_sampling_is_reproducible_and_stays_in_format(engine: LLMEngine) -> None:
    for kind in ("choices", "regex", "json"):
        fmt = FORMATS[kind]
        plist = [params(fmt, temperature=1.0, top_k=50, top_p=0.9, seed=s, max_tokens=120) for s in range(4)]
        first = engine.generate(PROMPTS, plist)
        assert outcome(engine.generate(PROMPTS, plist)) == outcome(first)
        for r in first:
            assert r.output_complete and accepts(fmt, r.text), r.text


def test_max_tokens_before_the_format_accepts_is_length_and_incomplete(engine: LLMEngine) -> None:
    (r,) = engine.generate(["the cat"], params(FORMATS["json"], max_tokens=6))
    assert r.finish_reason == "length" and len(r.token_ids) == 6
    assert not r.output_complete and r.format_error == "json output truncated at max_tokens=6"
    # a regex that accepts where max_tokens cuts it is complete
    (r,) = engine.generate(["the cat"], params(OutputFormat.of_regex("[a-z]+"), max_tokens=5, ignore_eos=True))
    assert (r.finish_reason, r.output_complete, len(r.token_ids)) == ("length", True, 5)
    assert re.fullmatch("[a-z]+", r.text)


def test_the_context_window_before_the_format_accepts_is_flagged(engine: LLMEngine) -> None:
    ctx = engine.config.context_length
    prompt = list(engine.encode_prompt("the cat " * 60))[: ctx - 5]
    (r,) = engine.generate([prompt], params(FORMATS["json"], max_tokens=64))
    assert r.finish_reason == "length" and len(r.token_ids) == 5
    assert not r.output_complete and r.format_error == f"json output truncated at the context window ({ctx} tokens)"


def test_stop_strings_on_constrained_requests(engine: LLMEngine) -> None:
    fmt = OutputFormat.of_regex("[a-z]{2} [a-z]{2}")
    (r,) = engine.generate(["the cat"], params(fmt, stop=[" "]))
    assert r.finish_reason == "stop" and len(r.text) == 2
    assert not r.output_complete and r.format_error == "regex output cut by stop string ' ' before it was complete"
    (r,) = engine.generate(["the cat"], params(FORMATS["choices"], stop=["\n"]))  # the format never emits it
    assert r.output_complete and r.text in FORMATS["choices"].choices


def test_jump_forward_saves_decode_steps_on_fixed_keys(tiny: Checkpoint) -> None:
    fmt = OutputFormat.of_json(PERSON)
    runs = {}
    for jump in (True, False):
        eng = make_engine(tiny, jump_forward=jump)
        results = eng.generate(PROMPTS[:1], params(fmt))
        assert all(r.output_complete and accepts(fmt, r.text) for r in results)
        runs[jump] = (eng.stats(), results)
    on, off = runs[True][0], runs[False][0]
    # `{"age": `, `, "kind": "`, `", "name": "` and the closing run are forced: at least the key texts
    assert on.jump_forward_tokens >= len(tiny.tokenizer.encode('{"age": , "kind": "", "name": ""}')) - 8
    assert on.decode_steps_saved == on.jump_forward_tokens  # one step per forced token; the tails fit a step
    assert off.jump_forward_tokens == 0 and off.decode_steps_saved == 0
    assert on.steps < off.steps and on.generated_tokens < off.generated_tokens
    assert len(runs[True][1][0].token_ids) == on.generated_tokens + on.jump_forward_tokens


def test_a_forced_tail_longer_than_the_step_budget_costs_steps(tiny: Checkpoint) -> None:
    eng = make_engine(tiny, max_batch_tokens=2)
    (r,) = eng.generate(PROMPTS[:1], params(FORMATS["json"]))
    s = eng.stats()
    assert r.output_complete and 0 < s.decode_steps_saved < s.jump_forward_tokens


@pytest.mark.parametrize(
    ("fmt", "needle"),
    [
        (OutputFormat.of_regex("(abc"), "regex (abc"),
        (OutputFormat.of_json({"type": "object", "properties": {"a": {"type": "strin"}}}), "json schema"),
    ],
)
def test_a_format_that_does_not_compile_is_a_clear_error(engine: LLMEngine, fmt: OutputFormat, needle: str) -> None:
    with pytest.raises(InvalidRequestError, match=re.escape(needle)) as info:
        engine.add_request("the cat", params(fmt))
    assert "does not compile" in str(info.value)
    with pytest.raises(InvalidRequestError, match=r"prompt 1: output format"):
        engine.generate(["the cat", "the dog"], [params(None), params(fmt)])
    assert not engine.has_unfinished()  # nothing was queued
    assert format_error(fmt)  # the spec's load-time check says the same without a tokenizer
    assert format_error(FORMATS["json"]) is None


def test_formats_are_compiled_once_and_the_cache_is_bounded(tiny: Checkpoint) -> None:
    eng = make_engine(tiny)
    eng.generate(PROMPTS, params(FORMATS["choices"]))
    eng.generate(PROMPTS, params(OutputFormat.of_choices(["APPROVE", "REJECT", "REVIEW later"])))  # equal format
    assert eng.stats().grammar_compiles == 1
    compiler = GrammarCompiler(tiny.tokenizer, tiny.config.vocab_size, cache_size=2)
    for pattern in ("a+", "b+", "c+", "a+"):
        compiler.matcher(OutputFormat.of_regex(pattern))
    assert compiler.compiles == 4 and len(compiler._cache) == 2


def _walk(lltok: llguidance.LLTokenizer, grammar: str, choices: list[int]) -> list[tuple[bytes, list[int]]]:
    """(mask, forced tokens) at each step of a walk taking allowed token ``choices[i] % allowed``."""
    matcher, out = llguidance.LLMatcher(lltok, grammar, log_level=0), []
    words = (lltok.vocab_size + 31) // 32
    executor = llguidance.LLExecutor()
    for pick in choices:
        mask = np.zeros((1, words), dtype=np.int32)
        executor.unsafe_compute_mask_ptr([(matcher, 0)], mask.ctypes.data, words * 4, 1)
        out.append((mask.tobytes(), matcher.compute_ff_tokens()))
        allowed = np.flatnonzero(np.unpackbits(mask.view(np.uint8), bitorder="little")[: lltok.vocab_size])
        if matcher.is_stopped() or not len(allowed):
            break
        assert matcher.consume_token(int(allowed[pick % len(allowed)]))
    return out


@pytest.mark.parametrize("model", ["tiny", "default"])
def test_the_stored_vocabulary_builds_the_same_grammar_tokenizer(tiny: Checkpoint, model: str) -> None:
    # The conversion cache stores what llguidance reads off a tokenizer (engine/grammar_vocabulary.py)
    # so later processes skip parsing its JSON again; the result must mask and force exactly alike.
    from halo.engine.checkpoint import load_tokenizer
    from halo.engine.grammar_vocabulary import from_json, from_vocabulary, grammar_vocabulary

    tokenizer, n_vocab = (tiny.tokenizer, tiny.config.vocab_size) if model == "tiny" else (load_tokenizer(), 49152)
    vocabulary = grammar_vocabulary(tokenizer, n_vocab)
    built, stored = from_json(tokenizer, n_vocab), from_vocabulary(tokenizer, vocabulary)
    assert (stored.vocab_size, stored.eos_tokens, stored.is_canonical) == (
        built.vocab_size, built.eos_tokens, built.is_canonical
    )
    corpus = ["Hello world", "  two  spaces\t\ttabs\n", "café naïve", "日本語", "emoji 😀", "def f(x):\n    return x"]
    corpus += ['{"a": 1}', "<|im_start|>user\nhi<|im_end|>", "APPROVE", "REVIEW later"]
    assert [stored.tokenize_str(t) for t in corpus] == [built.tokenize_str(t) for t in corpus]
    assert [stored.decode_bytes([i]) for i in range(n_vocab)] == [built.decode_bytes([i]) for i in range(n_vocab)]
    rng = np.random.default_rng(0)
    vendor = OutputFormat.of_json({"type": "object", "properties": {"vendor": {"type": "string"}}})
    for fmt in [*FORMATS.values(), vendor]:
        for _ in range(4):
            picks = [int(x) for x in rng.integers(0, 2**31, 24)]
            assert _walk(stored, grammar_text(fmt), picks) == _walk(built, grammar_text(fmt), picks), fmt.describe()


def test_an_engine_from_the_cache_uses_the_stored_vocabulary_and_decodes_alike(tmp_path) -> None:
    source = write_tiny_gguf(tmp_path / "tiny.gguf")
    load_checkpoint(source, cache_dir=tmp_path / "cache")  # converts and stores the entry
    cached = load_checkpoint(source, cache_dir=tmp_path / "cache")
    assert cached.grammar_vocabulary is not None and cached.grammar_vocabulary.n_vocab == cached.config.vocab_size
    fresh = load_checkpoint(source, use_cache=False)
    assert fresh.grammar_vocabulary is None
    with_vocabulary, without = make_engine(cached), make_engine(fresh)
    assert with_vocabulary.grammar.vocabulary is not None and without.grammar.vocabulary is None
    batch = [params(fmt) for fmt in FORMATS.values()]
    got = [r.token_ids for r in with_vocabulary.generate(PROMPTS, batch)]
    assert got == [r.token_ids for r in without.generate(PROMPTS, batch)]


def test_mask_cost_is_counted(tiny: Checkpoint) -> None:
    eng = make_engine(tiny)
    eng.generate(PROMPTS, [params(FORMATS["json"]), params(None, max_tokens=4)] * 2)
    s = eng.stats()
    assert s.masked_rows == s.generated_tokens - 8  # every sampled token of the two constrained requests
    assert 0 < s.mask_seconds <= s.grammar_seconds < s.step_seconds
    eng.reset_stats()
    assert eng.stats().masked_rows == 0 and eng.stats().grammar_compiles == 0


def test_ignore_eos_keeps_a_constrained_request_going_until_the_grammar_ends(engine: LLMEngine) -> None:
    (r,) = engine.generate(["the cat"], params(OutputFormat.of_regex("[a-z]{1,30}"), ignore_eos=True))
    assert r.finish_reason == "stop" and r.output_complete and len(r.text) == 30


# ---- logprobs ---------------------------------------------------------------------------------------


def test_logprobs_of_free_text_are_the_model_log_softmax(engine: LLMEngine) -> None:
    (r,) = engine.generate(["the cat"], SamplingParams(max_tokens=4, ignore_eos=True, logprobs=3))
    assert len(r.token_logprobs) == len(r.top_logprobs) == 4
    ids = engine.encode_prompt("the cat")
    for i, token in enumerate(r.token_ids):
        ref = torch.log_softmax(engine.next_token_logits(ids + r.token_ids[:i]), dim=-1)
        assert math.isclose(r.token_logprobs[i], float(ref[token]), abs_tol=1e-4)
        best = r.top_logprobs[i]
        assert len(best) == 3 and best[0][0] == token  # greedy: the chosen token is the best
        assert [t for t, _ in best] == torch.topk(ref, 3).indices.tolist()
    (r,) = engine.generate(["the cat"], SamplingParams(max_tokens=4, ignore_eos=True, logprobs=0))
    assert len(r.token_logprobs) == 4 and r.top_logprobs == [[]] * 4
    (r,) = engine.generate(["the cat"], SamplingParams(max_tokens=4, ignore_eos=True))
    assert r.token_logprobs == [] and r.top_logprobs == []


def test_logprobs_under_a_mask_renormalise_over_the_allowed_tokens(engine: LLMEngine) -> None:
    fmt = OutputFormat.of_choices(["APPROVE", "REJECT"])
    (r,) = engine.generate(["the cat"], params(fmt, logprobs=5))
    assert r.text in fmt.choices and len(r.token_logprobs) == len(r.token_ids)
    first = r.top_logprobs[0]  # only "A" and "R" are allowed first: they share all the mass
    assert len(first) == 2 and math.isclose(sum(math.exp(v) for _, v in first), 1.0, rel_tol=1e-5)
    assert r.token_logprobs[1:] == [0.0] * (len(r.token_ids) - 1)  # the rest of the choice is forced
    assert all(top == [(t, 0.0)] for t, top in zip(r.token_ids[1:], r.top_logprobs[1:], strict=True))


def test_logprobs_is_validated() -> None:
    for bad in (-1, 21, True, 1.5):
        with pytest.raises(InvalidRequestError, match="logprobs"):
            SamplingParams(logprobs=bad)


# ---- the real model ---------------------------------------------------------------------------------


@pytest.mark.slow
def test_the_real_model_answers_exactly_one_of_the_choices(checkpoint) -> None:
    eng = LLMEngine(model=checkpoint, dtype="auto", kv_blocks=64, swap_space_gb=0)
    fmt = OutputFormat.of_choices(["APPROVE", "REJECT"])
    prompts = [
        [{"role": "user", "content": f"Invoice from ACME Tools Ltd, total {amount} EUR. Reply APPROVE or REJECT."}]
        for amount in (120, 98000)
    ]
    for r in eng.generate(prompts, params(fmt, max_tokens=8, logprobs=0)):
        assert r.text in fmt.choices and r.finish_reason == "stop" and r.output_complete
        assert r.token_logprobs[0] <= 0.0 and r.token_logprobs[1:] == [0.0] * (len(r.token_ids) - 1)
