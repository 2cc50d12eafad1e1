"""Chat completions on the real model, as clients leave and as the server stops: a plain (non-streaming)
completion whose client goes away is aborted in the engine at once, like a streaming one; at the end
of the shutdown grace period completions still generating end with a 503 in OpenAI's error shape
(a stream: as its last event), and new ones are refused with 503 + Retry-After. Both ways a chat
runs: on a worker of its own and on a workflow's worker, both stepped by the online session."""

from __future__ import annotations

import json
import socket
import threading
import time
from typing import Any

import httpx
import pytest
from conftest import start_server

pytestmark = pytest.mark.slow
MINI_YAML = """
name: mini
inputs: [topic]
nodes:
  - id: answer
    kind: llm
    prompt: "Name a {{ topic }}."
    max_tokens: 3
outputs:
  answer: answer.output
"""
LONG = {
    "model": "smollm2-135m",
    "messages": [{"role": "user", "content": "Write a very long story about a dragon, at least two thousand words."}],
    "max_tokens": 3000,  # minutes of decoding here: only an abort ends it within the deadlines below
    "temperature": 0,
}


@pytest.fixture(scope="module")
def engines(checkpoint, tmp_path_factory):
    """(the workflow app whose engine chat shares, a separate engine for chat on a worker of its own)."""
    import halo
    from halo.engine import LLMEngine

    path = tmp_path_factory.mktemp("chat") / "mini.yaml"
    path.write_text(MINI_YAML)
    app = halo.compile(path, dtype="fp32")
    yield app, LLMEngine(model=checkpoint, dtype="fp32")
    app.close()


@pytest.fixture(params=["own-worker", "session-guest"])
def chat_server(request, engines):
    from halo.serve import ServeConfig, create_app

    app, own = engines
    if request.param == "own-worker":
        server = start_server(create_app({}, own, ServeConfig(), shutdown_timeout_s=1.0))
        engine = own
    else:
        engine = app.engine()
        server = start_server(create_app({"mini": app}, engine, ServeConfig(), shutdown_timeout_s=1.0))
    yield server, engine
    server.stop()


def _until(predicate: Any, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, f"timed out after {timeout_s} s waiting for {what}"
        time.sleep(0.02)


def _generating(server: Any, engine: Any) -> bool:
    return server.state.chat.in_flight == 1 and engine.num_running + engine.num_waiting >= 1


def test_a_plain_chat_whose_client_goes_away_is_aborted(chat_server):
    server, engine = chat_server
    host, port = server.url.removeprefix("http://").split(":")
    body = json.dumps(LONG).encode()
    sock = socket.create_connection((host, int(port)))
    sock.sendall(
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        + f"Content-Length: {len(body)}\r\n\r\n".encode()
        + body
    )
    _until(lambda: _generating(server, engine), 120, "the completion to start")
    sock.close()  # the client goes away without reading an answer
    _until(lambda: server.state.chat.in_flight == 0 and not engine.has_unfinished(), 20, "the abort")
    assert server.state.admission.depth == 0
    assert server.state.metrics.chat_requests == 0  # aborted, not finished
    short = httpx.post(f"{server.url}/v1/chat/completions", json={**LONG, "max_tokens": 2}, timeout=120)
    assert short.status_code == 200 and short.json()["usage"]["completion_tokens"] == 2


def test_chats_in_flight_at_the_end_of_the_grace_period_end_with_a_503_body(chat_server):
    server, engine = chat_server
    answers: dict[str, Any] = {}

    def plain() -> None:
        answers["plain"] = httpx.post(f"{server.url}/v1/chat/completions", json=LONG, timeout=120)

    def stream() -> None:
        with httpx.stream("POST", f"{server.url}/v1/chat/completions", json={**LONG, "stream": True},
                          timeout=120) as r:  # fmt: skip
            answers["stream"] = (r.status_code, [line for line in r.iter_lines() if line.startswith("data: ")])

    threads = [threading.Thread(target=plain), threading.Thread(target=stream)]
    for t in threads:
        t.start()
    _until(lambda: server.state.chat.in_flight == 2, 120, "both completions to start")
    server.state.begin_shutdown()  # what SIGTERM does; the grace period is 1 s
    refused = httpx.post(f"{server.url}/v1/chat/completions", json={**LONG, "max_tokens": 2}, timeout=30)
    assert refused.status_code == 503 and refused.headers["retry-after"] == "5"
    assert refused.json()["error"]["code"] == "server_shutting_down"
    for t in threads:
        t.join(60)
    assert server.state.drained.wait(60)
    plain_answer = answers["plain"]
    assert plain_answer.status_code == 503, plain_answer.text
    error = plain_answer.json()["error"]
    assert error["code"] == "server_shutting_down" and error["type"] == "service_unavailable"
    assert "shut down before this completion finished" in error["message"]
    status, events = answers["stream"]
    assert status == 200 and events[-1] == "data: [DONE]"
    last = json.loads(events[-2].removeprefix("data: "))
    assert last["error"]["code"] == "server_shutting_down", events[-3:]
    assert server.state.admission.depth == 0 and not engine.has_unfinished()
