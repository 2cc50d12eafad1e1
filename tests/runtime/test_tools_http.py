"""HTTP tools against a real loopback server: outputs, response paths, retries, timeouts, allowed hosts."""

from __future__ import annotations

import socket
import time
import uuid

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
    wf = _http_workflow(http_server.url + "/json?delay=1.0", timeout_s=0.2)
    with ToolRunner(wf) as runner:
        started = time.perf_counter()
        with pytest.raises(ToolError, match="timed out after 0.2 s"):
            call(runner, wf, "h", {"v": 1})
    assert time.perf_counter() - started < 0.9  # not retried, not waited out


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
