"""Admission control as pure ASGI middleware: an in-flight cap (429 + Retry-After)
and a request body limit (413), both answered before any work is done."""

from __future__ import annotations

import json
from typing import Any

from service.infra import metrics as m

Scope = dict[str, Any]


class _TooLarge(Exception):
    pass


async def _send_json(send: Any, status: int, body: dict[str, str], headers: list[tuple[bytes, bytes]] | None = None) -> None:
    raw = json.dumps(body).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(raw)).encode())]
                + (headers or [])})
    await send({"type": "http.response.body", "body": raw})


class LimitsMiddleware:
    def __init__(self, app: Any, max_in_flight: int, max_body_bytes: int, limited_paths: tuple[str, ...]):
        self.app = app
        self.max_in_flight = max_in_flight
        self.max_body_bytes = max_body_bytes
        self.limited_paths = limited_paths
        self.in_flight = 0

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope["path"] not in self.limited_paths:
            await self.app(scope, receive, send)
            return
        length = dict(scope.get("headers") or []).get(b"content-length")
        if length is not None and length.isdigit() and int(length) > self.max_body_bytes:
            m.REJECTED.labels("body_too_large").inc()
            await _send_json(send, 413, {"error": "PayloadTooLarge",
                                         "detail": f"request body over {self.max_body_bytes} bytes"})
            return
        if self.in_flight >= self.max_in_flight:
            m.REJECTED.labels("overloaded").inc()
            await _send_json(send, 429, {"error": "Overloaded", "detail": "too many requests in flight, retry shortly"},
                             [(b"retry-after", b"1")])
            return
        received = 0

        async def limited_receive() -> Any:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_body_bytes:
                    raise _TooLarge
            return message

        started = False

        async def tracking_send(message: Any) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        self.in_flight += 1
        m.IN_FLIGHT.inc()
        try:
            await self.app(scope, limited_receive, tracking_send)
        except _TooLarge:
            m.REJECTED.labels("body_too_large").inc()
            if not started:
                await _send_json(send, 413, {"error": "PayloadTooLarge",
                                             "detail": f"request body over {self.max_body_bytes} bytes"})
        finally:
            self.in_flight -= 1
            m.IN_FLIGHT.dec()
