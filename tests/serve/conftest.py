"""A real uvicorn server on a free loopback port, in a thread of the test process, and a stand-in
workflow app (no model) for the tests of batching and protection."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
import uvicorn
from halo.runtime.results import RowError, RunResult, RunStats
from halo.spec import Workflow

ECHO_YAML = """
name: echo
inputs: [x]
nodes:
  - id: shout
    kind: rule
    input: "{{ x }}"
    regex: "(.*)"
outputs:
  echo: shout.output
"""


@dataclass
class RunningServer:
    url: str
    app: Any
    server: uvicorn.Server
    thread: threading.Thread

    @property
    def state(self) -> Any:
        return self.app.state.halo

    def stop(self, timeout: float = 60.0) -> None:
        self.server.should_exit = True
        self.thread.join(timeout)
        assert not self.thread.is_alive(), "server did not shut down"


def start_server(app: Any) -> RunningServer:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    config = uvicorn.Config(app, log_level="warning", lifespan="on", timeout_graceful_shutdown=30)
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("uvicorn did not start")
        time.sleep(0.01)
    return RunningServer(f"http://127.0.0.1:{port}", app, server, thread)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def serve_process(
    port: int, *args: str, env: dict[str, str] | None = None, startup_s: float = 120.0
) -> subprocess.Popen:
    """`halo serve --port PORT --epoch-ms 10 ARGS` as a user starts it, returned once /health answers
    (its output is in the failure message if it exits or does not answer within `startup_s`)."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "halo.cli", "serve", "--port", str(port), "--epoch-ms", "10", *args],
        env={**os.environ, **(env or {})},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    deadline = time.monotonic() + startup_s
    while True:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health").status_code == 200:
                return proc
        except httpx.TransportError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise AssertionError(proc.communicate()[0])
        time.sleep(0.1)


class EchoApp:
    """Quacks like a CompiledWorkflow: `run` echoes each row's `x`, fails rows whose x is 'fail', and
    holds every epoch until `gate` is set (to fill queues on purpose). `batches` records each run's rows."""

    def __init__(self, delay_s: float = 0.0) -> None:
        self.workflow = Workflow.from_yaml(ECHO_YAML)
        self.graph = self.workflow.graph
        self.model_sources: list[str] = []
        self.delay_s = delay_s
        self.gate = threading.Event()
        self.gate.set()
        self.tail_gate = threading.Event()  # holds an epoch after its first row is answered
        self.tail_gate.set()
        self.batches: list[list[dict[str, Any]]] = []

    def run(self, rows: list[dict[str, Any]], on_row: Any = None) -> RunResult:
        self.gate.wait(60)
        time.sleep(self.delay_s)
        self.batches.append(list(rows))
        outputs = [{"echo": str(r["x"])} for r in rows]
        errors = [RowError(i, "shout", "asked to fail") for i, r in enumerate(rows) if r["x"] == "fail"]
        if on_row is not None and rows:  # the first row is done early; the others once `tail_gate` opens
            on_row(0, outputs[0], next((e for e in errors if e.row == 0), None))
        self.tail_gate.wait(60)
        return RunResult(outputs, errors, RunStats(rows=len(rows)))


@pytest.fixture
def echo_server() -> Iterator[tuple[RunningServer, EchoApp]]:
    from halo.serve import ServeConfig, create_app

    echo = EchoApp()
    running = start_server(create_app({"echo": echo}, None, ServeConfig(epoch_ms=20, queue_limit=8, api_key="sekret",
                                                                        max_body_bytes=4096)))
    yield running, echo
    echo.gate.set()
    running.stop()


@pytest.fixture
def roomy_echo_server() -> Iterator[RunningServer]:
    """The echo app under the default limits (1 MiB bodies, no API key)."""
    from halo.serve import create_app

    running = start_server(create_app({"echo": EchoApp()}))
    yield running
    running.stop()
