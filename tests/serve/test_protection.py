"""Bad requests get 4xx with clear messages and leave other clients alone; a full queue answers 429
with Retry-After; shutdown finishes admitted runs. A stand-in workflow app, no model: fast."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx

AUTH = {"Authorization": "Bearer sekret"}


def _client(server) -> httpx.Client:
    return httpx.Client(base_url=server.url, headers=AUTH, timeout=30)


def test_bad_requests_get_clear_4xx_and_other_clients_are_unaffected(echo_server):
    server, echo = echo_server
    with _client(server) as c:
        good = c.post("/v1/workflows/echo/runs", json={"x": "hello"})
        assert good.status_code == 202
        run_id = good.json()["ids"][0]

        r = httpx.post(f"{server.url}/v1/workflows/echo/runs", json={"x": 1})
        assert r.status_code == 401 and "missing API key" in r.json()["error"]["message"]
        assert r.headers["www-authenticate"] == "Bearer"
        r = httpx.get(f"{server.url}/v1/workflows", headers={"Authorization": "Bearer wrong"})
        assert r.status_code == 401 and "invalid API key" in r.json()["error"]["message"]
        assert httpx.get(f"{server.url}/health").status_code == 200  # open to probes

        r = c.post("/v1/workflows/nope/runs", json={"x": 1})
        assert r.status_code == 404
        assert r.json()["error"]["message"] == "unknown workflow 'nope' (loaded: echo)"
        r = c.post("/v1/workflows/echo/runs", json=[{"x": 1}, {"y": 2}])
        assert r.status_code == 422
        assert "row 1 is missing declared input 'x'" in r.json()["error"]["message"]
        r = c.post("/v1/workflows/echo/runs", content=b"{not json")
        assert r.status_code == 400 and "not valid JSON" in r.json()["error"]["message"]
        big = {"x": "a" * 5000}
        r = c.post("/v1/workflows/echo/runs", json=big)
        assert r.status_code == 413 and "over this server's limit of 4096 bytes" in r.json()["error"]["message"]

        def chunks():
            for _ in range(10):
                yield b" " * 1000

        r = c.post("/v1/workflows/echo/runs", content=chunks())  # no Content-Length: counted while read
        assert r.status_code == 413
        r = c.get("/v1/runs/run-missing")
        assert r.status_code == 404 and "unknown run 'run-missing'" in r.json()["error"]["message"]
        r = c.post("/v1/chat/completions", json={"model": "m", "messages": [{"role": "user", "content": "hi"}]})
        assert r.status_code == 404 and r.json()["error"]["code"] == "model_not_found"

        done = c.get(f"/v1/runs/{run_id}", params={"wait": "true"}).json()
        assert done["status"] == "succeeded" and done["output"] == {"echo": "hello"}
        failed = c.post("/v1/workflows/echo/runs", json={"x": "fail"}).json()["ids"][0]
        body = c.get(f"/v1/runs/{failed}", params={"wait": "true"}).json()
        assert body["status"] == "failed" and body["error"] == {"node": "shout", "message": "asked to fail"}
        metrics = c.get("/metrics").text
        assert 'halo_responses_total{route="/v1/workflows/{name}/runs",status="413"} 2' in metrics


def test_full_queue_answers_429_with_retry_after_and_recovers(echo_server):
    server, echo = echo_server
    echo.gate.clear()  # epochs hold: admitted rows stay in the queue (limit 8)
    with _client(server) as c:
        first = c.post("/v1/workflows/echo/runs", json=[{"x": i} for i in range(6)])
        assert first.status_code == 202
        r = c.post("/v1/workflows/echo/runs", json=[{"x": 6}, {"x": 7}, {"x": 8}])
        assert r.status_code == 429
        assert int(r.headers["retry-after"]) >= 1
        assert "admission queue is full" in r.json()["error"]["message"]
        assert c.post("/v1/workflows/echo/runs", json=[{"x": 6}, {"x": 7}]).status_code == 202
        assert c.post("/v1/workflows/echo/runs", json={"x": 9}).status_code == 429
        assert 'halo_queue_depth 8' in c.get("/metrics").text
        echo.gate.set()
        ids = first.json()["ids"]
        outs = [c.get(f"/v1/runs/{i}", params={"wait": "true"}).json()["output"]["echo"] for i in ids]
        assert outs == [str(i) for i in range(6)]
        deadline = time.monotonic() + 10
        while server.state.admission.depth and time.monotonic() < deadline:
            time.sleep(0.01)
        assert c.post("/v1/workflows/echo/runs", json={"x": 9}).status_code == 202


def test_load_on_a_tiny_queue_loses_nothing(echo_server):
    """50 clients for ~2 s against a queue of 8: every answer is 202 or 429 (with Retry-After), and
    every admitted run finishes with its own output."""
    server, echo = echo_server
    echo.delay_s = 0.05
    admitted: list[tuple[str, str]] = []
    statuses: list[int] = []
    lock = threading.Lock()
    # The 2 s start once every client exists: building 50 (their TLS contexts) takes seconds on a busy machine.
    ready = threading.Barrier(50, action=lambda: stops.append(time.monotonic() + 2.0))
    stops: list[float] = []

    def client(k: int) -> None:
        with _client(server) as c:
            ready.wait(60)
            stop = stops[0]
            n = 0
            while time.monotonic() < stop:
                value = f"{k}-{n}"
                r = c.post("/v1/workflows/echo/runs", json={"x": value})
                with lock:
                    statuses.append(r.status_code)
                if r.status_code == 202:
                    with lock:
                        admitted.append((r.json()["ids"][0], value))
                else:
                    assert r.status_code == 429 and int(r.headers["retry-after"]) >= 1
                    time.sleep(0.02)
                n += 1

    with ThreadPoolExecutor(50) as pool:
        list(pool.map(client, range(50)))
    assert 429 in statuses and 202 in statuses
    assert set(statuses) <= {202, 429}
    with _client(server) as c:
        for run_id, value in admitted:
            body = c.get(f"/v1/runs/{run_id}", params={"wait": "true"}).json()
            assert body["status"] == "succeeded" and body["output"] == {"echo": value}
    assert sum(len(b) for b in echo.batches) == len(admitted)


def test_shutdown_finishes_admitted_runs(echo_server):
    server, echo = echo_server
    echo.gate.clear()
    with _client(server) as c:
        ids = c.post("/v1/workflows/echo/runs", json=[{"x": i} for i in range(5)]).json()["ids"]
    records = [server.state.store.get(i) for i in ids]
    threading.Timer(0.3, echo.gate.set).start()
    server.stop()
    assert [r.status for r in records] == ["succeeded"] * 5
    assert [r.output["echo"] for r in records] == [str(i) for i in range(5)]
