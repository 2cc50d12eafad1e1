"""Remote (`source: openai`) models over real HTTP on loopback.

A small scripted OpenAI-compatible server written here (a real `ThreadingHTTPServer`) checks the wire
format, retries (429 + Retry-After then 200, 503 then 200), a 400's per-row error, deduplication, the
result cache, API keys, cancellation and what the planner learns; the slow tests run `halo serve`'s
own app (uvicorn, fp32, the default model) as the remote server and compare with local runs.
"""

from __future__ import annotations

import json
import threading
from collections import Counter
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import halo
import pytest
from halo.plan.cost.remote_latency import DEFAULT_CURVE, RemoteLatencyModel, endpoint_key
from halo.runtime.online_session import OnlineSession, RunCancelled
from halo.spec.errors import SpecError


class ScriptedServer:
    """An OpenAI-compatible chat/completions endpoint whose answer depends on the user message:
    `429:<x>` answers 429 (Retry-After: 0) once, then 200; `503:<x>` 503 once, then 200; `400:<x>`
    always 400; `hang:<x>` waits for `release`; anything else 200 with `echo <message>`."""

    def __init__(self) -> None:
        self.bodies: list[dict[str, Any]] = []
        self.headers: list[dict[str, str]] = []
        self.seen: Counter[str] = Counter()
        self.hanging = threading.Event()  # set when a `hang:` request arrived
        self.release = threading.Event()
        self.lock = threading.Lock()
        self.pairs = threading.Condition()
        self.current = 0  # `pair:` requests in the handler now, and the most at once
        self.most = 0
        self.arrived = 0
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def do_POST(self) -> None:  # noqa: N802 - the stdlib's name
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                text = body["messages"][-1]["content"] if "messages" in body else body["prompt"]
                with server.lock:
                    server.bodies.append(body)
                    server.headers.append(dict(self.headers))
                    server.seen[text] += 1
                    count = server.seen[text]
                if text.startswith("hang:"):
                    server.hanging.set()
                    server.release.wait(60)
                if text.startswith("pair:"):  # the k-th is answered once the (k rounded up to even)-th came
                    with server.pairs:
                        server.current += 1
                        server.most = max(server.most, server.current)
                        server.arrived += 1
                        partner = server.arrived + server.arrived % 2
                        server.pairs.notify_all()
                        server.pairs.wait_for(lambda: server.arrived >= partner, 30)
                        server.current -= 1
                if text.startswith("429:") and count == 1:
                    return self._send(429, {"error": {"message": "slow down"}}, {"Retry-After": "0"})
                if text.startswith("503:") and count == 1:
                    return self._send(503, {"error": {"message": "overloaded"}})
                if text.startswith("400:"):
                    return self._send(400, {"error": {"message": f"bad request for {text}", "param": "messages"}})
                reply = f"echo {text}"
                choices = [
                    {"index": i, "message": {"role": "assistant", "content": reply}, "finish_reason": "stop"}
                    if "messages" in body
                    else {"index": i, "text": reply, "finish_reason": "stop"}
                    for i in range(body.get("n", 1))
                ]
                usage = {"prompt_tokens": len(text.split()) + 5, "completion_tokens": len(reply.split())}
                self._send(200, {"object": "chat.completion", "choices": choices, "usage": usage})

            def _send(self, status: int, payload: Any, headers: dict[str, str] | None = None) -> None:
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                for name, value in (headers or {}).items():
                    self.send_header(name, value)
                self.end_headers()
                self.wfile.write(data)

        self.http = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.http.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.http.server_address[1]}/v1"
        self.thread = threading.Thread(target=self.http.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.release.set()
        self.http.shutdown()
        self.http.server_close()


@pytest.fixture
def scripted() -> Iterator[ScriptedServer]:
    server = ScriptedServer()
    yield server
    server.close()


@pytest.fixture(autouse=True)
def _own_cache_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HALO_CACHE_DIR", str(tmp_path / "halo-cache"))  # latency and output histories


def remote_yaml(url: str, extra: str = "", node: str = "", api: str = "chat") -> str:
    return f"""
name: remote
models:
  big: {{source: openai, base_url: "{url}", model: served-model, api: {api}, max_concurrency: 4,
         retry_backoff_s: 0.01{extra}}}
inputs: [q]
nodes:
  - id: ask
    kind: llm
    model: big
    prompt: "{{{{ q }}}}"
    max_tokens: 7
{node}
outputs:
  answer: ask.output
"""


def test_retries_429_and_503_then_a_400_fails_its_row_only(scripted: ScriptedServer) -> None:
    rows = [{"q": "429:a"}, {"q": "503:b"}, {"q": "400:c"}, {"q": "plain"}]
    with halo.compile(halo.Workflow.from_yaml(remote_yaml(scripted.url)), cache=False) as app:
        result = app.run(rows)
        worker = app.workers[-1]
    assert [o["answer"] for o in result.outputs] == ["echo 429:a", "echo 503:b", None, "echo plain"]
    assert scripted.seen == Counter({"429:a": 2, "503:b": 2, "400:c": 1, "plain": 1})
    assert worker.retries == 2
    [error] = result.errors
    assert (error.row, error.node) == (2, "ask")
    assert "remote model 'big' (served-model at " + scripted.url in error.message
    assert "HTTP 400" in error.message and "bad request for 400:c" in error.message


def test_retries_are_bounded(scripted: ScriptedServer) -> None:
    url = scripted.url.replace(str(scripted.http.server_address[1]), "1")  # nothing listens on port 1
    wf = halo.Workflow.from_yaml(remote_yaml(url, ", max_attempts: 3"))
    with halo.compile(wf, cache=False) as app:
        result = app.run([{"q": "x"}])
    [error] = result.errors
    assert "ConnectError" in error.message and "gave up after 3 tries" in error.message


def test_on_error_default_takes_the_fallback_for_a_400(scripted: ScriptedServer) -> None:
    node = '    on_error: default\n    fallback: "n/a"\n'
    with halo.compile(halo.Workflow.from_yaml(remote_yaml(scripted.url, node=node)), cache=False) as app:
        result = app.run([{"q": "400:x"}, {"q": "fine"}])
    assert [o["answer"] for o in result.outputs] == ["n/a", "echo fine"]
    assert result.errors == []


def test_sampling_parameters_and_json_format_map_onto_the_request(scripted: ScriptedServer) -> None:
    node = """    temperature: 0.7
    top_p: 0.9
    seed: 11
    stop: ["END"]
    n: 2
  - id: form
    kind: llm
    model: big
    prompt: "json {{ q }}"
    max_tokens: 5
    json_schema: {type: object, properties: {a: {type: string}}}
    on_error: default
    fallback: {}
"""
    with halo.compile(halo.Workflow.from_yaml(remote_yaml(scripted.url, node=node)), cache=False) as app:
        result = app.run([{"q": "hi"}])
    assert result.outputs[0]["answer"] == ["echo hi", "echo hi"]  # n: 2 -> both samples
    by_prompt = {b["messages"][-1]["content"]: b for b in scripted.bodies}
    ask = by_prompt["hi"]
    assert ask["model"] == "served-model" and ask["messages"] == [{"role": "user", "content": "hi"}]
    assert (ask["max_tokens"], ask["temperature"], ask["top_p"], ask["seed"], ask["stop"], ask["n"]) == (
        7, 0.7, 0.9, 11, ["END"], 2
    )  # fmt: skip
    form = by_prompt["json hi"]
    assert form["response_format"] == {
        "type": "json_schema",
        "json_schema": {"name": "output", "schema": {"type": "object", "properties": {"a": {"type": "string"}}}},
    }
    assert "n" not in form and "seed" not in form


def test_completions_api_sends_the_prompt_text(scripted: ScriptedServer) -> None:
    with halo.compile(halo.Workflow.from_yaml(remote_yaml(scripted.url, api="completions")), cache=False) as app:
        result = app.run([{"q": "plain words"}])
    assert result.outputs[0]["answer"] == "echo plain words"
    assert scripted.bodies[0]["prompt"] == "plain words" and "messages" not in scripted.bodies[0]


def test_equal_requests_run_once_and_the_result_cache_answers_a_rerun(scripted: ScriptedServer) -> None:
    rows = [{"q": "same"}, {"q": "same"}, {"q": "other"}, {"q": "same"}]
    with halo.compile(halo.Workflow.from_yaml(remote_yaml(scripted.url))) as app:
        first = app.run(rows)
        assert scripted.seen == Counter({"same": 1, "other": 1})
        second = app.run(rows)
    assert scripted.seen == Counter({"same": 1, "other": 1})  # every request answered by the cache
    assert first.outputs == second.outputs
    assert [o["answer"] for o in first.outputs] == ["echo same", "echo same", "echo other", "echo same"]
    assert second.stats.persistent_cache_hits == 2


def test_api_key_from_the_environment(scripted: ScriptedServer, monkeypatch: pytest.MonkeyPatch) -> None:
    wf = halo.Workflow.from_yaml(remote_yaml(scripted.url, ", api_key_env: HALO_TEST_REMOTE_KEY"))
    monkeypatch.delenv("HALO_TEST_REMOTE_KEY", raising=False)
    with pytest.raises(
        SpecError, match=r"line 5: model 'big': api_key_env names HALO_TEST_REMOTE_KEY, which is not set"
    ):
        halo.compile(wf)
    monkeypatch.setenv("HALO_TEST_REMOTE_KEY", "sk-test")
    with halo.compile(wf, cache=False) as app:
        assert app.run([{"q": "k"}]).outputs[0]["answer"] == "echo k"
    assert scripted.headers[0]["Authorization"] == "Bearer sk-test"


def test_calls_run_concurrently_up_to_max_concurrency(scripted: ScriptedServer) -> None:
    wf = halo.Workflow.from_yaml(remote_yaml(scripted.url).replace("max_concurrency: 4", "max_concurrency: 2"))
    rows = [{"q": f"pair:{i}"} for i in range(6)]
    with halo.compile(wf, cache=False) as app:
        result = app.run(rows)
    assert [o["answer"] for o in result.outputs] == [f"echo pair:{i}" for i in range(6)]
    assert scripted.most == 2  # two at once, never more


def test_cancelling_a_run_with_calls_in_flight(scripted: ScriptedServer) -> None:
    session = OnlineSession()
    session.start()
    app = halo.compile(halo.Workflow.from_yaml(remote_yaml(scripted.url)), cache=False)
    app.attach(session)
    outcome: dict[str, Any] = {}

    def run() -> None:
        try:
            outcome["result"] = app.run([{"q": "hang:1"}, {"q": "hang:2"}])
        except RunCancelled as exc:
            outcome["cancelled"] = exc

    thread = threading.Thread(target=run)
    thread.start()
    assert scripted.hanging.wait(30)
    worker = app.workers[-1]
    assert session.close(grace_s=0) is False  # cancelled what was in flight
    thread.join(30)
    assert "cancelled" in outcome and "result" not in outcome
    assert worker.inflight == 0  # the calls left the worker
    scripted.release.set()
    app.detach()
    assert app.run([{"q": "after"}]).outputs[0]["answer"] == "echo after"  # the worker still serves
    app.close()


def test_the_plan_places_remote_nodes_on_their_worker_and_learns_their_latency(scripted: ScriptedServer) -> None:
    wf = halo.Workflow.from_yaml(remote_yaml(scripted.url))
    endpoint = endpoint_key("chat", scripted.url, "served-model")
    with halo.compile(wf, cache=False) as app:
        planned = app.plan([{"q": "a"}, {"q": "b"}])
        [task] = planned.problem.tools  # priced as a task off the local engines (plan/remote_task.py)
        assert task.id == "ask"
        # before any call: the default curve, one wave (2 calls <= max_concurrency 4)
        prompt = task.cpu_s
        assert prompt == pytest.approx(RemoteLatencyModel().call_s(endpoint, _prompt_tokens(planned), 7))
        assert "ask" in planned.explain()
        result = app.run([{"q": "a"}, {"q": "b"}])
        assert {span.worker for span in result.timeline if span.node == "ask"} == {1}  # after worker 0
        assert app.costs.remote_latency.observed_calls(endpoint) == 2
        learned = app.plan([{"q": "c"}, {"q": "d"}]).problem.tools[0].cpu_s
    assert learned != prompt  # the curve moved toward what the calls took
    saved = RemoteLatencyModel.load()
    assert saved.observed_calls(endpoint) == 2


def _prompt_tokens(planned: Any) -> int:
    counters = planned.graph.counters["ask"]
    return counters.physical_prompt_tokens // counters.owned


def test_remote_latency_curve_defaults_then_fits() -> None:
    model = RemoteLatencyModel()
    base, per_prompt, per_output = DEFAULT_CURVE
    assert model.call_s("e", 1000, 1000) == pytest.approx(base + per_prompt + per_output)
    for prompt, output in [(100, 10), (2000, 10), (100, 400), (3000, 300)] * 30:
        model.observe("e", prompt, output, 0.05 + 0.1 * prompt / 1000 + 2.0 * output / 1000)
    assert model.call_s("e", 1500, 200) == pytest.approx(0.05 + 0.15 + 0.4, rel=0.05)
    assert model.call_s("other", 0, 0) == pytest.approx(base)


# -- against halo serve itself (the real model, fp32 greedy) ---------------------------------------------

LOCAL_YAML = """
name: local
inputs: [q]
nodes:
  - id: ask
    kind: llm
    prompt: "{{ q }}"
    max_tokens: 12
  - id: form
    kind: llm
    prompt: "Give a JSON object with a field city for: {{ q }}"
    max_tokens: 24
    json_schema: {type: object, properties: {city: {type: string}}, required: [city]}
outputs:
  answer: ask.output
  form: form.output
"""
QUESTIONS = [{"q": "What is the capital of France?"}, {"q": "Name a colour."}, {"q": "What is the capital of France?"}]


@pytest.fixture(scope="module")
def halo_server(checkpoint: Any) -> Iterator[str]:
    """`halo serve`'s app for chat (no workflow) on the default model in fp32, by uvicorn on loopback."""
    import socket
    import time

    import uvicorn
    from halo.engine import LLMEngine
    from halo.serve import ServeConfig, create_app

    engine = LLMEngine(dtype="fp32")
    app = create_app({}, engine, ServeConfig(epoch_ms=20), shutdown_timeout_s=30)
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not server.started:  # uvicorn says when it listens; nothing else to wait on
        assert thread.is_alive() and time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.01)
    yield f"http://127.0.0.1:{sock.getsockname()[1]}/v1"
    server.should_exit = True
    thread.join(60)


def _remote_of(local: str, url: str) -> str:
    header = f'models:\n  big: {{source: openai, base_url: "{url}", model: smollm2-135m, tokenizer: smollm2-135m}}\n'
    return local.replace("name: local\n", "name: remote\n" + header).replace(
        "kind: llm\n", "kind: llm\n    model: big\n"
    )


@pytest.mark.slow
def test_remote_outputs_equal_the_local_model(halo_server: str) -> None:
    with halo.compile(halo.Workflow.from_yaml(LOCAL_YAML), dtype="fp32", cache=False) as app:
        local = app.run(QUESTIONS)
    with halo.compile(halo.Workflow.from_yaml(_remote_of(LOCAL_YAML, halo_server)), cache=False) as app:
        remote = app.run(QUESTIONS)
        assert app.model_sources == []  # nothing loaded here
    assert local.errors == [] and remote.errors == []
    assert remote.outputs == local.outputs
    assert "Paris" in remote.outputs[0]["answer"]


@pytest.mark.slow
def test_a_workflow_mixing_a_local_and_a_remote_model(halo_server: str) -> None:
    mixed = f"""
name: mixed
models:
  big: {{source: openai, base_url: "{halo_server}", model: smollm2-135m}}
inputs: [q]
nodes:
  - id: draft
    kind: llm
    model: big
    prompt: "{{{{ q }}}}"
    max_tokens: 10
  - id: check
    kind: llm
    prompt: "Repeat: {{{{ draft.output }}}}"
    max_tokens: 10
outputs:
  draft: draft.output
  check: check.output
"""
    local_only = mixed.replace("    model: big\n", "")
    with halo.compile(halo.Workflow.from_yaml(local_only), dtype="fp32", cache=False) as app:
        expected = app.run(QUESTIONS[:2])
    with halo.compile(halo.Workflow.from_yaml(mixed), dtype="fp32", cache=False) as app:
        result = app.run(QUESTIONS[:2])
        workers = {span.node: span.worker for span in result.timeline if span.kind == "llm"}
    assert result.errors == [] and result.outputs == expected.outputs
    assert workers == {"draft": 1, "check": 0}  # the remote worker comes after the local one


def test_retry_after_reads_seconds_and_http_dates() -> None:
    import email.utils
    import time

    import httpx
    from halo.runtime.remote_worker import _retry_after

    def answer(value: str | None) -> httpx.Response:
        return httpx.Response(429, headers={} if value is None else {"Retry-After": value})

    assert _retry_after(answer("7")) == 7.0
    assert _retry_after(answer(None)) is None
    assert _retry_after(answer("soon")) is None
    later = _retry_after(answer(email.utils.formatdate(time.time() + 120, usegmt=True)))
    assert later is not None and 100 < later <= 120


def test_halo_explain_plans_a_remote_workflow_without_a_server() -> None:
    from halo.runtime.planning import fresh_planner

    wf = halo.Workflow.from_yaml(remote_yaml("http://127.0.0.1:1/v1"))  # nothing listens: explain calls nothing
    planned = fresh_planner(wf).prepare([{"q": "one two three four"}], "dp").planned
    assert planned is not None
    [task] = planned.problem.tools
    assert task.id == "ask" and planned.problem.tasks == ()
    counters = planned.graph.counters["ask"]
    assert counters.physical_prompt_tokens > 0  # counted by the 4-bytes-per-token estimate
    assert "openai:big" in planned.explain()
