"""The open-loop load generator: refusal of remote targets, no coordinated omission, a real run."""

from __future__ import annotations

import asyncio
import json
import math
from pathlib import Path

import httpx
import pytest

from contract.errors import InputError
from loadtest.mix import RequestMix
from loadtest.openloop import markdown, run_open_loop, validate


def test_refuses_remote_targets_and_unbounded_runs():
    with pytest.raises(InputError, match="--allow-remote"):
        validate("http://10.20.30.40:8000", 10, 1, allow_remote=False)
    validate("http://10.20.30.40:8000", 10, 1, allow_remote=True)
    validate("http://127.0.0.1:8000", 10, 1, allow_remote=False)
    validate("http://localhost:8000", 10, 1, allow_remote=False)
    with pytest.raises(InputError, match="capped"):
        validate("http://127.0.0.1:8000", 10_000, 3600, allow_remote=False)
    with pytest.raises(InputError, match="http://"):
        validate("ftp://127.0.0.1", 1, 1, allow_remote=False)


def test_mix_draws_real_users_queries_and_products(bundle_dir):
    mix = RequestMix(bundle_dir, k=10, seed=1, tail_share=0.5)
    bodies = [mix.body() for _ in range(50)]
    index = json.loads((bundle_dir / "features" / "index.json").read_text())
    assert all(len(b["candidates"]) == 10 for b in bodies)
    assert all(c["product_id"] in set(index["products"]) for b in bodies for c in b["candidates"])
    known = sum(b["query"] in set(index["queries"]) for b in bodies)
    assert 0 < known < 50  # some tail queries


def test_latency_counts_queueing_from_the_scheduled_time(bundle_dir):
    """A server that handles one request at a time in 40 ms, offered 50 req/s: a closed-loop
    client would report 40 ms; open loop must show the queue growing behind it."""
    lock = asyncio.Lock()

    async def slow_app(scope, receive, send):
        if scope["type"] != "http":
            return
        while (await receive()).get("more_body"):
            pass
        async with lock:
            await asyncio.sleep(0.04)
        body = b'{"fallback": null}'
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"application/json")]})
        await send({"type": "http.response.body", "body": body})

    rep = asyncio.run(run_open_loop("http://test", 50, 1.0, RequestMix(bundle_dir, 5), timeout_s=10, progress=False,
                                    transport=httpx.ASGITransport(app=slow_app)))
    assert rep["ok"] == 50
    # 50 requests need 2 s of service: the last waits about 1 s past its schedule
    assert rep["latency"]["max_ms"] > 700 and rep["latency"]["p50_ms"] > 200
    assert "p99.9" in markdown(rep)


def test_real_service_under_a_short_load(tmp_path, bundle_dir):
    from service.api.app import create_app
    from service.infra.settings import Settings
    from tests.live_server import live_server

    app = create_app(Settings(redis_url=None, embedded_redis_path=tmp_path / "r.db", bundle=bundle_dir))
    with live_server(app) as url:
        rep = asyncio.run(run_open_loop(url, 25, 2.0, RequestMix(bundle_dir, 10), progress=False))
    assert rep["requests"] == 50 and rep["ok"] + sum(rep["errors"].values()) + sum(
        v for k, v in rep["status"].items() if k != "200") == 50
    assert rep["status"].get("200", 0) > 40 and rep["latency"]["p50_ms"] is not None
    assert set(rep["fallback"]) <= {"none", "timeout"}


def test_sweep_report_finds_saturation_and_plots(tmp_path):
    from loadtest.report import plot_sweep, saturation, sweep_markdown

    def rep(rps, p99, fallbacks=0, errors=0):
        return {"target_rps": rps, "achieved_rps": rps, "requests": 1000, "error_rate": errors / 1000,
                "status": {"200": 1000 - errors, "429": errors}, "errors": {}, "fallback": {"none": 1000 - fallbacks,
                                                                                            "timeout": fallbacks},
                "latency": {"p50_ms": p99 / 3, "p90_ms": p99 / 2, "p99_ms": p99, "p99_9_ms": p99 * 2}}

    reps = [rep(100, 7), rep(200, 9), rep(300, 40, fallbacks=5), rep(400, 90, fallbacks=300)]
    assert saturation(reps) == 300  # 0.5% fallbacks is within the 1% allowance; 30% is not
    assert saturation([rep(100, 150)]) is None
    assert "300 req/s" in sweep_markdown(reps)
    plot_sweep(reps, tmp_path / "s.png")
    assert (tmp_path / "s.png").stat().st_size > 1000


def _rerank_all(url: str, bodies: list[dict]) -> list[dict]:
    import httpx

    with httpx.Client(base_url=url, timeout=10) as c:
        out = []
        for b in bodies:
            r = c.post("/rerank", json=b)
            assert r.status_code == 200, r.text
            out.append(r.json())
        return out, c.get("/info").json()["scorer"]


def test_eager_peer_serves_the_same_ranking_as_the_onnx_student(tmp_path, tiny_pipeline):
    """The PyTorch peer on the service path: same features, same selection, same order as ONNX."""
    from loadtest.peers import make_peer
    from service.api.app import create_app
    from service.infra.settings import Settings
    from tests.live_server import live_server

    mix = RequestMix(tiny_pipeline / "bundle", 10, seed=11)
    bodies = [mix.body() for _ in range(8)]
    results = {}
    for peer in ("student", "eager"):
        settings = Settings(redis_url=None, embedded_redis_path=tmp_path / f"{peer}.db", bundle=tiny_pipeline / "bundle",
                            request_budget_ms=2000)
        with live_server(create_app(settings, scorer=make_peer(peer, tiny_pipeline))) as url:
            results[peer] = _rerank_all(url, bodies)
    (onnx, onnx_name), (eager, eager_name) = results["student"], results["eager"]
    assert onnx_name == "student" and eager_name == "student PyTorch eager"
    for a, b in zip(onnx, eager, strict=True):
        assert a["fallback"] is None and b["fallback"] is None
        sa = {r["product_id"]: r["score"] for r in a["results"]}
        sb = {r["product_id"]: r["score"] for r in b["results"]}
        assert sa.keys() == sb.keys()
        assert max(abs(sa[k] - sb[k]) for k in sa if sa[k] is not None) < 1e-4


def _length_scorer_onnx(path):
    """A stand-in cross-encoder graph: logit = 0.05 * real tokens - 3 (a longer summary ranks higher)."""
    import onnx
    from onnx import TensorProto, helper

    inputs = [helper.make_tensor_value_info(n, TensorProto.INT64, ["b", "t"])
              for n in ("input_ids", "attention_mask", "token_type_ids")]
    out = helper.make_tensor_value_info("score", TensorProto.FLOAT, ["b"])
    nodes = [helper.make_node("Cast", ["attention_mask"], ["m"], to=TensorProto.FLOAT),
             helper.make_node("ReduceSum", ["m", "axes"], ["n"], keepdims=0),
             helper.make_node("Mul", ["n", "scale"], ["s"]),
             helper.make_node("Add", ["s", "shift"], ["score"])]
    init = [helper.make_tensor("axes", TensorProto.INT64, [1], [1]), helper.make_tensor("scale", TensorProto.FLOAT, [], [0.05]),
            helper.make_tensor("shift", TensorProto.FLOAT, [], [-3.0])]
    graph = helper.make_graph(nodes, "len", inputs, [out], initializer=init)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8  # what every onnxruntime since 1.14 reads
    onnx.save(model, str(path))


def test_cross_encoder_peer_fetches_summaries_and_scores_pairs(tmp_path, tiny_pipeline):
    """The seam: the peer asks the store for summaries and scores (query, summary) pairs; a product
    without a summary keeps its place. The graph is a stand-in (unit test of the seam); make bench
    runs the fine-tuned MiniLM through the same class."""
    import json

    import pytest

    from contract.errors import InputError
    from loadtest.peers import CrossEncoderScorer, make_peer
    from service.api.app import create_app
    from service.infra.settings import Settings
    from tests.live_server import live_server
    from training.pretrained import minilm_dir

    with pytest.raises(InputError, match="bench-model"):
        make_peer("cross-encoder", tmp_path)
    with pytest.raises(InputError, match="unknown peer"):
        make_peer("bm25", tiny_pipeline)
    _length_scorer_onnx(tmp_path / "ce.onnx")
    scorer = CrossEncoderScorer(tmp_path / "ce.onnx", Path(minilm_dir()) / "tokenizer.json", max_tokens=512)
    feats = tiny_pipeline / "bundle" / "features"
    summaries = {json.loads(line)["product_id"]: json.loads(line)["summary"]
                 for line in (feats / "summaries.jsonl").read_text().splitlines()}
    body = RequestMix(tiny_pipeline / "bundle", 10, seed=2).body()
    body["candidates"].insert(3, {"product_id": "NOT-IN-CATALOG", "score": 0.5})
    settings = Settings(redis_url=None, embedded_redis_path=tmp_path / "ce.db", bundle=tiny_pipeline / "bundle",
                        request_budget_ms=2000)
    with live_server(create_app(settings, scorer=scorer)) as url:
        (resp,), name = _rerank_all(url, [body])
    assert name == "MiniLM-L6 int8 cross-encoder" and resp["fallback"] is None
    assert resp["results"][3]["product_id"] == "NOT-IN-CATALOG" and resp["results"][3]["missing_features"]
    ranked = [r for r in resp["results"] if not r["missing_features"]]
    tok = scorer.tokenizer
    lengths = [sum(tok.encode(body["query"], summaries[r["product_id"]]).attention_mask) for r in ranked]
    assert lengths == sorted(lengths, reverse=True) and len(set(lengths)) > 1
    for r, n in zip(ranked, lengths, strict=True):
        assert r["score"] == pytest.approx(1 / (1 + math.exp(-(0.05 * n - 3))), abs=1e-5)
    assert resp["timings_ms"]["tokenize"] >= 0 and "inference" in resp["timings_ms"]


def test_side_by_side_report_gives_ratios_at_shared_rates(tmp_path):
    from loadtest.report import peers_markdown, plot_peers

    def rep(scorer, rps, p50):
        return {"scorer": scorer, "target_rps": rps, "achieved_rps": rps, "requests": 100, "error_rate": 0.0,
                "status": {"200": 100}, "errors": {}, "fallback": {"none": 100},
                "latency": {"p50_ms": p50, "p90_ms": p50 * 1.5, "p99_ms": p50 * 2, "p99_9_ms": p50 * 3}}

    reps = [rep("student", 10, 4.0), rep("student", 50, 4.4), rep("MiniLM-L6 int8 cross-encoder", 10, 40.0),
            rep("MiniLM-L6 int8 cross-encoder", 50, 400.0)]
    md = peers_markdown(reps)
    assert "10 rps: 10.0x" in md and "50 rps: 90.9x" in md
    assert "| MiniLM-L6 int8 cross-encoder | 10 req/s |" in md  # p99 800 ms at 50 rps is past saturation
    plot_peers(reps, tmp_path / "p.png")
    assert (tmp_path / "p.png").stat().st_size > 1000


def test_server_histogram_quantiles_follow_prometheus_interpolation():
    from loadtest.openloop import histogram_quantile, parse_buckets

    text = "\n".join([
        "# TYPE hmpps_rerank_request_seconds histogram",
        'hmpps_rerank_request_seconds_bucket{arm="a",le="0.001"} 0.0',
        'hmpps_rerank_request_seconds_bucket{arm="a",le="0.002"} 50.0',
        'hmpps_rerank_request_seconds_bucket{arm="a",le="0.004"} 90.0',
        'hmpps_rerank_request_seconds_bucket{arm="a",le="+Inf"} 100.0',
        'hmpps_rerank_request_seconds_bucket{arm="b",le="0.001"} 0.0',
        'hmpps_rerank_request_seconds_bucket{arm="b",le="0.002"} 50.0',
        'hmpps_rerank_request_seconds_bucket{arm="b",le="0.004"} 90.0',
        'hmpps_rerank_request_seconds_bucket{arm="b",le="+Inf"} 100.0',
        'hmpps_rerank_request_seconds_count{arm="a"} 100.0'])
    after = parse_buckets(text)
    assert after == {0.001: 0.0, 0.002: 100.0, 0.004: 180.0, float("inf"): 200.0}
    before = {0.001: 0.0, 0.002: 0.0, 0.004: 0.0, float("inf"): 0.0}
    assert histogram_quantile(0.5, before, after) == pytest.approx(0.002)  # rank 100 ends the 2 ms bucket
    assert histogram_quantile(0.25, before, after) == pytest.approx(0.0015)  # halfway through 1..2 ms
    assert histogram_quantile(0.99, before, after) == pytest.approx(0.004)  # +Inf bucket: the last finite bound
    assert histogram_quantile(0.5, after, after) is None  # nothing happened in between
