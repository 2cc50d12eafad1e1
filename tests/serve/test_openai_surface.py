"""The OpenAI surface of `halo serve` through the official `openai` client, over loopback, on the tiny
random GGUF (tests/tiny_gguf.py): what is implemented (`response_format` json_object / json_schema and
`client.chat.completions.parse`, `n` with `seed`, `stop`, `max_completion_tokens`, `logprobs`, the
`/v1/completions` endpoint plain and streamed) answers as OpenAI's does, and every field that is not
answers 400 naming it. The tiny model's text is noise; the tests check shapes, formats, counts and
reproducibility, never wording. One server for the module; a few tokens per generation."""

from __future__ import annotations

import json
from typing import Literal

import pytest
from conftest import start_server
from pydantic import BaseModel
from tiny_gguf import write_tiny_gguf

openai = pytest.importorskip("openai")

MODEL = "tiny"
HI = [{"role": "user", "content": "hi"}]
VERDICT = {  # jump-forward writes the keys and punctuation: a complete document in a handful of tokens
    "type": "object",
    "properties": {"ok": {"type": "boolean"}, "kind": {"enum": ["cat", "dog"]}},
    "required": ["ok", "kind"],
    "additionalProperties": False,
}


class Verdict(BaseModel):  # VERDICT as a pydantic model (a free string would let the random model ramble)
    ok: bool
    kind: Literal["cat", "dog"]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    from halo.engine import LLMEngine
    from halo.engine.checkpoint import load_checkpoint
    from halo.serve import ServeConfig, create_app

    ckpt = load_checkpoint(write_tiny_gguf(tmp_path_factory.mktemp("tiny") / "tiny.gguf"), use_cache=False)
    engine = LLMEngine(ckpt, dtype="fp32", kv_blocks=64, swap_space_gb=0)
    running = start_server(create_app({}, engine, ServeConfig(queue_limit=16), model_name=MODEL))
    yield running
    running.stop()


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0, timeout=60)


def chat(client, **kw):
    return client.chat.completions.create(model=MODEL, messages=kw.pop("messages", HI), **kw)


def bad_request(call) -> dict:
    with pytest.raises(openai.BadRequestError) as info:
        call()
    body = info.value.body
    assert set(body) == {"message", "type", "param", "code"} and body["type"] == "invalid_request_error", body
    return body


# -- what answers 400 ---------------------------------------------------------------------------------------

CHAT_REFUSED = [
    ({"tools": [{"type": "function", "function": {"name": "f", "parameters": {}}}]}, "tools"),
    ({"tool_choice": "auto"}, "tool_choice"),
    ({"functions": [{"name": "f", "parameters": {}}]}, "functions"),
    ({"function_call": "auto"}, "function_call"),
    ({"parallel_tool_calls": False}, "parallel_tool_calls"),
    ({"audio": {"voice": "alloy", "format": "wav"}}, "audio"),
    ({"modalities": ["text", "audio"]}, "modalities"),
    ({"prediction": {"type": "content", "content": "hello"}}, "prediction"),
    ({"web_search_options": {}}, "web_search_options"),
    ({"logit_bias": {"50": -100}}, "logit_bias"),
    ({"presence_penalty": 0.5}, "presence_penalty"),
    ({"extra_body": {"best_of": 2}}, "best_of"),
    ({"extra_body": {"mirostat": 1}}, "mirostat"),
    ({"n": 2, "temperature": 0}, "n"),
    ({"max_tokens": 4, "max_completion_tokens": 5}, "max_completion_tokens"),
    ({"top_logprobs": 2}, "top_logprobs"),
    ({"response_format": {"type": "json_schema"}}, "response_format.json_schema"),
    (
        {"response_format": {"type": "json_schema", "json_schema": {"name": "v", "schema": {"type": "nonsense"}}}},
        "response_format.json_schema.schema",
    ),
]


@pytest.mark.parametrize(("kw", "param"), CHAT_REFUSED, ids=[p for _, p in CHAT_REFUSED])
def test_chat_fields_not_implemented_are_400_naming_the_field(client, kw, param):
    body = bad_request(lambda: chat(client, **{"max_tokens": 2, **kw}))
    assert body["param"] == param and param.split(".")[0] in body["message"], body


COMPLETION_REFUSED = [
    ({"echo": True}, "echo"),
    ({"suffix": " and then"}, "suffix"),
    ({"best_of": 3}, "best_of"),
    ({"logit_bias": {"50": 5}}, "logit_bias"),
    ({"frequency_penalty": 1.0}, "frequency_penalty"),
    ({"n": 3, "temperature": 0}, "n"),
    ({"logprobs": 6}, "logprobs"),
    ({"extra_body": {"response_format": {"type": "json_object"}}}, "response_format"),
    ({"extra_body": {"messages": HI}}, "messages"),
]


@pytest.mark.parametrize(("kw", "param"), COMPLETION_REFUSED, ids=[p for _, p in COMPLETION_REFUSED])
def test_completion_fields_not_implemented_are_400_naming_the_field(client, kw, param):
    body = bad_request(lambda: client.completions.create(model=MODEL, prompt="the", max_tokens=2, **kw))
    assert body["param"] == param and param in body["message"], body


def test_greedy_with_several_choices_is_refused_with_the_reason(client):
    body = bad_request(lambda: chat(client, n=3, temperature=0, max_tokens=2))
    assert "temperature 0 (greedy decoding)" in body["message"] and "same" in body["message"]


def test_harmless_fields_the_client_may_send_are_accepted(client):
    done = chat(client, max_tokens=2, user="u", store=False, metadata={"k": "v"}, parallel_tool_calls=None,
                tools=None, response_format={"type": "text"}, logprobs=False, n=1)  # fmt: skip
    assert len(done.choices) == 1 and done.choices[0].logprobs is None


# -- chat completions ---------------------------------------------------------------------------------------


def test_parse_with_a_pydantic_model_returns_the_parsed_object(client):
    done = client.chat.completions.parse(model=MODEL, messages=HI, response_format=Verdict, max_tokens=60)
    choice = done.choices[0]
    assert choice.finish_reason == "stop"
    assert isinstance(choice.message.parsed, Verdict)
    assert choice.message.parsed == Verdict.model_validate_json(choice.message.content)


def test_json_schema_and_json_object_outputs_are_documents(client):
    schema = {"type": "json_schema", "json_schema": {"name": "verdict", "schema": VERDICT, "strict": True}}
    for seed in (1, 2):
        done = chat(client, response_format=schema, max_tokens=60, seed=seed)
        value = json.loads(done.choices[0].message.content)
        assert set(value) == {"ok", "kind"} and value["kind"] in ("cat", "dog")
    done = chat(client, response_format={"type": "json_object"}, max_tokens=100, seed=3)
    if done.choices[0].finish_reason == "stop":  # a random model may run to the limit inside a string
        assert isinstance(json.loads(done.choices[0].message.content), dict)


def test_streaming_with_a_json_schema_concatenates_to_a_valid_document(client):
    schema = {"type": "json_schema", "json_schema": {"name": "verdict", "schema": VERDICT}}
    plain = chat(client, response_format=schema, max_tokens=60, seed=7)
    chunks = list(chat(client, response_format=schema, max_tokens=60, seed=7, stream=True))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert json.loads(text) == json.loads(plain.choices[0].message.content)
    assert text == plain.choices[0].message.content
    assert [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason] == ["stop"]


def test_a_json_output_cut_by_the_token_limit_finishes_with_length(client):
    schema = {"type": "json_schema", "json_schema": {"name": "verdict", "schema": VERDICT}}
    done = chat(client, response_format=schema, max_tokens=1)
    assert done.choices[0].finish_reason == "length"
    with pytest.raises(openai.LengthFinishReasonError):  # what the client does with a cut structured output
        client.chat.completions.parse(model=MODEL, messages=HI, response_format=Verdict, max_tokens=1)


def test_n_choices_with_a_seed_are_distinct_and_reproducible(client):
    first = chat(client, n=3, temperature=1.0, seed=11, max_tokens=6)
    again = chat(client, n=3, temperature=1.0, seed=11, max_tokens=6)
    texts = [c.message.content for c in first.choices]
    assert [c.index for c in first.choices] == [0, 1, 2]
    assert texts == [c.message.content for c in again.choices]
    assert len(set(texts)) == 3  # choice i samples with seed + i
    assert first.usage.completion_tokens == 18 and first.usage.prompt_tokens == again.usage.prompt_tokens
    single = chat(client, temperature=1.0, seed=11, max_tokens=6)
    assert single.usage.prompt_tokens == first.usage.prompt_tokens  # the prompt counts once, not n times
    assert single.choices[0].message.content == texts[0]


def test_streaming_several_choices_tags_each_chunk_with_its_index(client):
    plain = chat(client, n=2, seed=5, max_tokens=5)
    stream = chat(client, n=2, seed=5, max_tokens=5, stream=True, stream_options={"include_usage": True})
    texts, finishes = {0: "", 1: ""}, {}
    chunks = list(stream)
    for chunk in chunks:
        for choice in chunk.choices:
            texts[choice.index] += choice.delta.content or ""
            if choice.finish_reason:
                finishes[choice.index] = choice.finish_reason
    assert [texts[0], texts[1]] == [c.message.content for c in plain.choices]
    assert finishes == {0: "length", 1: "length"}
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 10


def test_max_completion_tokens_is_max_tokens(client):
    done = chat(client, max_completion_tokens=3, seed=1)
    assert done.usage.completion_tokens == 3 and done.choices[0].finish_reason == "length"
    same = chat(client, max_completion_tokens=3, max_tokens=3, seed=1)
    assert same.choices[0].message.content == done.choices[0].message.content


def test_chat_logprobs_have_openais_shape(client):
    done = chat(client, logprobs=True, top_logprobs=3, max_tokens=4, seed=2)
    content = done.choices[0].logprobs.content
    assert len(content) == done.usage.completion_tokens == 4
    for entry in content:
        assert entry.logprob <= 0.0 and isinstance(entry.bytes, list) and len(entry.top_logprobs) == 3
        tops = [t.logprob for t in entry.top_logprobs]
        assert tops == sorted(tops, reverse=True) and entry.logprob <= tops[0] + 1e-6
        assert entry.token == bytes(entry.bytes).decode("utf-8", errors="replace")
    joined = b"".join(bytes(e.bytes) for e in content).decode("utf-8", errors="replace")
    assert joined == done.choices[0].message.content
    only = chat(client, logprobs=True, max_tokens=2, seed=2)
    assert [e.top_logprobs for e in only.choices[0].logprobs.content] == [[], []]
    streamed = chat(client, logprobs=True, top_logprobs=3, max_tokens=4, seed=2, stream=True)
    pieces = [e for c in streamed if c.choices and c.choices[0].logprobs for e in c.choices[0].logprobs.content]
    assert [(e.token, e.logprob) for e in pieces] == [(e.token, e.logprob) for e in content]


# -- /v1/completions ----------------------------------------------------------------------------------------


def test_completions_plain_list_stream_and_n(client):
    done = client.completions.create(model=MODEL, prompt="the cat", max_tokens=4, seed=3, stop=["\n\n"])
    assert done.object == "text_completion" and len(done.choices) == 1
    assert done.usage.completion_tokens <= 4 and done.choices[0].finish_reason in ("stop", "length")
    default = client.completions.create(model=MODEL, prompt="the cat", seed=3)
    assert default.usage.completion_tokens <= 16  # OpenAI's default max_tokens

    many = client.completions.create(model=MODEL, prompt=["the cat", "on and on"], n=2, max_tokens=3, seed=3)
    assert [c.index for c in many.choices] == [0, 1, 2, 3]
    assert many.choices[0].text == done.choices[0].text[: len(many.choices[0].text)]  # same prompt and seed
    assert many.usage.completion_tokens == 12
    ids = client.completions.create(model=MODEL, prompt=[116, 104, 101], max_tokens=2, seed=3)
    assert len(ids.choices) == 1 and ids.usage.prompt_tokens >= 3

    chunks = list(client.completions.create(model=MODEL, prompt=["the cat", "on and on"], n=2, max_tokens=3,
                                            seed=3, stream=True, stream_options={"include_usage": True}))  # fmt: skip
    texts = {i: "" for i in range(4)}
    for chunk in chunks:
        for choice in chunk.choices:
            texts[choice.index] += choice.text
    assert [texts[i] for i in range(4)] == [c.text for c in many.choices]
    assert chunks[-1].usage.completion_tokens == 12


def test_completion_logprobs_have_openais_legacy_shape(client):
    done = client.completions.create(model=MODEL, prompt="the cat", max_tokens=4, logprobs=2, seed=4)
    lp = done.choices[0].logprobs
    assert len(lp.tokens) == len(lp.token_logprobs) == len(lp.top_logprobs) == len(lp.text_offset) == 4
    assert lp.text_offset[0] == 0 and lp.text_offset == sorted(lp.text_offset)
    for token, logprob, top in zip(lp.tokens, lp.token_logprobs, lp.top_logprobs, strict=True):
        # the sampled token is always in; tokens that decode to the same text (U+FFFD, half a character)
        # share a key, so there may be fewer than 2 + 1
        assert logprob <= 0.0 and 1 <= len(top) <= 3 and token in top
        if "\ufffd" not in token:
            assert top[token] == logprob
