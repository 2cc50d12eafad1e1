"""`halo serve` started and stopped as a user does it (a subprocess on a free port): a workflow that
cannot load is skipped and reported, not fatal; SIGTERM drains while reads keep answering and new
work gets 503 + Retry-After, recorded nowhere, so a restart on the same journal never runs it.
Rule and python workflows with --no-chat: no model loads (the README's own command, with the
examples and the model, is the slow test at the end)."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from conftest import ECHO_YAML, free_port, serve_process

REPO = Path(__file__).resolve().parents[2]
MISSING_DB_YAML = """
name: orders
databases:
  shop: {kind: duckdb, path: shop.duckdb}
inputs: [cid]
nodes:
  - id: history
    kind: sql
    db: shop
    query: "SELECT count(*) AS n FROM orders WHERE customer = :cid"
    params: {cid: "{{ cid }}"}
outputs: {n: history.rows}
"""
NAP_YAML = """
name: nap
inputs: [s, tag]
nodes:
  - id: nap
    kind: python
    function: "time:sleep"
    args: ["{{ s }}"]
  - id: said
    kind: rule
    input: "{{ tag }}"
    regex: "(.*)"
outputs: {tag: said.output, slept: nap.output}
"""


def _until(predicate, timeout_s: float, what: str):
    deadline = time.monotonic() + timeout_s
    while True:
        value = predicate()
        if value:
            return value
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def _stop(proc: subprocess.Popen, timeout_s: float = 60.0) -> str:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=timeout_s)
    return out


def test_a_workflow_that_cannot_load_is_skipped_and_reported_not_fatal(tmp_path):
    (tmp_path / "echo.yaml").write_text(ECHO_YAML)
    (tmp_path / "orders.yaml").write_text(MISSING_DB_YAML)
    (tmp_path / "broken.yaml").write_text("name: broken\nnodes: [{id: a, kind: teleport}]\n")
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    proc = serve_process(port, "--workflows", str(tmp_path), "--no-chat")
    try:
        listed = httpx.get(f"{url}/v1/workflows").json()
        assert [w["name"] for w in listed["data"]] == ["echo"]
        skipped = {s["name"]: s["reason"] for s in listed["skipped"]}
        assert set(skipped) == {"orders", "broken.yaml"}, skipped
        assert "cannot open database 'shop'" in skipped["orders"] and "shop.duckdb" in skipped["orders"]
        assert "teleport" in skipped["broken.yaml"]
        r = httpx.post(f"{url}/v1/workflows/orders/runs", json={"cid": 1})
        assert r.status_code == 404 and r.json()["error"]["code"] == "workflow_unavailable"
        assert "was not loaded: databases: cannot open database 'shop'" in r.json()["error"]["message"]
        run_id = httpx.post(f"{url}/v1/workflows/echo/runs", json={"x": "up"}).json()["ids"][0]
        assert httpx.get(f"{url}/v1/runs/{run_id}", params={"wait": "true"}).json()["output"] == {"echo": "up"}
    finally:
        out = _stop(proc)
    assert proc.returncode == 0, out
    assert "skipping workflow orders" in out and "skipping workflow file" in out


def test_nothing_to_serve_is_a_clear_startup_error(tmp_path):
    (tmp_path / "orders.yaml").write_text(MISSING_DB_YAML)
    proc = subprocess.run(
        [sys.executable, "-m", "halo.cli", "serve", "--workflows", str(tmp_path), "--no-chat",
         "--port", str(free_port())],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode != 0
    assert "nothing to serve: no workflow could be loaded (orders: " in proc.stdout + proc.stderr


def test_sigterm_keeps_answering_reads_refuses_new_work_with_503_and_a_restart_never_runs_it(tmp_path):
    folder, journal = tmp_path / "workflows", tmp_path / "journal"
    folder.mkdir()
    (folder / "nap.yaml").write_text(NAP_YAML)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    args = ("--workflows", str(folder), "--no-chat", "--journal-dir", str(journal), "--shutdown-grace", "60")
    proc = serve_process(port, *args)
    try:
        first = httpx.post(f"{url}/v1/workflows/nap/runs", json={"s": 6, "tag": "first"}).json()["ids"][0]
        _until(lambda: httpx.get(f"{url}/v1/runs/{first}").json()["status"] == "running", 30, "the run to start")
        proc.send_signal(signal.SIGTERM)
        # /health says so once the drain began (liveness: still 200); from then on new work is refused.
        _until(lambda: httpx.get(f"{url}/health").json()["status"] == "draining", 30, "the drain to begin")
        refused = httpx.post(f"{url}/v1/workflows/nap/runs", json={"s": 0, "tag": "refused-row"})
        assert refused.status_code == 503, refused.text
        assert refused.headers["retry-after"] == "5"
        error = refused.json()["error"]
        assert error["code"] == "server_shutting_down" and error["type"] == "service_unavailable"
        assert "shutting down" in error["message"]
        chat = httpx.post(f"{url}/v1/chat/completions", json={"model": "m", "messages": [{"role": "user"}]})
        assert chat.status_code == 503 and chat.headers["retry-after"] == "5"
        # Reads keep answering during the grace period: the run itself and its events.
        assert httpx.get(f"{url}/v1/runs/{first}").json()["status"] == "running"
        assert 'halo_rejected_total{reason="shutting_down"} 2' in httpx.get(f"{url}/metrics").text
        with httpx.stream("GET", f"{url}/v1/runs/{first}/events", timeout=60) as events:
            kinds = [line for line in events.iter_lines() if line.startswith("event:")]
        assert kinds[-1] == "event: done"  # then the drain is over and the server exits
    finally:
        out = _stop(proc)
    assert proc.returncode == 0, out
    lines = [json.loads(line) for line in (journal / "runs.jsonl").read_text().splitlines()]
    assert [(r["type"], r["id"]) for r in lines] == [("admitted", first), ("ended", first)]
    assert "refused-row" not in (journal / "runs.jsonl").read_text()

    proc = serve_process(port, *args)
    try:
        again = httpx.get(f"{url}/v1/runs/{first}").json()
        assert again["status"] == "succeeded" and again["output"]["tag"] == "first"
        assert "halo_epochs_total 0" in httpx.get(f"{url}/metrics").text  # nothing ran again
    finally:
        out = _stop(proc)
    assert proc.returncode == 0, out
    assert "resuming" not in out


@pytest.mark.slow
def test_the_readme_serve_command_starts_on_the_examples(tmp_path):
    """`halo serve --workflows examples/` as the README says (the model loads): the examples that can load
    are served, ticket-triage (its shop.duckdb is not shipped) is reported as skipped."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    key = {"Authorization": "Bearer k"}
    examples = str(REPO / "examples")
    proc = serve_process(port, "--workflows", examples, "--dtype", "fp32", "--api-key", "k", startup_s=600)
    try:
        assert httpx.get(f"{url}/health").json() == {"status": "ok"}
        listed = httpx.get(f"{url}/v1/workflows", headers=key).json()
        assert sorted(w["name"] for w in listed["data"]) == ["essay-refine", "invoice-audit", "review-voting"]
        assert [s["name"] for s in listed["skipped"]] == ["ticket-triage"]
        assert "shop.duckdb" in listed["skipped"][0]["reason"]
        health = httpx.get(f"{url}/health", headers=key).json()
        assert health["models"] == ["smollm2-135m"] and health["skipped_workflows"] == ["ticket-triage"]
    finally:
        out = _stop(proc, timeout_s=120)
    assert proc.returncode == 0, out
