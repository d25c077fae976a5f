"""/v1/rerank and /v2/rerank in the Cohere/Jina shape, over a real socket, and driven by the real clients
people use: the official ``cohere`` SDK (v1 and v2 clients) and LangChain's ``CohereRerank``."""

from __future__ import annotations

import httpx
import pytest

from service.api.app import create_app
from service.infra.settings import Settings
from tests.live_server import live_server
from tests.needs import need_module


@pytest.fixture(scope="module")
def url(tmp_path_factory, bundle_dir):
    tmp = tmp_path_factory.mktemp("compat")
    settings = Settings(redis_url=None, embedded_redis_path=tmp / "redis" / "hmpps.db", bundle=bundle_dir,
                        health_interval_s=0.2)
    with live_server(create_app(settings)) as u:
        yield u


def _native(url, catalog, ids, user=None, query=None):
    body = {"user_id": user or "anonymous", "query": query or catalog["queries"][0],
            "candidates": [{"product_id": p} for p in ids]}
    if user is None:
        body["history"] = []
    return httpx.post(url + "/rerank", json=body).json()


def test_product_ids_rank_as_on_rerank(url, catalog):
    ids = catalog["products"][:8]
    for user in (catalog["user"], None):  # a known user's history, and anonymous
        native = _native(url, catalog, ids, user)
        body = {"model": "hmpps", "query": catalog["queries"][0], "documents": ids} | ({"user": user} if user else {})
        compat = httpx.post(url + "/v1/rerank", json=body).json()
        assert native["fallback"] is None and compat["meta"]["hmpps"]["fallback"] is None
        assert [ids[r["index"]] for r in compat["results"]] == [r["product_id"] for r in native["results"]]
        assert [round(r["relevance_score"], 6) for r in compat["results"]] == [r["score"] for r in native["results"]]
    # objects with an id are the same products; v2 answers the same
    v2 = httpx.post(url + "/v2/rerank", json={"model": "m", "query": catalog["queries"][0],
                                              "documents": [{"id": p} for p in ids], "top_n": 3}).json()
    anonymous = _native(url, catalog, ids)
    assert [ids[r["index"]] for r in v2["results"]] == [r["product_id"] for r in anonymous["results"]][:3]
    assert v2["meta"]["api_version"] == {"version": "2"}


def test_free_text_is_encoded_cached_and_ranked_by_the_query(url, catalog):
    docs = ["blue rain jacket for hiking", "green water bottle, steel", "red running shoes, light and fast",
            {"text": "grey wool socks"}, catalog["products"][0]]
    body = {"query": "red running shoes", "documents": docs, "return_documents": True}
    first = httpx.post(url + "/v1/rerank", json=body)
    assert first.status_code == 200, first.text
    out = first.json()
    assert out["meta"]["hmpps"]["fallback"] is None
    assert sorted(r["index"] for r in out["results"]) == list(range(len(docs)))
    assert all(0.0 < r["relevance_score"] < 1.0 for r in out["results"])
    order = [r["index"] for r in out["results"]]
    # of the free texts, the one that says what the query says comes first (the tiny bundle scores word overlap)
    assert order.index(2) < min(order.index(i) for i in (0, 1, 3)), order
    by_index = {r["index"]: r for r in out["results"]}
    assert by_index[2]["document"] == {"text": docs[2]} and by_index[3]["document"] == docs[3]
    metrics = httpx.get(url + "/metrics").text
    encoded = float(next(ln.split()[-1] for ln in metrics.splitlines() if ln.startswith("hmpps_text_encoded_total ")))
    again = httpx.post(url + "/v1/rerank", json=body).json()
    assert [r["index"] for r in again["results"]] == [r["index"] for r in out["results"]]
    metrics = httpx.get(url + "/metrics").text
    assert float(next(ln.split()[-1] for ln in metrics.splitlines()
                      if ln.startswith("hmpps_text_encoded_total "))) == encoded  # the second time from the cache


def test_bad_documents_get_a_422_naming_the_problem(url, catalog):
    cases = [({"query": "q", "documents": []}, "documents"),
             ({"query": "q", "documents": [{"title": "no id, no text"}]}, "documents"),
             ({"query": "q", "documents": ["p1", "p1"]}, "twice"),
             ({"query": " ", "documents": ["p1"]}, "query"),
             ({"query": "q", "documents": ["p1"], "colour": "red"}, "colour"),
             # each of these once reached the request path and became a 500 (found by schemathesis)
             ({"query": "q", "documents": ["p1"], "user": "u", "history": ["p2", ""]}, "history"),
             ({"query": "q", "documents": ["p" * 129]}, "128"),
             ({"query": "q", "documents": [{"id": ""}]}, "documents"),
             ({"query": "q", "documents": [{"id": ["p1"]}]}, "documents"),
             (b'{"query": "q", "documents": ["a lone \\ud800 surrogate"]}', "documents")]  # JSON may escape one
    for body, word in cases:
        res = (httpx.post(url + "/v1/rerank", content=body, headers={"Content-Type": "application/json"})
               if isinstance(body, bytes) else httpx.post(url + "/v1/rerank", json=body))
        assert res.status_code == 422 and res.json()["error"] == "ValidationError" and word in res.text, (body, res.text)


def test_the_official_cohere_sdk_reranks_through_the_service(url, catalog):
    need_module("cohere", "the dev extra: pip install -e '.[dev]'")
    import cohere

    ids = catalog["products"][:6]
    expected = [r["product_id"] for r in _native(url, catalog, ids, catalog["user"])["results"]]
    v1 = cohere.Client(api_key="unused", base_url=url)
    res = v1.rerank(model="hmpps", query=catalog["queries"][0], documents=ids, top_n=4,
                    request_options={"additional_body_parameters": {"user": catalog["user"]}})
    assert [ids[r.index] for r in res.results] == expected[:4]
    v2 = cohere.ClientV2(api_key="unused", base_url=url)
    texts = ["red running shoes", "a desk lamp with a warm light", "black trail backpack"]
    res2 = v2.rerank(model="hmpps", query="red running shoes", documents=texts)
    assert len(res2.results) == 3 and res2.results[0].index == 0
    assert all(0.0 <= r.relevance_score <= 1.0 for r in res2.results)


def test_langchain_cohere_rerank_compresses_documents_through_the_service(url):
    need_module("langchain_cohere", "the dev extra: pip install -e '.[dev]'")
    from langchain_cohere import CohereRerank
    from langchain_core.documents import Document

    reranker = CohereRerank(model="hmpps", cohere_api_key="unused", base_url=url, top_n=2)
    docs = [Document(page_content=t, metadata={"n": i}) for i, t in
            enumerate(["white yoga mat", "red running shoes", "grey desk lamp"])]
    out = reranker.compress_documents(docs, "red running shoes")
    assert [d.metadata["n"] for d in out][:1] == [1] and len(out) == 2
    assert all("relevance_score" in d.metadata for d in out)
