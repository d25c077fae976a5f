"""Admission control: 413 before reading an oversized body, 429 once the in-flight cap is reached."""

from __future__ import annotations

import asyncio
import json

from service.api.limits import LimitsMiddleware


class Gate:
    """An ASGI app that holds each request until released, then answers 200."""

    def __init__(self) -> None:
        self.release = asyncio.Event()
        self.entered = 0

    async def __call__(self, scope, receive, send):
        self.entered += 1
        while (await receive()).get("more_body"):
            pass
        await self.release.wait()
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})


async def _call(app, path="/rerank", body=b"{}", headers=None, chunks=None):
    sent = []
    parts = chunks or [body]

    async def receive():
        part = parts.pop(0) if parts else b""
        return {"type": "http.request", "body": part, "more_body": bool(parts)}

    async def send(message):
        sent.append(message)
    scope = {"type": "http", "method": "POST", "path": path, "headers": headers or [(b"content-length", str(len(body)).encode())]}
    await app(scope, receive, send)
    start = next(m for m in sent if m["type"] == "http.response.start")
    body_out = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    return start["status"], dict(start["headers"]), body_out


def test_declared_oversized_body_gets_413_without_reaching_the_app():
    async def go():
        gate = Gate()
        app = LimitsMiddleware(gate, max_in_flight=2, max_body_bytes=10, limited_paths=("/rerank",))
        status, _, body = await _call(app, body=b"x" * 11)
        assert status == 413 and json.loads(body)["error"] == "PayloadTooLarge" and gate.entered == 0
    asyncio.run(go())


def test_streamed_oversized_body_gets_413():
    async def go():
        gate = Gate()
        gate.release.set()
        app = LimitsMiddleware(gate, max_in_flight=2, max_body_bytes=10, limited_paths=("/rerank",))
        status, _, _ = await _call(app, headers=[], chunks=[b"x" * 6, b"x" * 6])
        assert status == 413
    asyncio.run(go())


def test_in_flight_cap_answers_429_with_retry_after_and_frees_its_slot():
    async def go():
        gate = Gate()
        app = LimitsMiddleware(gate, max_in_flight=2, max_body_bytes=1000, limited_paths=("/rerank",))
        held = [asyncio.create_task(_call(app)) for _ in range(2)]
        while gate.entered < 2:
            await asyncio.sleep(0)
        status, headers, body = await _call(app)
        assert status == 429 and headers[b"retry-after"] == b"1" and json.loads(body)["error"] == "Overloaded"
        other = asyncio.create_task(_call(app, path="/healthz"))  # unlimited paths pass through
        gate.release.set()
        assert [s for s, _, _ in await asyncio.gather(*held, other)] == [200, 200, 200]
        assert app.in_flight == 0
        assert (await _call(app))[0] == 200
    asyncio.run(go())
