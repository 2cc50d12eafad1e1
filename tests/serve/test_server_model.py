"""The server on the real model: the official `openai` client against /v1/chat/completions (greedy
output equals `LLMEngine.generate`), workflow runs over httpx equal `app.run` on the same rows, and 50
concurrent clients lose nothing and see no 5xx. One server for the module; tiny max_tokens."""

from __future__ import annotations

import json
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
from conftest import start_server

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[2]
MINI_YAML = """
name: mini
inputs: [topic]
nodes:
  - id: answer
    kind: llm
    system: "Answer with one word."
    prompt: "Name a {{ topic }}."
    max_tokens: 3
  - id: word
    kind: rule
    input: "{{ answer.output }}"
    regex: "(\\\\w+)"
    group: 1
    default: "none"
outputs:
  answer: answer.output
  word: word.output
"""
QUESTION = [{"role": "user", "content": "What is the capital of France?"}]


@pytest.fixture(scope="module")
def model_server(checkpoint, tmp_path_factory):
    import halo
    from halo.serve import ServeConfig, create_app

    path = tmp_path_factory.mktemp("serve") / "mini.yaml"
    path.write_text(MINI_YAML)
    apps = {
        "mini": halo.compile(path, dtype="fp32"),
        "invoice-audit": halo.compile(REPO / "examples" / "invoice_audit.yaml", dtype="fp32"),
    }
    engine = apps["mini"].engine()  # chat shares the workflow's engine (one engine, stepped by the session)
    server = start_server(create_app(apps, engine, ServeConfig(epoch_ms=30), shutdown_timeout_s=60))
    yield server
    server.stop()
    for app in apps.values():
        app.close()


@pytest.fixture(scope="module")
def reference(checkpoint):
    from halo.engine import LLMEngine

    return LLMEngine(model=checkpoint, dtype="fp32")


def test_openai_client_chat_completions_equal_engine_generate(model_server, reference):
    import openai
    from halo.engine import SamplingParams

    client = openai.OpenAI(base_url=model_server.url + "/v1", api_key="unused", max_retries=0)
    assert [m.id for m in client.models.list()] == ["smollm2-135m"]
    expected = reference.generate([QUESTION], SamplingParams(max_tokens=8, temperature=0.0))[0]

    done = client.chat.completions.create(model="smollm2-135m", messages=QUESTION, max_tokens=8, temperature=0)
    assert done.choices[0].message.content == expected.text
    assert done.choices[0].finish_reason == expected.finish_reason
    assert done.usage.prompt_tokens == expected.prompt_tokens
    assert done.usage.completion_tokens == len(expected.token_ids)

    stream = client.chat.completions.create(
        model="smollm2-135m",
        messages=QUESTION,
        max_tokens=8,
        temperature=0,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == expected.text
    assert [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason] == [
        expected.finish_reason
    ]
    assert chunks[-1].usage.completion_tokens == len(expected.token_ids)

    stopped = client.chat.completions.create(
        model="smollm2-135m", messages=QUESTION, max_tokens=8, temperature=0, stop=[" France"]
    )
    want = reference.generate([QUESTION], SamplingParams(max_tokens=8, stop=(" France",)))[0]
    assert stopped.choices[0].message.content == want.text and stopped.choices[0].finish_reason == "stop"

    with pytest.raises(openai.NotFoundError) as missing:
        client.chat.completions.create(model="gpt-4o", messages=QUESTION, max_tokens=2)
    assert missing.value.body["code"] == "model_not_found" and "gpt-4o" in missing.value.body["message"]
    with pytest.raises(openai.BadRequestError, match="temperature"):
        client.chat.completions.create(model="smollm2-135m", messages=QUESTION, max_tokens=2, temperature=50)


def test_workflow_runs_equal_app_run(model_server):
    rows = [{"topic": "fruit"}, {"topic": "colour"}, {"topic": "fruit"}]
    invoices = [json.loads(line) for line in (REPO / "examples" / "invoice_audit.jsonl").read_text().splitlines()][:2]
    with httpx.Client(base_url=model_server.url, timeout=120) as c:
        listed = {w["name"]: w for w in c.get("/v1/workflows").json()["data"]}
        assert listed["mini"]["inputs"] == ["topic"] and listed["mini"]["outputs"] == ["answer", "word"]
        assert listed["invoice-audit"]["outputs"] == ["vendor", "verdict", "reasons"]
        ids = c.post("/v1/workflows/mini/runs", json=rows).json()["ids"]
        invoice_ids = c.post("/v1/workflows/invoice-audit/runs", json=invoices).json()["ids"]
        with c.stream("GET", f"/v1/runs/{ids[0]}/events") as events:
            lines = [line for line in events.iter_lines() if line.startswith("event:")]
        assert lines[-1] == "event: done"
        got = [c.get(f"/v1/runs/{i}", params={"wait": "true"}).json() for i in ids]
        got_invoices = [c.get(f"/v1/runs/{i}", params={"wait": "true"}).json() for i in invoice_ids]
        metrics = c.get("/metrics").text
    assert all(g["status"] == "succeeded" for g in got + got_invoices)
    apps = model_server.state.apps  # the server is idle now: its apps can run the reference batches
    assert [g["output"] for g in got] == apps["mini"].run(rows).outputs
    assert [g["output"] for g in got_invoices] == apps["invoice-audit"].run(invoices).outputs
    assert "halo_epochs_total 2" in metrics


def test_fifty_concurrent_clients_lose_nothing(model_server):
    """50 clients, chat completions and workflow runs mixed, for a bounded time: every request is
    answered (no 5xx, no 429 at the default queue limit) and every run finishes."""
    answers: list[tuple[str, int]] = []
    runs: list[str] = []
    lock = threading.Lock()
    # The 4 s start once every client exists: building 50 (their TLS contexts) takes seconds on a busy machine.
    stops: list[float] = []
    ready = threading.Barrier(50, action=lambda: stops.append(time.monotonic() + 4.0))

    def client(k: int) -> None:
        with httpx.Client(base_url=model_server.url, timeout=120) as c:
            ready.wait(120)
            stop = stops[0]
            n = 0
            while time.monotonic() < stop:
                if (k + n) % 2:
                    r = c.post(
                        "/v1/chat/completions",
                        json={
                            "model": "smollm2-135m",
                            "max_tokens": 2,
                            "temperature": 0,
                            "messages": [{"role": "user", "content": f"Say {k}"}],
                        },
                    )
                    ok = r.status_code == 200 and r.json()["choices"][0]["message"]["content"] is not None
                    kind = "chat"
                else:
                    r = c.post("/v1/workflows/mini/runs", json={"topic": f"thing {k}-{n}"})
                    ok = r.status_code == 202
                    kind = "run"
                    if ok:
                        run_id = r.json()["ids"][0]
                        with lock:
                            runs.append(run_id)
                        done = c.get(f"/v1/runs/{run_id}", params={"wait": "true"}).json()
                        ok = done["status"] == "succeeded"
                with lock:
                    answers.append((kind, r.status_code if ok else -r.status_code))
                n += 1

    with ThreadPoolExecutor(50) as pool:
        list(pool.map(client, range(50)))
    assert len(answers) >= 50
    assert all(status in (200, 202) for _, status in answers), [a for a in answers if a[1] not in (200, 202)][:5]
    assert {kind for kind, _ in answers} == {"chat", "run"}
    assert all(model_server.state.store.get(i).status == "succeeded" for i in runs)
    assert model_server.state.admission.depth == 0


def test_chat_shares_the_workflow_engine_while_an_epoch_runs(model_server, reference):
    from halo.engine import LLMEngine, SamplingParams
    state = model_server.state
    mini = state.apps["mini"]
    assert state.chat.engine is mini.engine() and state.chat.requests.worker in mini.workers
    held = [e for app in state.apps.values() for w in app.workers for e in w.engines.engines.values()]
    assert len(held) == len(state.apps) and all(isinstance(e, LLMEngine) for e in held)  # chat added none

    rows = [{"topic": f"{t} number {i}"} for i in range(4) for t in ("bird", "tree", "city", "fish", "song", "tool")]
    expected = reference.generate([QUESTION], SamplingParams(max_tokens=12, temperature=0.0))[0]
    with httpx.Client(base_url=model_server.url, timeout=120) as c:
        ids = c.post("/v1/workflows/mini/runs", json=rows).json()["ids"]
        deadline = time.monotonic() + 60
        while c.get(f"/v1/runs/{ids[-1]}").json()["status"] == "queued":  # wait for the epoch to start
            assert time.monotonic() < deadline, "the epoch never started"
            time.sleep(0.01)
        sent = time.time()
        chat = c.post(
            "/v1/chat/completions",
            json={"model": "smollm2-135m", "messages": QUESTION, "max_tokens": 12, "temperature": 0},
        ).json()
        got = [c.get(f"/v1/runs/{i}", params={"wait": "true"}).json() for i in ids]
    assert chat["choices"][0]["message"]["content"] == expected.text
    assert [g["output"] for g in got] == mini.run(rows).outputs
    # The chat arrived while the epoch ran: some of its rows were answered only after that.
    assert min(g["started_at"] for g in got) <= sent < max(g["finished_at"] for g in got)


def test_chat_on_its_own_engine_without_workflows(checkpoint, reference):
    """No workflow shares the model: chat runs on a worker of its own, stepped by the server's session loop
    (plain and streaming)."""
    import openai
    from halo.engine import LLMEngine, SamplingParams
    from halo.serve import ServeConfig, create_app

    server = start_server(create_app({}, LLMEngine(model=checkpoint, dtype="fp32"), ServeConfig()))
    try:
        client = openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0)
        expected = reference.generate([QUESTION], SamplingParams(max_tokens=6, temperature=0.0))[0]
        done = client.chat.completions.create(model="smollm2-135m", messages=QUESTION, max_tokens=6, temperature=0)
        assert done.choices[0].message.content == expected.text
        stream = client.chat.completions.create(
            model="smollm2-135m", messages=QUESTION, max_tokens=6, temperature=0, stream=True
        )
        assert "".join(c.choices[0].delta.content or "" for c in stream if c.choices) == expected.text
    finally:
        server.stop()


def test_structured_outputs_n_and_logprobs_on_the_real_model(model_server, reference):
    """`client.chat.completions.parse` with a pydantic model gives the engine's own constrained greedy
    output, parsed; a stream under the same schema concatenates to that document; n=3 sampled choices
    share one prefill of the prompt; logprobs are the engine's."""
    import openai
    from halo.engine import OutputFormat, SamplingParams
    from pydantic import BaseModel, Field

    class Capital(BaseModel):
        city: str = Field(max_length=16)
        country: str = Field(max_length=16)

    client = openai.OpenAI(base_url=model_server.url + "/v1", api_key="unused", max_retries=0)
    ask = [{"role": "user", "content": "What is the capital of France? Answer in JSON."}]
    done = client.chat.completions.parse(model="smollm2-135m", messages=ask, response_format=Capital,
                                         max_tokens=40, temperature=0)  # fmt: skip
    schema = openai.lib._pydantic.to_strict_json_schema(Capital)
    want = reference.generate([ask], SamplingParams(max_tokens=40, output_format=OutputFormat.of_json(schema)))[0]
    assert done.choices[0].finish_reason == "stop" and done.choices[0].message.content == want.text
    assert done.choices[0].message.parsed == Capital.model_validate_json(want.text)

    fmt = {"type": "json_schema", "json_schema": {"name": "Capital", "schema": schema, "strict": True}}
    stream = client.chat.completions.create(model="smollm2-135m", messages=ask, response_format=fmt,
                                            max_tokens=40, temperature=0, stream=True)  # fmt: skip
    text = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
    assert Capital.model_validate_json(text) == done.choices[0].message.parsed

    engine = model_server.state.chat.engine
    long_ask = [{"role": "user", "content": "Name one animal that lives in the sea, and say why. " * 6}]
    before = engine.stats().prefill_tokens
    three = client.chat.completions.create(model="smollm2-135m", messages=long_ask, n=3, temperature=1.0, seed=3,
                                           max_tokens=3, logprobs=True, top_logprobs=2)  # fmt: skip
    prompt = three.usage.prompt_tokens
    assert len(three.choices) == 3 and prompt > 64
    # One prefill of the prompt for all three (the others wait a step and reuse its KV blocks), not three.
    assert engine.stats().prefill_tokens - before < 2 * prompt
    again = client.chat.completions.create(model="smollm2-135m", messages=long_ask, n=3, temperature=1.0, seed=3,
                                           max_tokens=3, logprobs=True, top_logprobs=2)  # fmt: skip
    assert [c.message.content for c in again.choices] == [c.message.content for c in three.choices]
    first = reference.generate([long_ask], SamplingParams(max_tokens=3, temperature=1.0, seed=3, logprobs=2))[0]
    assert three.choices[0].message.content == first.text
    got = [e.logprob for e in three.choices[0].logprobs.content]
    assert got == pytest.approx(first.token_logprobs, abs=1e-4)
