"""What keeps one client from hurting the others: bearer-token auth, a body size limit, and a bounded
admission queue (429 with `Retry-After` when full). `/health` is open to probes, but with a key set it
tells an unauthenticated caller only that the server is alive (no workflows, models or queue depths)."""

from __future__ import annotations

import hmac
import json
import threading
from typing import Any

from halo.serve.api_errors import error_body

OPEN_PATHS = frozenset({"/health"})


class AdmissionQueue:
    """Counts admitted work (workflow rows, chat requests) until it finishes; refuses beyond `limit`."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._used = 0
        self._lock = threading.Lock()

    def try_acquire(self, n: int = 1) -> bool:
        with self._lock:
            if self._used + n > self.limit:
                return False
            self._used += n
            return True

    def release(self, n: int = 1) -> None:
        with self._lock:
            self._used = max(0, self._used - n)

    @property
    def depth(self) -> int:
        return self._used


class _BodyTooLarge(Exception):
    pass


class ProtectionMiddleware:
    """ASGI middleware: 401 without the right bearer token, 413 for a body over `max_body_bytes`
    (by Content-Length up front, or counted while the app reads a chunked body)."""

    def __init__(self, app: Any, *, api_key: str | None, max_body_bytes: int) -> None:
        self.app = app
        self.api_key = api_key
        self.max_body_bytes = max_body_bytes

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
        if self.api_key is not None and scope.get("path") not in OPEN_PATHS:
            problem = self._auth_problem(headers.get("authorization"))
            if problem is not None:
                await _send_error(send, 401, problem, "invalid_api_key", {"www-authenticate": "Bearer"})
                return
        length = headers.get("content-length")
        if length is not None and length.isdigit() and int(length) > self.max_body_bytes:
            await _send_error(send, 413, self._too_large(int(length)), "body_too_large")
            return
        seen = 0
        started = False

        async def counted_receive() -> dict[str, Any]:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_body_bytes:
                    raise _BodyTooLarge
            return message

        async def tracked_send(message: dict[str, Any]) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, counted_receive, tracked_send)
        except _BodyTooLarge:
            if not started:
                await _send_error(send, 413, self._too_large(seen), "body_too_large")

    def _auth_problem(self, header: str | None) -> str | None:
        assert self.api_key is not None
        return auth_problem(header, self.api_key)

    def _too_large(self, size: int) -> str:
        return f"request body of {size} bytes is over this server's limit of {self.max_body_bytes} bytes"


def auth_problem(header: str | None, api_key: str) -> str | None:
    """Why `header` (an Authorization header) does not carry `api_key`, or None if it does."""
    if not header:
        return ("missing API key: send the header 'Authorization: Bearer <key>' "
                "(this server was started with --api-key or HALO_API_KEY)")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return "malformed Authorization header: expected 'Authorization: Bearer <key>'"
    if not hmac.compare_digest(token.strip().encode(), api_key.encode()):
        return "invalid API key: the bearer token does not match this server's key"
    return None


def authorized(header: str | None, api_key: str | None) -> bool:
    """True when no key is set or `header` carries it (for the open routes that answer more to a client
    that has it, like /health)."""
    return api_key is None or auth_problem(header, api_key) is None


async def _send_error(send: Any, status: int, message: str, code: str, extra: dict[str, str] | None = None) -> None:
    body = json.dumps(error_body(status, message, code=code)).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    headers += [(k.encode(), v.encode()) for k, v in (extra or {}).items()]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
