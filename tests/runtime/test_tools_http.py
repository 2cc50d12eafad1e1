"""HTTP tools against a real loopback server: outputs, response paths, retries, timeouts, allowed hosts, size bound."""

from __future__ import annotations

import gzip
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler
from urllib.parse import parse_qs, urlsplit

import pytest
from halo.errors import ToolError
from halo.runtime.tools import ToolRunner
from halo.spec.workflow import Workflow


def _http_workflow(url: str, **fields: object) -> Workflow:
    return Workflow("h").inputs("v").http("h", url=url, **fields).outputs(out="h.output")


def _key() -> str:
    return uuid.uuid4().hex[:12]  # per-test counters on the session-wide server


def test_json_response_path_and_fields(http_server, call):
    wf = _http_workflow(http_server.url + "/json", params={"name": "{{ v }}"}, response_path="data.items[0].name")
    with ToolRunner(wf) as runner:
        result = call(runner, wf, "h", {"v": "ada"})
    assert result["output"] == "ada"
    assert result["status"] == 200
    assert result["json"]["query"] == {"name": "ada"}
    assert result["headers"]["content-type"] == "application/json"
    assert '"ada"' in result["text"]


def test_output_is_parsed_json_else_text_and_post_sends_body(http_server, call):
    with ToolRunner(_http_workflow("")) as runner:
        wf = _http_workflow(http_server.url + "/text")
        assert call(runner, wf, "h", {"v": 1})["output"] == "plain words"
        wf = _http_workflow(http_server.url + "/echo", method="POST", json={"n": "{{ v }}", "tag": "x"})
        assert call(runner, wf, "h", {"v": 7})["output"] == {"method": "POST", "body": {"n": 7, "tag": "x"}}


def test_missing_response_path_and_non_json_body_are_errors(http_server, call):
    with ToolRunner(_http_workflow("")) as runner:
        wf = _http_workflow(http_server.url + "/json?name=a", response_path="data.items[3].name")
        with pytest.raises(ToolError, match=r"^h: response_path 'data.items\[3\].name' not found.*no \[3\]"):
            call(runner, wf, "h", {"v": 1})
        wf = _http_workflow(http_server.url + "/text", response_path="a")
        with pytest.raises(ToolError, match="needs a JSON body"):
            call(runner, wf, "h", {"v": 1})


def test_non_2xx_is_an_error_with_status_and_body_excerpt(http_server, call):
    wf = _http_workflow(http_server.url + "/status/404")
    with ToolRunner(wf, http_backoff_s=0.01) as runner, pytest.raises(ToolError) as caught:
        call(runner, wf, "h", {"v": 1})
    message = str(caught.value)
    assert caught.value.node_id == "h" and "HTTP 404" in message and "status body xxx" in message
    assert len(message) < 400  # an excerpt, not the whole 500-byte body


def test_5xx_is_retried_with_exponential_backoff(http_server, call):
    key = _key()
    wf = _http_workflow(f"{http_server.url}/flaky/{key}?fail=2")
    with ToolRunner(wf, http_backoff_s=0.1) as runner:
        started = time.perf_counter()
        assert call(runner, wf, "h", {"v": 1})["output"] == {"attempts": 3}
        elapsed = time.perf_counter() - started
    assert http_server.hits[key] == 3
    assert elapsed >= 0.1 + 0.2  # waited 0.1 s, then 0.2 s


def test_5xx_gives_up_after_three_attempts(http_server, call):
    key = _key()
    wf = _http_workflow(f"{http_server.url}/flaky/{key}?fail=5")
    with ToolRunner(wf, http_backoff_s=0.01) as runner, pytest.raises(ToolError, match="HTTP 503"):
        call(runner, wf, "h", {"v": 1})
    assert http_server.hits[key] == 3


def test_post_is_not_retried_on_5xx(http_server, call):
    path = f"/status/503?k={_key()}"  # a POST that failed midway may have had effects: send it once
    wf = _http_workflow(http_server.url + path, method="POST", json={"v": "{{ v }}"})
    with ToolRunner(wf, http_backoff_s=0.01) as runner, pytest.raises(ToolError, match="HTTP 503"):
        call(runner, wf, "h", {"v": 1})
    assert http_server.hits["post:" + path] == 1


def test_connection_refused_is_retried_then_reported(call):
    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    wf = _http_workflow(f"http://127.0.0.1:{port}/x")
    with ToolRunner(wf, http_backoff_s=0.05) as runner:
        started = time.perf_counter()
        with pytest.raises(ToolError, match=r"failed after 3 attempt\(s\).*ConnectError"):
            call(runner, wf, "h", {"v": 1})
    assert time.perf_counter() - started >= 0.05 + 0.1


def test_read_timeout_uses_the_node_timeout(http_server, call):
    key = _key()
    wf = _http_workflow(f"{http_server.url}/held/{key}", timeout_s=0.2)
    try:
        with ToolRunner(wf) as runner, pytest.raises(ToolError, match="timed out after 0.2 s"):
            call(runner, wf, "h", {"v": 1})
        # not waited out: the call failed while the server still held its answer back; not retried:
        # one request arrived (its handler may count it a moment after the client gave up)
        assert http_server.hits[key] == 0
        deadline = time.monotonic() + 10
        while not http_server.hits[f"arrived:/held/{key}"] and time.monotonic() < deadline:
            time.sleep(0.01)
        assert http_server.hits[f"arrived:/held/{key}"] == 1
    finally:
        http_server.release(key)


def test_hosts_outside_the_allowed_list_are_refused(http_server, call):
    wf = _http_workflow("https://api.example.com/users/{{ v }}")
    with ToolRunner(wf) as runner, pytest.raises(ToolError) as caught:
        call(runner, wf, "h", {"v": 1})
    assert caught.value.node_id == "h"
    assert "host 'api.example.com' is not allowed" in str(caught.value) and "allowed_hosts" in str(caught.value)
    # A redirect is checked too: loopback may not bounce a call to an unlisted host.
    wf = _http_workflow(http_server.url + "/redirect", params={"to": "http://blocked.example.org/x"})
    with ToolRunner(wf) as runner, pytest.raises(ToolError, match="host 'blocked.example.org' is not allowed"):
        call(runner, wf, "h", {"v": 1})


def test_urls_that_are_not_http_are_refused_before_sending(call):
    wf = _http_workflow("{{ v }}")
    with ToolRunner(wf) as runner:
        for bad in ("/relative/path", "ftp://127.0.0.1/file", ""):
            with pytest.raises(ToolError, match="must start with http:// or https://"):
                call(runner, wf, "h", {"v": bad})
        assert runner.stats.by_kind["http"].failures == 3


def test_listed_hosts_and_wildcards_pass_the_check():
    from halo.runtime.tools.http import HttpTool

    tool = HttpTool(["api.example.com", "*.corp.test", "Data.Example.net:8443"])
    try:
        assert tool.allowed("API.example.com") and tool.allowed("a.b.corp.test") and tool.allowed("data.example.net")
        assert tool.allowed("localhost") and tool.allowed("127.0.0.9") and tool.allowed("::1")
        assert not tool.allowed("example.com") and not tool.allowed("corp.test.evil.io")
    finally:
        tool.close()


def test_redirect_within_loopback_is_followed(http_server, call):
    wf = _http_workflow(http_server.url + "/redirect", params={"to": "/json?name=moved"}, response_path="query.name")
    with ToolRunner(wf) as runner:
        assert call(runner, wf, "h", {"v": 1})["output"] == "moved"


# -- response size bound (max_response_bytes): a server of its own, streaming bodies of any size ---------


@dataclass
class _BigServer:
    """GET /stream?n=N: N bytes, no Content-Length (read until close); /declared?n=N: claims N bytes,
    sends 10 and holds the rest back until `hold` is set (30 s at most); /gzip?n=N: N zero bytes
    gzip-compressed (a few KB on the wire). `sent` records, per /stream request, the bytes written
    before the client hung up."""

    url: str
    sent: list[int] = field(default_factory=list)
    done: threading.Event = field(default_factory=threading.Event)
    hold: threading.Event = field(default_factory=threading.Event)  # /declared sends the rest once set


@pytest.fixture(scope="module")
def big_server(loopback) -> Iterator[_BigServer]:
    state = _BigServer(url="")

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.0"  # the body ends when the connection closes: no length needed

        def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - the stdlib's name
            pass

        def do_GET(self) -> None:  # noqa: N802 - stdlib naming
            parts = urlsplit(self.path)
            n = int(parse_qs(parts.query).get("n", ["0"])[0])
            self.send_response(200)
            self.send_header("Content-Type", "text/plain")
            if parts.path == "/declared":
                self.send_header("Content-Length", str(n))
                self.end_headers()
                self.wfile.write(b"x" * 10)
                state.hold.wait(30)  # a client that waited for the rest would stall here
                return
            if parts.path == "/gzip":
                body = gzip.compress(b"\0" * n)
                self.send_header("Content-Encoding", "gzip")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)
                return
            self.end_headers()
            chunk, written = b"y" * 65536, 0
            try:
                while written < n:
                    self.wfile.write(chunk[: n - written])
                    written += min(len(chunk), n - written)
            except OSError:
                pass  # the client stopped reading and closed the connection
            finally:
                state.sent.append(written)
                state.done.set()

    with loopback(Handler, "loopback-big") as url:
        state.url = url
        yield state


def test_response_within_the_bound_is_read_whole(big_server, call):
    wf = _http_workflow(big_server.url + "/stream?n=5000", max_response_bytes=5000)
    with ToolRunner(wf) as runner:
        assert call(runner, wf, "h", {"v": 1})["output"] == "y" * 5000


def test_streamed_response_past_the_bound_stops_reading(big_server, call):
    # 4 GiB on offer; the tool must stop after ~1 MiB, not read (or buffer) the rest.
    big_server.done.clear()
    wf = _http_workflow(big_server.url + f"/stream?n={4 * 2**30}", max_response_bytes=2**20)
    with ToolRunner(wf) as runner:
        started = time.perf_counter()
        with pytest.raises(ToolError, match=r"^h: GET .* response larger than max_response_bytes \(1048576 bytes\)"):
            call(runner, wf, "h", {"v": 1})
        assert time.perf_counter() - started < 10
    assert big_server.done.wait(10)
    assert big_server.sent[-1] < 256 * 2**20  # the server saw the client hang up long before 4 GiB


def test_declared_content_length_past_the_bound_is_refused_unread(big_server, call):
    wf = _http_workflow(big_server.url + f"/declared?n={10**12}", max_response_bytes=2**20, timeout_s=30)
    big_server.hold.clear()
    try:
        # refused while the server holds the body back: a client that waited for it would time out instead
        with ToolRunner(wf) as runner, pytest.raises(ToolError, match=r"response of 1000000000000 bytes \(Content"):
            call(runner, wf, "h", {"v": 1}, timeout=20)
    finally:
        big_server.hold.set()


def test_the_bound_counts_decoded_bytes(big_server, call):
    # ~50 KB of gzip on the wire, 50 MB once decoded: a compression bomb stops at the bound too.
    wf = _http_workflow(big_server.url + f"/gzip?n={50 * 10**6}", max_response_bytes=10**6)
    with ToolRunner(wf) as runner, pytest.raises(ToolError, match=r"larger than max_response_bytes \(1000000"):
        call(runner, wf, "h", {"v": 1})


def test_default_bound_is_10_mib_and_a_node_may_not_set_zero():
    from halo.spec import SpecError

    assert _http_workflow("http://127.0.0.1/x").spec.nodes[0].max_response_bytes == 10 * 2**20
    with pytest.raises(SpecError, match="max_response_bytes"):
        _http_workflow("http://127.0.0.1/x", max_response_bytes=0).validate()
