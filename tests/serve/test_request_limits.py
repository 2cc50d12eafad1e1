"""Hostile or unsupported requests get a 4xx in OpenAI's error shape that names what is wrong: bodies
nested too deep, numbers out of range, OpenAI fields the engine does not implement; `/health` tells an
unauthenticated caller only that the server is alive. The stand-in workflow app, no model: fast."""

from __future__ import annotations

import httpx
import pytest

AUTH = {"Authorization": "Bearer sekret"}
CHAT = {"model": "smollm2-135m", "messages": [{"role": "user", "content": "hi"}]}


def _error(r: httpx.Response, status: int) -> dict:
    assert r.status_code == status, r.text
    body = r.json()
    assert set(body) == {"error"} and set(body["error"]) == {"message", "type", "param", "code"}, body
    return body["error"]


@pytest.fixture
def client(echo_server):
    server, _ = echo_server
    with httpx.Client(base_url=server.url, headers=AUTH, timeout=30) as c:
        yield c


def test_a_body_nested_past_the_depth_limit_is_a_400_naming_where(client):
    err = _error(client.post("/v1/workflows/echo/runs", content=b'{"x": ' + b"[" * 100 + b"]" * 100 + b"}"), 400)
    assert err["code"] == "json_too_deep" and "limit of 64 levels (at x[0][0]" in err["message"]
    assert err["param"] == "x"
    err = _error(client.post("/v1/chat/completions", content=b"[" * 2000 + b"]" * 2000), 400)
    assert err["code"] == "json_too_deep"
    assert client.post("/v1/workflows/echo/runs", json={"x": [[["a few levels are fine"]]]}).status_code == 202


def test_200000_deep_json_is_a_400_and_the_server_keeps_serving(roomy_echo_server):
    with httpx.Client(base_url=roomy_echo_server.url, timeout=30) as c:
        for path in ("/v1/workflows/echo/runs", "/v1/chat/completions"):
            err = _error(c.post(path, content=b"[" * 200_000 + b"]" * 200_000), 400)
            assert err["code"] == "json_too_deep", err
            err = _error(c.post(path, content=b'{"x": ' + b'{"a":' * 100_000 + b"1" + b"}" * 100_001), 400)
            assert err["code"] == "json_too_deep", err
        err = _error(c.post("/v1/workflows/echo/runs", content=b'{"x": ' + b"9" * 5000 + b"}"), 400)
        assert "not valid JSON" in err["message"] and "5000 digits" in err["message"]
        r = c.post("/v1/workflows/echo/runs", json={"x": "still here"})
        assert c.get(f"/v1/runs/{r.json()['ids'][0]}", params={"wait": "true"}).json()["output"] == {
            "echo": "still here"
        }


@pytest.mark.parametrize(
    ("body", "param", "needle"),
    [
        (b'{"x": 1180591620717411303424}', "x", "outside the signed 64-bit range"),
        (b'[{"x": 1}, {"x": [0, -9223372036854775809]}]', "[1].x[1]", "outside the signed 64-bit range"),
        (b'{"x": NaN}', None, "'NaN' is not a JSON number"),
        (b'{"x": 1e400}', None, "overflows a 64-bit float"),
    ],
)
def test_numbers_a_row_cannot_hold_are_a_400_naming_where(client, body, param, needle):
    err = _error(client.post("/v1/workflows/echo/runs", content=body), 400)
    assert needle in err["message"] and err["param"] == param, err


def test_integer_ranges_of_chat_fields_are_400(client):
    err = _error(client.post("/v1/chat/completions", json={**CHAT, "seed": 2**70}), 400)
    assert err["param"] == "seed" and "64-bit" in err["message"]
    err = _error(client.post("/v1/chat/completions", json={**CHAT, "seed": 2**63}), 400)
    assert err["param"] == "seed"
    err = _error(client.post("/v1/chat/completions", json={**CHAT, "max_tokens": 2**40}), 400)
    assert err["param"] == "max_tokens" and "less than or equal to 2147483647" in err["message"]
    err = _error(client.post("/v1/chat/completions", json={**CHAT, "max_completion_tokens": 0}), 400)
    assert err["param"] == "max_completion_tokens"
    # In range: past validation, to the model check (this server serves no chat model).
    r = client.post("/v1/chat/completions", json={**CHAT, "seed": 2**63 - 1, "max_tokens": 2**31 - 1})
    assert _error(r, 404)["code"] == "model_not_found"


@pytest.mark.parametrize(
    ("extra", "param"),
    [
        ({"tools": [{"type": "function", "function": {"name": "f", "parameters": {}}}]}, "tools"),
        ({"tool_choice": "auto"}, "tool_choice"),
        ({"functions": [{"name": "f"}]}, "functions"),
        ({"response_format": {"type": "json_object", "grammar": "x"}}, "response_format.grammar"),
        ({"response_format": {"type": "json_schema"}}, "response_format.json_schema"),
        ({"response_format": {"type": "json_schema", "json_schema": {"name": "a", "schema": {}, "x": 1}}},
         "response_format.json_schema.x"),
        ({"top_logprobs": 3}, "top_logprobs"),
        ({"logit_bias": {"50256": -100}}, "logit_bias"),
        ({"presence_penalty": 0.5}, "presence_penalty"),
        ({"frequency_penalty": 1}, "frequency_penalty"),
        ({"n": 2, "temperature": 0}, "n"),
        ({"max_tokens": 5, "max_completion_tokens": 6}, "max_completion_tokens"),
        ({"parallel_tool_calls": True}, "parallel_tool_calls"),
        ({"function_call": "auto"}, "function_call"),
        ({"prediction": {"type": "content", "content": "x"}}, "prediction"),
        ({"web_search_options": {}}, "web_search_options"),
        ({"audio": {"voice": "alloy", "format": "wav"}}, "audio"),
        ({"modalities": ["text", "audio"]}, "modalities"),
        ({"stream": True, "stream_options": {"include_usage": True, "chunk_size": 3}}, "stream_options.chunk_size"),
        ({"best_of": 3}, "best_of"),
        (
            {"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {}}]}]},
            "messages[0].content[0]",
        ),
        ({"messages": [{"role": "tool", "content": "42", "tool_call_id": "c1"}]}, "messages[0].role"),
        ({"messages": [{"role": "assistant", "content": "x", "tool_calls": [{"id": "c1"}]}]}, "messages[0].tool_calls"),
    ],
)
def test_unsupported_openai_fields_are_400_naming_the_field(client, extra, param):
    err = _error(client.post("/v1/chat/completions", json={**CHAT, **extra}), 400)
    assert err["param"] == param, err
    assert param.split("[")[0].split(".")[0] in err["message"] and err["type"] == "invalid_request_error"


def test_neutral_values_of_unsupported_fields_and_metadata_are_accepted(client):
    neutral = {
        "tools": [],
        "tool_choice": "none",
        "response_format": {"type": "text"},
        "logprobs": False,
        "logit_bias": {},
        "presence_penalty": 0,
        "frequency_penalty": 0.0,
        "n": 1,
        "user": "u-1",
        "metadata": {"k": "v"},
        "store": False,
        "parallel_tool_calls": None,
        "stream": True,
        "stream_options": {"include_usage": True},
        "messages": [
            {"role": "developer", "content": "be brief"},
            {"role": "assistant", "content": "ok", "refusal": None, "tool_calls": None, "annotations": []},
            {"role": "user", "content": [{"type": "text", "text": "hi"}], "name": "ann"},
        ],
    }
    # Everything above is understood: the only complaint left is that this server has no chat model.
    assert _error(client.post("/v1/chat/completions", json={**CHAT, **neutral}), 404)["code"] == "model_not_found"


def test_health_tells_an_unauthenticated_caller_only_that_it_is_alive(echo_server):
    server, _ = echo_server
    r = httpx.get(f"{server.url}/health")
    assert r.status_code == 200 and r.json() == {"status": "ok"}
    r = httpx.get(f"{server.url}/health", headers={"Authorization": "Bearer wrong"})
    assert r.json() == {"status": "ok"}
    full = httpx.get(f"{server.url}/health", headers=AUTH).json()
    assert full["status"] == "ok" and full["workflows"] == ["echo"] and full["queue_limit"] == 8
