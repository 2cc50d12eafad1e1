"""Tokenizer of the default model: exact round trips, special tokens, chat rendering, message checks."""

from __future__ import annotations

import pytest
from halo.engine.gguf_checkpoint import load_gguf_tokenizer
from halo.engine.model_source import resolve_model_path
from halo.engine.tokenizer import Tokenizer
from halo.errors import InvalidRequestError

FRANCE = [{"role": "user", "content": "What is the capital of France?"}]
DEFAULT_SYSTEM = "You are a helpful AI assistant named SmolLM, trained by Hugging Face"
FRANCE_TEXT = (
    f"<|im_start|>system\n{DEFAULT_SYSTEM}<|im_end|>\n"
    "<|im_start|>user\nWhat is the capital of France?<|im_end|>\n"
    "<|im_start|>assistant\n"
)


@pytest.fixture(scope="module")
def tok() -> Tokenizer:
    return load_gguf_tokenizer(resolve_model_path())


ROUND_TRIP = {
    "ascii": "Hello, world! The quick brown fox jumps over the lazy dog.",
    "whitespace": "  leading spaces\tand\ttabs\n\n  trailing  \r\n",
    "accents": "Ça va ? L'élève naïve mange une crème brûlée à Zürich.",
    "cjk": "你好，世界。日本語のテキストと한국어 문장.",
    "emoji": "👩‍👩‍👧‍👦 family, 🎉 party, 👍🏽 ok",
    "code": 'def f(x: int) -> dict:\n    return {"a": [1, 2, 3], "b": x ** 2}  # 2024-01-01\n',
    "chat": FRANCE_TEXT,
}


@pytest.mark.parametrize("text", ROUND_TRIP.values(), ids=ROUND_TRIP.keys())
def test_round_trip_is_exact(tok: Tokenizer, text: str) -> None:
    assert tok.decode(tok.encode(text), skip_special_tokens=False) == text


def test_ids_and_vocab(tok: Tokenizer) -> None:
    assert tok.vocab_size == 49152
    assert (tok.bos_id, tok.eos_id) == (1, 2)
    assert tok.stop_ids == frozenset({2})


def test_special_token_text_maps_to_its_id(tok: Tokenizer) -> None:
    assert tok.encode("<|im_start|>") == [1]
    assert tok.encode("<|im_end|>") == [2]
    ids = tok.encode("<|im_start|>user\nhi<|im_end|>")
    assert ids[0] == 1 and ids[-1] == 2
    assert tok.decode(ids) == "user\nhi"  # special tokens skipped by default
    assert tok.decode(ids, skip_special_tokens=False) == "<|im_start|>user\nhi<|im_end|>"


def test_no_bos_is_added_and_digits_split(tok: Tokenizer) -> None:
    assert tok.encode("Hello")[0] != tok.bos_id
    assert len(tok.encode("2024")) == 4


def test_encode_batch_matches_encode(tok: Tokenizer) -> None:
    texts = list(ROUND_TRIP.values())
    assert tok.encode_batch(texts) == [tok.encode(t) for t in texts]


def test_france_prompt_renders_chatml_with_default_system(tok: Tokenizer) -> None:
    text = tok.render_chat(FRANCE)
    assert text == FRANCE_TEXT
    ids = tok.encode(text)
    assert len(ids) == 37
    assert ids[0] == 1 and ids.count(2) == 2


def test_own_system_prompt_replaces_default(tok: Tokenizer) -> None:
    messages = [{"role": "system", "content": "Be brief."}, *FRANCE]
    assert tok.render_chat(messages, add_generation_prompt=False) == (
        "<|im_start|>system\nBe brief.<|im_end|>\n"
        "<|im_start|>user\nWhat is the capital of France?<|im_end|>\n"
    )


def test_model_without_template_falls_back_to_chatml(tok: Tokenizer) -> None:
    plain = Tokenizer(tok.backend, eos_id=0, bos_id=None, chat_template=None)
    assert plain.render_chat(FRANCE) == (
        "<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n"
    )
    assert plain.stop_ids == frozenset({0, 2})  # eos plus ChatML's end-of-turn


def test_template_runs_sandboxed(tok: Tokenizer) -> None:
    evil = Tokenizer(tok.backend, eos_id=2, chat_template="{{ messages.__class__.__mro__ }}")
    with pytest.raises(InvalidRequestError, match="unsafe"):
        evil.render_chat(FRANCE)
    mutating = Tokenizer(tok.backend, eos_id=2, chat_template="{{ messages.append(1) }}")
    with pytest.raises(InvalidRequestError, match="unsafe"):
        mutating.render_chat(FRANCE)
    strict = Tokenizer(tok.backend, eos_id=2, chat_template="{{ raise_exception('roles must alternate') }}")
    with pytest.raises(InvalidRequestError, match="roles must alternate"):
        strict.render_chat(FRANCE)


BAD_MESSAGES = {
    "not a list": ({"role": "user", "content": "hi"}, "list"),
    "empty": ([], "non-empty"),
    "not a dict": ([{"role": "user", "content": "hi"}, "hi"], r"messages\[1\]"),
    "bad role": ([{"role": "user", "content": "hi"}, {"role": "robot", "content": "x"}], r"messages\[1\]"),
    "missing role": ([{"content": "hi"}], r"messages\[0\]"),
    "content not str": ([{"role": "user", "content": None}], r"messages\[0\]"),
    "missing content": ([{"role": "system", "content": "x"}, {"role": "user"}], r"messages\[1\]"),
}


@pytest.mark.parametrize(("messages", "match"), BAD_MESSAGES.values(), ids=BAD_MESSAGES.keys())
def test_bad_messages_raise(tok: Tokenizer, messages: object, match: str) -> None:
    with pytest.raises(InvalidRequestError, match=match):
        tok.render_chat(messages)  # type: ignore[arg-type]
