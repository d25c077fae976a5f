"""The HTTP edge of the real app over a real socket: body limits (declared and chunked), the request
budget on both scoring paths, bounded metric labels, admin images, settings that do what they say."""

from __future__ import annotations

import dataclasses
import re
import shutil
import time

import httpx
import pytest

from service.api.app import create_app
from service.core.scoring import StudentScorer
from service.infra.settings import Settings
from tests.live_server import live_server

TOKEN = "s3cret"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


def _settings(tmp_path, bundle_dir, **kw):
    return Settings(redis_url=None, embedded_redis_path=tmp_path / "redis" / "hmpps.db", bundle=bundle_dir,
                    health_interval_s=0.2, admin_token=TOKEN, **kw)


def _body(catalog, k=8, **kw):
    return {"user_id": catalog["user"], "query": catalog["queries"][0],
            "candidates": [{"product_id": p, "score": float(k - i)} for i, p in enumerate(catalog["products"][:k])]} | kw


def _metric(text: str, name: str, **labels: str) -> float:
    want = ",".join(f'{k}="{v}"' for k, v in labels.items())
    pattern = re.escape(name) + (r"\{" + re.escape(want) + r"\}" if labels else "") + r" ([0-9.e+-]+)$"
    found = re.search(pattern, text, re.M)
    return float(found.group(1)) if found else 0.0


def _chunks(data: bytes, size: int = 4096):
    for i in range(0, len(data), size):
        yield data[i:i + size]


def test_oversize_bodies_get_413_declared_or_chunked_and_are_counted(tmp_path, bundle_dir, catalog):
    app = create_app(_settings(tmp_path, bundle_dir, max_body_bytes=2048, admin_max_body_bytes=4096))
    with live_server(app) as url:
        before = _metric(httpx.get(url + "/metrics").text, "hmpps_rerank_rejected_total", reason="body_too_large")
        big = b'{"user_id": "u", "query": "q", "candidates": [' + b'{"product_id": "p"},' * 400 + b'{"product_id": "z"}]}'
        declared = httpx.post(url + "/rerank", content=big, headers={"content-type": "application/json"})
        chunked = httpx.post(url + "/rerank", content=_chunks(big), headers={"content-type": "application/json"})
        events = httpx.post(url + "/events", content=_chunks(big), headers={"content-type": "application/json"})
        admin = httpx.post(url + "/admin/products", content=_chunks(big * 3), headers=AUTH | {"content-type": "application/json"})
        for res in (declared, chunked, events, admin):
            assert res.status_code == 413, res.text
            assert res.json()["error"] == "PayloadTooLarge"
        assert "transfer-encoding" not in {k.lower() for k in declared.request.headers}
        assert chunked.request.headers.get("transfer-encoding") == "chunked"
        after = _metric(httpx.get(url + "/metrics").text, "hmpps_rerank_rejected_total", reason="body_too_large")
        assert after == before + 4
        # a chunked body under the limit reaches the route whole
        small = httpx.post(url + "/rerank", content=_chunks(httpx.Request("POST", url, json=_body(catalog)).content, 64),
                           headers={"content-type": "application/json"})
        assert small.status_code == 200 and small.json()["fallback"] is None, small.text


@dataclasses.dataclass
class SlowScorer:
    """The student, after a deliberate sleep: a model that blows the budget."""

    inline: bool
    delay_s: float = 0.4
    name: str = "slow"
    needs_summaries: bool = False

    def __call__(self, bundle, query, fetched, listed, explain=False):
        time.sleep(self.delay_s)
        return StudentScorer()(bundle, query, fetched, listed, explain)


BUDGET_S = 0.05
MARGIN_S = 0.15  # HTTP, validation, the Redis fetch and a busy 2-core machine


@pytest.mark.parametrize("inline", [False, True])
def test_a_spent_budget_answers_the_callers_order_on_both_scoring_paths(tmp_path, bundle_dir, catalog, inline):
    app = create_app(_settings(tmp_path, bundle_dir, request_budget_ms=BUDGET_S * 1000), scorer=SlowScorer(inline))
    body = _body(catalog)
    callers = [c["product_id"] for c in body["candidates"]]
    with live_server(app) as url, httpx.Client(base_url=url) as c:
        first_t = time.perf_counter()
        first = c.post("/rerank", json=body).json()
        first_s = time.perf_counter() - first_t
        assert first["fallback"] == "timeout" and [r["product_id"] for r in first["results"]] == callers
        if inline:
            # the budget cannot interrupt a call on the event loop: late by at most that one call ...
            assert first_s < SlowScorer.delay_s + BUDGET_S + MARGIN_S
            # ... which closes the inline gate, so every later request is scored in a thread, on time
            assert not app.state.hmpps.serving.inline.open
        else:
            assert first_s < BUDGET_S + MARGIN_S
        for _ in range(3):
            t = time.perf_counter()
            later = c.post("/rerank", json=body).json()
            assert time.perf_counter() - t < BUDGET_S + MARGIN_S
            assert later["fallback"] == "timeout" and [r["product_id"] for r in later["results"]] == callers


def test_the_fast_student_stays_inline_and_in_budget(tmp_path, bundle_dir, catalog):
    app = create_app(_settings(tmp_path, bundle_dir))
    with live_server(app) as url, httpx.Client(base_url=url) as c:
        closed = _metric(c.get("/metrics").text, "hmpps_inline_scoring_closed_total")  # per process: a delta
        for _ in range(20):
            assert c.post("/rerank", json=_body(catalog)).json()["fallback"] is None
        assert _metric(c.get("/metrics").text, "hmpps_inline_scoring_closed_total") == closed
        assert app.state.hmpps.serving.inline.open


def test_feedback_arm_labels_are_bounded(tmp_path, bundle_dir):
    app = create_app(_settings(tmp_path, bundle_dir))
    with live_server(app) as url, httpx.Client(base_url=url) as c:
        # the registry is per process (other tests' arms are in it): count what this test adds
        others = _metric(c.get("/metrics").text, "hmpps_feedback_events_total", arm="other", type="click")
        for start in range(0, 1000, 250):
            events = [{"type": "click", "request_id": f"r{i}", "user_id": "u1", "arm": f"made-up-{i}",
                       "product_id": "p1"} for i in range(start, start + 250)]
            assert c.post("/feedback", json={"events": events}).status_code == 200
        c.post("/feedback", json={"events": [{"type": "click", "request_id": "r", "user_id": "u1", "arm": "student",
                                              "product_id": "p1"}]})
        text = c.get("/metrics").text
    series = re.findall(r'^hmpps_feedback_events_total\{arm="([^"]+)",type="click"\}', text, re.M)
    assert not [s for s in series if s.startswith("made-up-")]  # 1,000 distinct arms sent, no new series
    assert {"other", "student"} <= set(series)
    assert _metric(text, "hmpps_feedback_events_total", arm="other", type="click") == others + 1000


def _product(image=None, pid="NEW-1"):
    return {"product_id": pid, "title": "red trail backpack", "brand": "Alto"} | ({"image": image} if image else {})


def test_admin_images_only_from_the_image_dir_and_errors_reveal_no_files(tmp_path, bundle_dir, images_dir):
    allowed = tmp_path / "images"
    allowed.mkdir()
    shutil.copy(next(images_dir.iterdir()), allowed / "ok.png")
    (allowed / "big.png").write_bytes(b"\0" * 4096)
    outside = tmp_path / "secret.txt"
    outside.write_text("not for you")
    app = create_app(_settings(tmp_path, bundle_dir, image_dir=allowed, max_image_bytes=2048))
    with live_server(app) as url, httpx.Client(base_url=url, headers=AUTH) as c:
        post = lambda image: c.post("/admin/products", json={"products": [_product(image)]})  # noqa: E731
        ok = post("ok.png")
        assert ok.status_code == 200, ok.text
        assert next(iter(ok.json()["versions"].values()))["written"] == 1
        existing, missing = post(str(outside)), post(str(tmp_path / "no-such-file.txt"))
        escaped = post("../secret.txt")
        for res in (existing, missing, escaped):
            assert res.status_code == 422 and res.json()["error"] == "Unprocessable", res.text
        # a file outside the directory and a missing one get the same answer: nothing to probe with
        assert existing.json()["detail"].replace(str(outside), "X") == missing.json()["detail"].replace(
            str(tmp_path / "no-such-file.txt"), "X")
        assert "not for you" not in existing.text and "No such file" not in missing.text
        big = post("big.png")
        assert big.status_code == 422 and "over 2048 bytes" in big.json()["detail"]
    # without HMPPS_IMAGE_DIR, no image is read over HTTP at all
    closed = create_app(_settings(tmp_path / "b", bundle_dir))
    with live_server(closed) as url:
        res = httpx.post(url + "/admin/products", json={"products": [_product(str(allowed / "ok.png"))]}, headers=AUTH)
        assert res.status_code == 422 and "HMPPS_IMAGE_DIR" in res.json()["detail"]


def test_admin_needs_the_bearer_scheme_and_is_off_without_a_token(tmp_path, bundle_dir):
    with live_server(create_app(_settings(tmp_path, bundle_dir))) as url:
        assert httpx.post(url + "/admin/reload", headers={"Authorization": TOKEN}).status_code == 401
        assert httpx.post(url + "/admin/reload", headers={"Authorization": f"Basic {TOKEN}"}).status_code == 401
        assert httpx.post(url + "/admin/reload", headers=AUTH).status_code == 200
    off = Settings(redis_url=None, embedded_redis_path=tmp_path / "r2" / "hmpps.db", bundle=bundle_dir,
                   health_interval_s=0.2)
    with live_server(create_app(off)) as url:
        res = httpx.post(url + "/admin/reload", headers=AUTH)
        assert res.status_code == 403 and res.json() == {"error": "Forbidden",
                                                         "detail": "admin endpoints are disabled: set HMPPS_ADMIN_TOKEN"}


def test_max_candidates_is_read_and_validation_errors_have_the_error_shape(tmp_path, bundle_dir, catalog):
    with live_server(create_app(_settings(tmp_path, bundle_dir, max_candidates=5))) as url:
        over = httpx.post(url + "/rerank", json=_body(catalog, k=6))
        assert over.status_code == 422 and "at most 5" in over.json()["detail"], over.text
        assert over.json()["errors"][0]["loc"] == ["body", "candidates"]
        assert httpx.post(url + "/rerank", json=_body(catalog, k=5)).status_code == 200
        bad = httpx.post(url + "/rerank", json=_body(catalog) | {"query": ""})
        doc = bad.json()
        assert bad.status_code == 422 and doc["error"] == "ValidationError" and "query" in doc["detail"]
        assert doc["errors"][0]["loc"] == ["body", "query"]
        spec = httpx.get(url + "/openapi.json").json()
        assert spec["paths"]["/rerank"]["post"]["responses"]["422"]["content"]["application/json"]["schema"] == {
            "$ref": "#/components/schemas/ErrorBody"}


def test_a_lone_surrogate_anywhere_in_a_body_is_a_422_naming_where(tmp_path, bundle_dir, catalog):
    # JSON may escape a lone surrogate; pydantic lets it through inside lists and free-form objects, where it
    # reached Redis and the response encoder (a fail-open "model_error", or a 500 found by schemathesis)
    p = catalog["products"][0]
    cases = [("/rerank", f'{{"user_id": "u", "query": "q", "history": ["a\\ud800"], '
                         f'"candidates": [{{"product_id": "{p}"}}]}}', "body.history[0]"),
             ("/v1/rerank", f'{{"query": "q", "return_documents": true, '
                            f'"documents": [{{"id": "{p}", "note": {{"x\\udc00": 1}}}}]}}', "body.documents[0].note (a key)"),
             ("/v2/rerank", '{"query": "q", "documents": ["lone \\ud800 text"]}', "body.documents[0]"),
             ("/admin/products", '{"products": [{"product_id": "n1", "title": "t", "category": ["a\\ud800"]}]}',
              "body.products[0].category[0]")]
    with live_server(create_app(_settings(tmp_path, bundle_dir))) as url:
        for path, raw, where in cases:
            res = httpx.post(url + path, content=raw.encode(), headers={"Content-Type": "application/json"} | AUTH)
            assert res.status_code == 422 and res.json()["error"] == "ValidationError", (path, res.text)
            assert f"{where} is not valid Unicode" in res.json()["detail"], (path, res.text)
        ok = httpx.post(url + "/rerank", json=_body(catalog, history=["\U0001f600"]))  # a valid pair is fine
        assert ok.status_code == 200, ok.text


def test_the_api_reference_can_be_turned_off(tmp_path, bundle_dir, catalog):
    with live_server(create_app(_settings(tmp_path, bundle_dir, expose_docs=False))) as url:
        for path in ("/docs", "/redoc", "/openapi.json"):
            assert httpx.get(url + path).status_code == 404, path
        assert httpx.post(url + "/rerank", json=_body(catalog)).status_code == 200
