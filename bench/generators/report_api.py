"""The report API the TPC-H workloads call: a loopback HTTP server with Gamma-distributed latency.

`GET /report?topic=T&key=K` answers `{"topic", "key", "summary", "score"}` after a delay drawn from a
Gamma distribution (shape 2, mean `mean_latency_s`). The body depends only on the query, so every
system sees the same answers; only the latency is random.
"""

from __future__ import annotations

import hashlib
import json
import random
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from urllib.parse import parse_qs, urlsplit

GAMMA_SHAPE = 2.0
_OUTLOOKS = ("stable", "improving", "weakening", "volatile")


def report_body(topic: str, key: str) -> dict[str, object]:
    digest = int(hashlib.sha256(f"{topic}|{key}".encode()).hexdigest()[:8], 16)
    outlook = _OUTLOOKS[digest % len(_OUTLOOKS)]
    return {"topic": topic, "key": key, "summary": f"{topic} outlook for {key}: {outlook}", "score": digest % 100}


class ReportApi:
    """Start with `with ReportApi(mean_latency_s=0.05) as api:`; `api.url` is its base URL."""

    def __init__(self, mean_latency_s: float = 0.05, seed: int = 0) -> None:
        self.mean_latency_s = mean_latency_s
        self.requests = 0
        self._rng = random.Random(seed)
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, name="report-api", daemon=True)

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def latency(self) -> float:
        if self.mean_latency_s <= 0:
            return 0.0
        with self._lock:
            self.requests += 1
            return self._rng.gammavariate(GAMMA_SHAPE, self.mean_latency_s / GAMMA_SHAPE)

    def start(self) -> ReportApi:
        self._thread.start()
        return self

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def __enter__(self) -> ReportApi:
        return self.start()

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.close()

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        api = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self) -> None:  # noqa: N802 - the stdlib's name
                parts = urlsplit(self.path)
                if parts.path != "/report":
                    self._send(404, {"error": f"no route {parts.path}"})
                    return
                query = {k: v[0] for k, v in parse_qs(parts.query).items()}
                time.sleep(api.latency())
                self._send(200, report_body(query.get("topic", ""), query.get("key", "")))

            def _send(self, status: int, body: dict[str, object]) -> None:
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - the stdlib's signature
                pass

        return Handler
