"""`halo serve` as a user runs it: a subprocess on a free port, bearer token from HALO_API_KEY, a run
through HTTP, and a clean exit on SIGTERM. A rule-only workflow and --no-chat: no model loads."""

from __future__ import annotations

import signal
import subprocess
import time

import httpx
import pytest
from conftest import ECHO_YAML, free_port, serve_process


def test_halo_serve_command(tmp_path):
    (tmp_path / "echo.yaml").write_text(ECHO_YAML)
    port = free_port()
    proc = serve_process(port, "--workflows", str(tmp_path), "--no-chat", env={"HALO_API_KEY": "k"}, startup_s=60)
    url = f"http://127.0.0.1:{port}"
    try:
        auth = {"Authorization": "Bearer k"}
        assert httpx.get(f"{url}/v1/workflows").status_code == 401
        run_id = httpx.post(f"{url}/v1/workflows/echo/runs", json={"x": "hi"}, headers=auth).json()["ids"][0]
        body = httpx.get(f"{url}/v1/runs/{run_id}", params={"wait": "true"}, headers=auth).json()
        assert body["output"] == {"echo": "hi"}
    finally:
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=30)
    assert proc.returncode == 0, out  # a graceful drain is a clean exit
    assert "Application shutdown complete" in out


LONG_YAML = """
name: essay
inputs: [topic]
nodes:
  - id: essay
    kind: llm
    prompt: "Write a long essay about {{ topic }}."
    max_tokens: 96
outputs:
  essay: essay.output
"""


def _start(folder, port: int, journal, grace_s: float) -> subprocess.Popen:
    # the grace period by its env default; the journal by flag
    return serve_process(
        port, "--workflows", str(folder), "--no-chat", "--dtype", "fp32", "--journal-dir", str(journal),
        env={"HALO_SERVE_GRACE_S": str(grace_s)},
    )


@pytest.mark.slow
def test_sigterm_ends_within_the_grace_period_and_a_restart_answers_every_run(tmp_path):
    """Runs in flight at SIGTERM: exit 0 within the grace period; every admitted run is finished or
    journaled as unfinished; a server restarted on the same journal finishes those under the same ids."""
    folder, journal = tmp_path / "workflows", tmp_path / "journal"
    folder.mkdir()
    (folder / "essay.yaml").write_text(LONG_YAML)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    grace_s = 1.0
    proc = _start(folder, port, journal, grace_s)
    try:
        rows = [{"topic": t} for t in ("rivers", "owls", "tea", "maps", "bread", "glass")]
        ids = httpx.post(f"{url}/v1/workflows/essay/runs", json=rows).json()["ids"]
        deadline = time.monotonic() + 60
        while httpx.get(f"{url}/v1/runs/{ids[0]}").json()["status"] != "running":  # until the epoch decodes
            assert time.monotonic() < deadline, "the epoch never started"
            time.sleep(0.05)
    finally:
        clock = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=60)
    took = time.monotonic() - clock
    assert proc.returncode == 0, out
    assert took < grace_s + 15, (took, out)
    assert "cancelled" in out  # the epoch outlived the grace period

    proc = _start(folder, port, journal, grace_s=30.0)
    try:
        got = [httpx.get(f"{url}/v1/runs/{i}", params={"wait": "true"}, timeout=300).json() for i in ids]
    finally:
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=60)
    assert [g["status"] for g in got] == ["succeeded"] * len(ids), got
    assert all(g["output"]["essay"] for g in got)
    assert proc.returncode == 0, out
