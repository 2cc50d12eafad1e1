"""Real services for the runtime's tool tests: a throwaway PostgreSQL cluster and a loopback HTTP server.

PostgreSQL comes from Debian's packages (`scripts/install.sh` installs them as root) and is started
by `scripts/postgres.sh` in a temporary folder for the whole session. Missing binaries make the
PostgreSQL tests fail, not skip: CI must prove the server path works.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest

REPO = Path(__file__).resolve().parents[2]
POSTGRES_SH = REPO / "scripts" / "postgres.sh"
TABLE_SIZES = {"small_t": 100, "medium_t": 1_000, "large_t": 10_000}


@pytest.fixture(scope="session")
def postgres_dsn() -> Iterator[str]:
    """DSN of a fresh cluster on 127.0.0.1 holding `items` and the sized tables of TABLE_SIZES."""
    import psycopg

    found = subprocess.run([str(POSTGRES_SH), "bindir"], capture_output=True, text=True)
    if found.returncode != 0:
        pytest.fail(
            "PostgreSQL server binaries not found: run scripts/install.sh as root "
            "(it installs Debian's postgresql package), or set PG_BINDIR",
            pytrace=False,
        )
    # Under /tmp, not pytest's private basetemp: as root the server runs as `postgres` and must reach it.
    folder = Path(tempfile.mkdtemp(prefix="halo-pg-", dir="/tmp"))
    started = subprocess.run([str(POSTGRES_SH), "start", str(folder)], capture_output=True, text=True)
    if started.returncode != 0:
        shutil.rmtree(folder, ignore_errors=True)
        pytest.fail(f"scripts/postgres.sh start failed:\n{started.stderr}", pytrace=False)
    dsn = started.stdout.strip().splitlines()[-1]
    try:
        with psycopg.connect(dsn, autocommit=True) as connection:
            connection.execute(
                "CREATE TABLE items (id int PRIMARY KEY, name text NOT NULL, price numeric(8, 2), note text)"
            )
            connection.execute(
                "INSERT INTO items VALUES (1, 'apple', 1.50, 'fresh: :not_a_param'), (2, 'pear', 2.25, '50% off'),"
                " (3, 'fig', 4.00, NULL)"
            )
            connection.execute("CREATE SEQUENCE counter")
            for table, rows in TABLE_SIZES.items():
                connection.execute(
                    f"CREATE TABLE {table} AS SELECT g AS id, g % 10 AS grp, md5(g::text) AS payload"
                    f" FROM generate_series(1, {rows}) AS g"
                )
                connection.execute(f"ANALYZE {table}")
        yield dsn
    finally:
        subprocess.run([str(POSTGRES_SH), "stop", str(folder)], capture_output=True, text=True)
        shutil.rmtree(folder, ignore_errors=True)


@dataclass
class LoopbackServer:
    """A stdlib HTTP server on 127.0.0.1 with test endpoints; `hits[key]` counts requests per key.

    GET /json?name=N[&delay=S]   {"data": {"items": [{"name": N}]}, "query": {...}} after S seconds
    GET /count/KEY[?delay=S]     {"key": KEY, "n": hits so far} after S seconds
    GET /held/KEY                like /count/KEY, once the test calls `release(KEY)` (30 s at most)
    GET /flaky/KEY?fail=K        503 for the first K requests of KEY, then {"attempts": n}
    GET /status/CODE             that status, a text body
    GET /text                    text/plain "plain words"
    GET /redirect?to=URL         302 to URL
    POST /echo                   {"method": "POST", "body": <the JSON body>}
    POST /status/CODE            that status; POSTs count under `hits["post:" + path]`

    Every GET counts under `hits["arrived:" + path-with-query]` as soon as it arrives.
    """

    url: str
    hits: Counter[str] = field(default_factory=Counter)
    lock: threading.Lock = field(default_factory=threading.Lock)

    gates: dict[str, threading.Event] = field(default_factory=dict)

    def hit(self, key: str) -> int:
        with self.lock:
            self.hits[key] += 1
            return self.hits[key]

    def gate(self, key: str) -> threading.Event:
        with self.lock:
            return self.gates.setdefault(key, threading.Event())

    def release(self, key: str) -> None:
        """Let every request held on /held/KEY answer (and later ones answer at once)."""
        self.gate(key).set()


def _handler(server: LoopbackServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - the stdlib's name
            pass  # keep pytest output clean

        def _send(self, status: int, body: object, content_type: str = "application/json") -> None:
            data = (json.dumps(body) if content_type == "application/json" else str(body)).encode()
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(data)

        def do_HEAD(self) -> None:  # noqa: N802 - stdlib naming
            self.do_GET()

        def do_GET(self) -> None:  # noqa: N802 - stdlib naming
            parts = urlsplit(self.path)
            query = {key: values[-1] for key, values in parse_qs(parts.query).items()}
            server.hit("arrived:" + self.path)  # before any delay: tests wait for a call to be in flight
            time.sleep(float(query.get("delay", 0)))
            segments = parts.path.strip("/").split("/")
            if segments[0] == "json":
                server.hit("json:" + query.get("name", ""))
                self._send(200, {"data": {"items": [{"name": query.get("name")}]}, "query": query})
            elif segments[0] == "count":
                self._send(200, {"key": segments[1], "n": server.hit(segments[1])})
            elif segments[0] == "held":
                server.gate(segments[1]).wait(30)
                self._send(200, {"key": segments[1], "n": server.hit(segments[1])})
            elif segments[0] == "flaky":
                attempt = server.hit(segments[1])
                if attempt <= int(query.get("fail", 2)):
                    self._send(503, "try again", "text/plain")
                else:
                    self._send(200, {"attempts": attempt})
            elif segments[0] == "status":
                self._send(int(segments[1]), "status body " + "x" * 500, "text/plain")
            elif segments[0] == "text":
                self._send(200, "plain words", "text/plain")
            elif segments[0] == "redirect":
                self.send_response(302)
                self.send_header("Location", query["to"])
                self.send_header("Content-Length", "0")
                self.end_headers()
            else:
                self._send(404, "no such endpoint", "text/plain")

        def do_POST(self) -> None:  # noqa: N802 - stdlib naming
            length = int(self.headers.get("Content-Length", 0))
            body = json.loads(self.rfile.read(length) or b"null")
            server.hit("post:" + self.path)
            segments = urlsplit(self.path).path.strip("/").split("/")
            if segments[0] == "status":
                self._send(int(segments[1]), "status body", "text/plain")
            else:
                self._send(200, {"method": "POST", "body": body})

    return Handler


class _QuietServer(ThreadingHTTPServer):
    def handle_error(self, request: object, client_address: object) -> None:
        pass  # clients that time out on purpose close their sockets mid-answer: not worth a traceback


@contextmanager
def serve_on_loopback(handler: type[BaseHTTPRequestHandler], name: str) -> Iterator[str]:
    """A threaded HTTP server for `handler` on a free 127.0.0.1 port, for the block; yields its URL."""
    httpd = _QuietServer(("127.0.0.1", 0), handler)
    httpd.daemon_threads = True
    thread = threading.Thread(target=httpd.serve_forever, name=name, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}"
    finally:
        httpd.shutdown()
        httpd.server_close()


@pytest.fixture(scope="session")
def loopback() -> Any:
    """`serve_on_loopback`, for test modules that run an HTTP server of their own."""
    return serve_on_loopback


@pytest.fixture(scope="session")
def http_server() -> Iterator[LoopbackServer]:
    state = LoopbackServer(url="")
    with serve_on_loopback(_handler(state), "loopback-http") as url:
        state.url = url
        yield state


def call_node(runner: Any, workflow: Any, node_id: str, row: dict[str, Any] | None = None, timeout: float = 30) -> Any:
    """Render `node_id` for `row`, submit it to `runner` and wait for its result (raises ToolError)."""
    node = workflow.graph.node(node_id)
    return runner.submit(node, workflow.graph.render(node, row or {})).result(timeout=timeout)


@pytest.fixture
def call() -> Any:
    return call_node


@pytest.fixture(scope="module")
def ray_cluster(tmp_path_factory):
    """A local Ray of two CPUs for one test module (its temp dir under the test's), shut down after it."""
    ray = pytest.importorskip("ray")
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    tmp = tmp_path_factory.mktemp("ray")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, _temp_dir=str(tmp))
    yield ray
    ray.shutdown()
