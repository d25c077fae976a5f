"""Admission control as pure ASGI middleware, answered before any work is done:

- a body limit (413) on every request with a body, whether it declares its length or is sent
  chunked: the body is read here, up to the limit, and handed to the app whole (bodies are small;
  reading it here is what lets an oversize chunked body get its 413 instead of FastAPI's 400);
  admin routes have their own, larger limit (product batches);
- an in-flight cap (429 + Retry-After) on the request paths.
"""

from __future__ import annotations

import json
from typing import Any

from service.infra import metrics as m

Scope = dict[str, Any]
ADMIN_PREFIX = "/admin/"


async def _send_json(send: Any, status: int, body: dict[str, str], headers: list[tuple[bytes, bytes]] | None = None) -> None:
    raw = json.dumps(body).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(raw)).encode())]
                + (headers or [])})
    await send({"type": "http.response.body", "body": raw})


async def _too_large(send: Any, limit: int) -> None:
    m.REJECTED.labels("body_too_large").inc()
    await _send_json(send, 413, {"error": "PayloadTooLarge", "detail": f"request body over {limit} bytes"})


class LimitsMiddleware:
    def __init__(self, app: Any, max_in_flight: int, max_body_bytes: int, limited_paths: tuple[str, ...],
                 admin_max_body_bytes: int | None = None):
        self.app = app
        self.max_in_flight = max_in_flight
        self.max_body_bytes = max_body_bytes
        self.admin_max_body_bytes = admin_max_body_bytes or max_body_bytes
        self.limited_paths = limited_paths
        self.in_flight = 0

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.admin_max_body_bytes if scope["path"].startswith(ADMIN_PREFIX) else self.max_body_bytes
        length = dict(scope.get("headers") or []).get(b"content-length")
        if length is not None and length.isdigit() and int(length) > limit:
            await _too_large(send, limit)
            return
        capped = scope["path"] in self.limited_paths
        if capped:
            if self.in_flight >= self.max_in_flight:
                m.REJECTED.labels("overloaded").inc()
                await _send_json(send, 429, {"error": "Overloaded",
                                             "detail": "too many requests in flight, retry shortly"},
                                 [(b"retry-after", b"1")])
                return
            self.in_flight += 1
            m.IN_FLIGHT.inc()
        try:
            body_receive = receive if scope["method"] in ("GET", "HEAD", "OPTIONS") else await _whole_body(
                receive, send, limit)
            if body_receive is not None:
                await self.app(scope, body_receive, send)
        finally:
            if capped:
                self.in_flight -= 1
                m.IN_FLIGHT.dec()


async def _whole_body(receive: Any, send: Any, limit: int) -> Any:
    """Read the body up to ``limit``; a receive that hands it over whole, or None once answered (413) or gone."""
    chunks, total = [], 0
    while True:
        message = await receive()
        if message["type"] != "http.request":  # the client went away
            return None
        chunk = message.get("body", b"")
        total += len(chunk)
        if total > limit:
            await _too_large(send, limit)
            return None
        chunks.append(chunk)
        if not message.get("more_body", False):
            break
    whole = [{"type": "http.request", "body": b"".join(chunks), "more_body": False}]

    async def body_receive() -> Any:
        return whole.pop() if whole else await receive()
    return body_receive
