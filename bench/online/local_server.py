"""`LocalServer`: `halo serve`'s app under uvicorn on a free loopback port, on a thread of this process."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Mapping
from types import TracebackType
from typing import Any

MODEL_NAME = "halo-bench"  # the chat model id the per-call target asks for


class LocalServer:
    """Serves `apps` (name -> CompiledWorkflow) and chat completions on `engine`; `url` once started."""

    def __init__(self, apps: Mapping[str, Any], engine: Any, *, queue_limit: int = 100_000) -> None:
        import uvicorn
        from halo.serve.app import create_app
        from halo.serve.config import ServeConfig

        config = ServeConfig(queue_limit=queue_limit, max_finished_runs=1_000_000)
        app = create_app(apps, engine, config, model_name=MODEL_NAME, shutdown_timeout_s=60.0)
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self._server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning",
                                                     backlog=4096, timeout_keep_alive=60))
        self._thread = threading.Thread(target=self._server.run, name="halo-bench-server", daemon=True)

    def start(self, timeout_s: float = 60.0) -> LocalServer:
        self._thread.start()
        deadline = time.monotonic() + timeout_s
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError(f"halo serve did not start on port {self.port}")
            time.sleep(0.05)
        return self

    def stop(self) -> None:
        self._server.should_exit = True
        self._thread.join(90.0)

    def __enter__(self) -> LocalServer:
        return self.start()

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.stop()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]
