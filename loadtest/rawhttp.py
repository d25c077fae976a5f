"""A minimal HTTP/1.1 keep-alive client over asyncio streams.

The load generator shares the machine with the server it measures, so its own
per-request cost must be small: requests are pre-encoded bytes, responses are
read by Content-Length, and connections are pooled. (httpx costs several
milliseconds of CPU per request here, which showed up as server latency.)
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlparse


@dataclass
class RawResponse:
    status_code: int
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


class RawHTTPClient:
    def __init__(self, base_url: str, max_connections: int = 512):
        u = urlparse(base_url)
        if u.scheme != "http" or not u.hostname:
            raise ValueError(f"raw client speaks plain http only, got {base_url!r}")
        self.host, self.port = u.hostname, u.port or 80
        self.hostport = f"{self.host}:{self.port}".encode()
        self.idle: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []
        self.sem = asyncio.Semaphore(max_connections)

    def encode(self, path: str, body: dict[str, Any]) -> bytes:
        payload = json.dumps(body, separators=(",", ":")).encode()
        return (b"POST " + path.encode() + b" HTTP/1.1\r\nHost: " + self.hostport
                + b"\r\nContent-Type: application/json\r\nContent-Length: " + str(len(payload)).encode()
                + b"\r\n\r\n" + payload)

    async def send(self, raw: bytes, timeout_s: float) -> RawResponse:
        async with self.sem:
            if self.idle:
                conn = self.idle.pop()
                try:
                    return await self._exchange(conn, raw, timeout_s)
                except (asyncio.IncompleteReadError, ConnectionError):
                    pass  # the server closed an idle keep-alive connection: retry once on a fresh one
            conn = await asyncio.open_connection(self.host, self.port)
            return await self._exchange(conn, raw, timeout_s)

    async def _exchange(self, conn: tuple[asyncio.StreamReader, asyncio.StreamWriter], raw: bytes,
                        timeout_s: float) -> RawResponse:
        reader, writer = conn
        try:
            async with asyncio.timeout(timeout_s):
                writer.write(raw)
                head = await reader.readuntil(b"\r\n\r\n")
                lines = head.split(b"\r\n")
                status = int(lines[0].split(b" ", 2)[1])
                length, close = 0, False
                for line in lines[1:]:
                    name, _, value = line.partition(b":")
                    name = name.strip().lower()
                    if name == b"content-length":
                        length = int(value.strip())
                    elif name == b"connection" and value.strip().lower() == b"close":
                        close = True
                body = await reader.readexactly(length) if length else b""
        except BaseException:
            writer.close()
            raise
        if close:
            writer.close()
        else:
            self.idle.append(conn)
        return RawResponse(status, body)

    async def aclose(self) -> None:
        for _, writer in self.idle:
            writer.close()
        self.idle.clear()
