"""What the parity tests share: a scorer that records the inputs the service built, and the store's fetch."""

from __future__ import annotations

import asyncio
from typing import Any

from service.infra.store import RedisFeatureStore


class Recorder:
    """Wraps a bundle's scorer: every ``logits`` call's inputs are kept in ``seen``."""

    def __init__(self, inner: Any):
        self.inner, self.seen = inner, []

    def logits(self, inputs):
        self.seen.append({k: v.copy() for k, v in inputs.items()})
        return self.inner.logits(inputs)


def fetch(handle: Any, bundle: Any, ids: list[str], user: str, query: str) -> Any:
    """The service store's fetch for one request (features, the user's live history, the query)."""
    async def go():
        client = handle.async_client()
        try:
            return await RedisFeatureStore(client).fetch(bundle.version, user, query, ids, None, bundle.history_cap,
                                                         False)
        finally:
            await client.aclose()
    return asyncio.run(go())
