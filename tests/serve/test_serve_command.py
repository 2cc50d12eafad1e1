"""`halo serve` as a user runs it: a subprocess on a free port, bearer token from HALO_API_KEY, a run
through HTTP, and a clean exit on SIGTERM. A rule-only workflow and --no-chat: no model loads."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time

import httpx
from conftest import ECHO_YAML


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_halo_serve_command(tmp_path):
    (tmp_path / "echo.yaml").write_text(ECHO_YAML)
    port = _free_port()
    env = {**os.environ, "HALO_API_KEY": "k"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "halo.cli", "serve", "--workflows", str(tmp_path), "--port", str(port), "--no-chat",
         "--epoch-ms", "10"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(f"{url}/health").status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert proc.poll() is None and time.monotonic() < deadline, proc.stdout.read() if proc.stdout else ""
            time.sleep(0.1)
        auth = {"Authorization": "Bearer k"}
        assert httpx.get(f"{url}/v1/workflows").status_code == 401
        run_id = httpx.post(f"{url}/v1/workflows/echo/runs", json={"x": "hi"}, headers=auth).json()["ids"][0]
        body = httpx.get(f"{url}/v1/runs/{run_id}", params={"wait": "true"}, headers=auth).json()
        assert body["output"] == {"echo": "hi"}
    finally:
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=30)
    # uvicorn shuts down gracefully, then re-raises the signal it caught (so the exit status says SIGTERM).
    assert proc.returncode in (0, -signal.SIGTERM), out
    assert "Application shutdown complete" in out
