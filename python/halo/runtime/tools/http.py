"""The http tool: one shared httpx client, an allowed-hosts list, retries with exponential backoff.

Hosts: loopback (localhost, 127.0.0.0/8, ::1) is always allowed; any other host must be listed
(exactly, or as `*.example.com` for its subdomains; a port in an entry is ignored). The check runs
on every request httpx sends, redirects included, so a redirect cannot leave the allowed set.

Retries (`attempts` in all, waiting `backoff_s`, then twice that, ...): a connection that could not
be made is retried for every method (the server never saw the request); 5xx answers and broken
connections are retried for idempotent methods only, since a POST that failed midway may have had
effects. A read timeout is not retried: the node's `timeout_s` is its budget per attempt (httpx
applies it to each phase: connect, write, read).

Size: the body is streamed and never read past the node's `max_response_bytes` (default 10 MiB,
counted after content decoding, so a gzip bomb stops too); a larger Content-Length is refused
before reading anything. Either way the call fails with a ToolError naming the node and the limit.
"""

from __future__ import annotations

import ipaddress
import json
import time
from collections.abc import Collection, Mapping
from typing import Any

import httpx

from halo.errors import ToolError
from halo.runtime.tools.json_path import PathNotFound, lookup
from halo.spec.nodes import DEFAULT_MAX_RESPONSE_BYTES

IDEMPOTENT = frozenset({"GET", "HEAD", "PUT", "DELETE", "OPTIONS"})
BODY_EXCERPT_CHARS = 200
ERROR_BODY_BYTES = 4096  # how much of a non-2xx answer is read, for the excerpt in the error


class HostNotAllowed(Exception):
    """Raised inside httpx's request hook; the tool turns it into a ToolError naming the node."""

    def __init__(self, host: str) -> None:
        super().__init__(host)
        self.host = host


def is_loopback(host: str) -> bool:
    if host.lower() in ("localhost", "localhost."):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


class HttpTool:
    """Sends rendered http requests; thread-safe (httpx.Client pools connections across threads)."""

    def __init__(self, allowed_hosts: Collection[str] = (), *, attempts: int = 3, backoff_s: float = 0.1) -> None:
        self.allowed_hosts = frozenset(_host_only(host) for host in allowed_hosts)
        self.attempts = attempts
        self.backoff_s = backoff_s
        self._client = httpx.Client(
            follow_redirects=True,
            event_hooks={"request": [self._check_host]},
            # Loopback never goes through a proxy from the environment (tests, local services).
            mounts={"all://localhost": None, "all://127.0.0.1": None, "all://[::1]": None},
        )

    def allowed(self, host: str) -> bool:
        host = host.lower()
        if is_loopback(host) or host in self.allowed_hosts:
            return True
        return any(pattern.startswith("*.") and host.endswith(pattern[1:]) for pattern in self.allowed_hosts)

    def run(self, node_id: str, request: Mapping[str, Any]) -> dict[str, Any]:
        method = str(request.get("method", "GET")).upper()
        url = str(request["url"])
        try:
            scheme = httpx.URL(url).scheme
        except httpx.InvalidURL as exc:
            raise ToolError(node_id, f"invalid url {url!r}: {exc}") from None
        if scheme not in ("http", "https"):
            raise ToolError(node_id, f"url {url!r} must start with http:// or https://")
        limit = int(request.get("max_response_bytes") or DEFAULT_MAX_RESPONSE_BYTES)
        try:
            response = self._send_with_retries(method, url, request)
            try:
                body = _read_body(node_id, method, url, response, limit)
            finally:
                response.close()
        except HostNotAllowed as exc:
            raise ToolError(
                node_id,
                f"host '{exc.host}' is not allowed (requested {method} {url}); "
                "only loopback is allowed unless listed in allowed_hosts",
            ) from None
        except httpx.TimeoutException as exc:
            raise ToolError(node_id, f"{method} {url} timed out after {request.get('timeout_s')} s ({exc!r})") from exc
        except httpx.HTTPError as exc:
            raise ToolError(node_id, f"{method} {url} failed after {self.attempts} attempt(s): {exc!r}") from exc
        return _result(node_id, method, url, response, body, request.get("response_path"))

    def close(self) -> None:
        self._client.close()

    def _send_with_retries(self, method: str, url: str, request: Mapping[str, Any]) -> httpx.Response:
        body = request.get("json")
        for attempt in range(self.attempts):
            last = attempt == self.attempts - 1
            try:
                outgoing = self._client.build_request(
                    method,
                    url,
                    params=request.get("params") or None,
                    headers=request.get("headers") or None,
                    json=body,
                    timeout=float(request.get("timeout_s", 30.0)),
                )
                response = self._client.send(outgoing, stream=True)  # the body is read by _read_body, bounded
            except (httpx.ConnectError, httpx.ConnectTimeout):
                if last:
                    raise
            except (httpx.ReadTimeout, httpx.WriteTimeout, httpx.PoolTimeout):
                raise
            except httpx.TransportError:
                if last or method not in IDEMPOTENT:
                    raise
            else:
                if response.status_code < 500 or last or method not in IDEMPOTENT:
                    return response
                response.close()
            time.sleep(self.backoff_s * 2**attempt)
        raise AssertionError("unreachable: the last attempt returns or raises")

    def _check_host(self, request: httpx.Request) -> None:
        if not self.allowed(request.url.host):
            raise HostNotAllowed(request.url.host)


def _host_only(entry: str) -> str:
    """`api.example.com:8443` -> `api.example.com`: the list names hosts, any port of theirs is fine."""
    entry = entry.strip().lower()
    if entry.startswith("["):  # [::1]:8080
        return entry[1 : entry.index("]")] if "]" in entry else entry
    return entry.rsplit(":", 1)[0] if entry.count(":") == 1 else entry


def _read_body(node_id: str, method: str, url: str, response: httpx.Response, limit: int) -> bytes:
    """The decoded body, read in chunks and never past `limit` bytes (a non-2xx answer: its first 4 KiB)."""
    if not response.is_success:
        limit = min(limit, ERROR_BODY_BYTES)
    else:
        declared = response.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > limit:
            raise ToolError(
                node_id,
                f"{method} {url}: response of {declared} bytes (Content-Length) is larger than "
                f"max_response_bytes ({limit} bytes); not read",
            )
    chunks: list[bytes] = []
    size = 0
    for chunk in response.iter_bytes():
        chunks.append(chunk)
        size += len(chunk)
        if size > limit:
            if not response.is_success:
                break  # enough for the excerpt
            raise ToolError(
                node_id, f"{method} {url}: response larger than max_response_bytes ({limit} bytes); stopped reading"
            )
    return b"".join(chunks)


def _result(
    node_id: str, method: str, url: str, response: httpx.Response, body: bytes, response_path: str | None
) -> dict[str, Any]:
    try:
        text = body.decode(response.charset_encoding or "utf-8", errors="replace")
    except LookupError:  # a charset Python does not know
        text = body.decode("utf-8", errors="replace")
    if not response.is_success:
        excerpt = text[:BODY_EXCERPT_CHARS] + ("..." if len(text) > BODY_EXCERPT_CHARS else "")
        raise ToolError(node_id, f"{method} {url} returned HTTP {response.status_code}: {excerpt!r}")
    parsed: Any = None
    if "json" in response.headers.get("content-type", "").lower() and text:
        try:
            parsed = json.loads(body)
        except (ValueError, RecursionError):  # not JSON, or nested past Python's recursion limit
            parsed = None
    output: Any = parsed if parsed is not None else text
    if response_path is not None:
        if parsed is None:
            kind = response.headers.get("content-type", "no content-type")
            raise ToolError(node_id, f"response_path '{response_path}' needs a JSON body; {url} sent {kind}")
        try:
            output = lookup(parsed, response_path)
        except PathNotFound as exc:
            message = f"response_path '{response_path}' not found in the response of {url}: {exc}"
            raise ToolError(node_id, message) from None
    return {
        "output": output,
        "status": response.status_code,
        "json": parsed,
        "text": text,
        "headers": dict(response.headers),
    }
