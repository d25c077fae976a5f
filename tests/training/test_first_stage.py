"""Synthetic data through every first-stage model, end to end through the CLI."""

import json

import pytest
from typer.testing import CliRunner

from hmpps.cli import app
from training.dataset import load_dataset

runner = CliRunner()


@pytest.fixture(scope="module")
def runs(synthetic_dir, tmp_path_factory):
    out = {}
    root = tmp_path_factory.mktemp("retrieve")
    for model in ("pop", "bm25", "hem", "zam", "qem", "seq"):
        res = runner.invoke(app, ["retrieve", "--data", str(synthetic_dir), "--model", model, "--out", str(root / model), "--epochs", "15",
                                   "--holdout-folds", "0"])
        assert res.exit_code == 0, res.output
        out[model] = root / model
    # the sequence model with the papers' negative sampling instead of its own sampled softmax
    res = runner.invoke(app, ["retrieve", "--data", str(synthetic_dir), "--model", "seq", "--out", str(root / "seq_nsl"),
                              "--epochs", "15", "--holdout-folds", "0", "--set", "item_loss=nsl"])
    assert res.exit_code == 0, res.output
    out["seq_nsl"] = root / "seq_nsl"
    return out


def test_candidates_contract(runs, synthetic_dir):
    ds = load_dataset(synthetic_dir)
    lines = [json.loads(x) for x in (runs["hem"] / "candidates.jsonl").read_text().splitlines()]
    assert len(lines) == len(ds.queries())
    assert {line["split"] for line in lines} == {"train", "test"}
    for line in lines[:50]:
        assert set(line) == {"query_id", "user_id", "query", "split", "target", "candidates", "fit"}
        # test queries were never fitted; most train queries were (the rest validated the fit)
        assert not line["fit"] or line["split"] == "train"
        assert len(line["candidates"]) == 10
        scores = [c["score"] for c in line["candidates"]]
        assert scores == sorted(scores, reverse=True), "best first"
        assert all(c["product_id"] in ds.products for c in line["candidates"])


def test_metrics_json_keys_and_learned_models_beat_popularity(runs):
    m = {k: json.loads((v / "metrics.json").read_text()) for k, v in runs.items()}
    for metrics in m.values():
        assert set(metrics) == {"MRR@8", "NDCG@4", "Recall@4", "Recall@1", "n"}
        assert metrics["n"] > 100
    assert m["hem"]["NDCG@4"] > m["pop"]["NDCG@4"]
    assert m["zam"]["NDCG@4"] > m["pop"]["NDCG@4"]
    assert m["qem"]["NDCG@4"] > m["pop"]["NDCG@4"]
    assert m["seq"]["NDCG@4"] > m["pop"]["NDCG@4"]
    assert m["seq_nsl"]["NDCG@4"] > m["pop"]["NDCG@4"]
    assert json.loads((runs["seq_nsl"] / "retrieve.json").read_text())["config"]["item_loss"] == "nsl"
    # left unset, each model trains with its own purchase term: SEQ softmax, the papers' models nsl
    assert json.loads((runs["seq"] / "retrieve.json").read_text())["config"]["item_loss"] == "softmax"
    assert json.loads((runs["hem"] / "retrieve.json").read_text())["config"]["item_loss"] == "nsl"
    sampled = {k: json.loads((v / "sampled_metrics.json").read_text()) for k, v in runs.items()}
    assert len({s["n"] for s in sampled.values()}) == 1, "every model is scored on the same test queries"
    assert sampled["hem"]["NDCG@10"] > sampled["pop"]["NDCG@10"]


def test_provenance_checkpoint_and_report(runs, synthetic_dir):
    info = json.loads((runs["zam"] / "retrieve.json").read_text())
    assert info["dataset_fingerprint"] == load_dataset(synthetic_dir).fingerprint
    assert info["config"]["dim"] == 64 and info["train_log"]["best_epoch"] >= 1
    import torch

    ckpt = torch.load(runs["zam"] / "model.pt", weights_only=False)
    assert ckpt["config"] == info["config"], "the config is saved inside the checkpoint"
    report = (runs["zam"] / "report.md").read_text()
    assert "| zam |" in report and (runs["zam"] / "training.png").stat().st_size > 1000


def test_bad_arguments_are_named(synthetic_dir, tmp_path):
    res = runner.invoke(app, ["retrieve", "--data", str(synthetic_dir), "--model", "bert", "--out", str(tmp_path / "x")])
    assert res.exit_code == 2 and "bert" in res.output and "hem" in res.output
    res = runner.invoke(app, ["retrieve", "--data", str(tmp_path / "missing"), "--model", "pop", "--out", str(tmp_path / "x")])
    assert res.exit_code == 2 and "dataset directory not found" in res.output
    cfg = tmp_path / "c.yaml"
    cfg.write_text("dimm: 3\n")
    res = runner.invoke(app, ["retrieve", "--data", str(synthetic_dir), "--model", "hem", "--out", str(tmp_path / "x"), "--config", str(cfg),
                               "--holdout-folds", "0"])
    assert res.exit_code == 2 and "dimm" in res.output
    res = runner.invoke(app, ["retrieve", "--data", str(synthetic_dir), "--model", "seq", "--out", str(tmp_path / "x"),
                               "--set", "item_loss=bpr", "--holdout-folds", "0"])
    assert res.exit_code == 2 and "item_loss='bpr'" in res.output and "softmax" in res.output
    assert not (tmp_path / "x").exists()


def test_seeded_runs_are_reproducible(synthetic_dir, tmp_path):
    a = runner.invoke(app, ["retrieve", "--data", str(synthetic_dir), "--model", "hem", "--out", str(tmp_path / "a"), "--epochs", "2",
                            "--holdout-folds", "2"])
    b = runner.invoke(app, ["retrieve", "--data", str(synthetic_dir), "--model", "hem", "--out", str(tmp_path / "b"), "--epochs", "2",
                            "--holdout-folds", "2"])
    assert a.exit_code == b.exit_code == 0
    assert (tmp_path / "a" / "candidates.jsonl").read_text() == (tmp_path / "b" / "candidates.jsonl").read_text()
    assert (tmp_path / "a" / "holdout.jsonl").read_text() == (tmp_path / "b" / "holdout.jsonl").read_text()


def test_holdout_ranks_every_train_query_with_a_model_that_never_saw_it(synthetic_dir, tmp_path):
    res = runner.invoke(app, ["retrieve", "--data", str(synthetic_dir), "--model", "hem", "--out", str(tmp_path / "h"),
                              "--epochs", "2", "--holdout-folds", "2"])
    assert res.exit_code == 0, res.output
    ds = load_dataset(synthetic_dir)
    lines = [json.loads(x) for x in (tmp_path / "h" / "holdout.jsonl").read_text().splitlines()]
    assert sorted(x["query_id"] for x in lines) == sorted(r["query_id"] for r in ds.queries("train"))
    assert all(not x["fit"] and x["fold"] in (0, 1) and len(x["candidates"]) == 10 for x in lines)
    assert {x["fold"] for x in lines} == {0, 1}
    bad = runner.invoke(app, ["retrieve", "--data", str(synthetic_dir), "--model", "hem", "--out", str(tmp_path / "x"),
                              "--holdout-folds", "1"])
    assert bad.exit_code != 0 and "holdout_folds=1" in bad.output and not (tmp_path / "x").exists()


def test_a_holdout_sample_fits_only_the_folds_it_reaches(synthetic_dir, tmp_path):
    """--holdout-queries N lists N seeded train queries, taken fold by fold, so a sample smaller than a fold
    needs one shadow fit instead of one per fold; its lines are those the full run gives that fold."""
    import numpy as np

    from training.first_stage.run import fold_of, holdout_sample

    ds = load_dataset(synthetic_dir)
    train = ds.queries("train")
    n = len(train) // 5  # well under a third: inside fold 0 of 3
    res = runner.invoke(app, ["retrieve", "--data", str(synthetic_dir), "--model", "hem", "--out", str(tmp_path / "s"),
                              "--epochs", "2", "--holdout-folds", "3", "--holdout-queries", str(n)])
    assert res.exit_code == 0, res.output
    lines = [json.loads(x) for x in (tmp_path / "s" / "holdout.jsonl").read_text().splitlines()]
    assert len(lines) == n and {x["fold"] for x in lines} == {0}
    info = json.loads((tmp_path / "s" / "retrieve.json").read_text())["holdout"]
    assert info["folds_fitted"] == 1 and info["of_train_queries"] == len(train) and info["queries"] == n
    # the listed queries are fold 0's (its model never fitted them), and a sample covering the data lists them all
    where = fold_of(train, 3, 0)
    mask = holdout_sample(where, n, 0)
    assert mask.sum() == n and set(where[mask]) == {0}
    assert {x["query_id"] for x in lines} == {r["query_id"] for r, m in zip(train, mask, strict=True) if m}
    assert holdout_sample(where, 0, 0).all() and holdout_sample(where, len(train), 0).all()
    big = holdout_sample(where, int((where == 0).sum()) + 5, 0)
    assert set(where[big]) == {0, 1} and big[where == 0].all()
    assert not np.array_equal(holdout_sample(where, n, 1), mask), "another seed, another sample"


def test_the_sequence_model_reads_order_and_recency():
    """SEQ's user vector depends on the order of the same purchases (recency embeddings), ignores padding,
    and a user with no history still gets the query token's output."""
    import torch

    from training.first_stage.neural import NeuralConfig, PersonalizedModel

    torch.manual_seed(0)
    cfg = NeuralConfig(dim=16, history_len=4, seq_dropout=0.0)
    model = PersonalizedModel("seq", 3, 10, 20, cfg).eval()
    q = torch.randn(1, 16)
    pad = 10
    a = model.user_vec(torch.tensor([0]), q, torch.tensor([[1, 2, 3, pad]]))
    b = model.user_vec(torch.tensor([0]), q, torch.tensor([[3, 2, 1, pad]]))
    assert not torch.allclose(a, b), "the same items in another order give another vector"
    # padding is masked: changing the padding row's embedding changes nothing
    with torch.no_grad():
        model.items.weight[pad] += 5.0
    assert torch.allclose(a, model.user_vec(torch.tensor([0]), q, torch.tensor([[1, 2, 3, pad]])), atol=1e-6)
    empty = model.user_vec(torch.tensor([0]), q, torch.tensor([[pad] * 4]))
    assert torch.isfinite(empty).all()


def test_a_rank_takes_the_cores_of_ranks_that_finished_their_jobs(tmp_path, monkeypatch):
    """Under run_jobs each rank starts on its share of the machine's cores; once another rank of the same
    machine has marked itself idle, ``take_idle_cores`` (called before each chunk of scoring) widens this
    rank's torch threads to the cores no one else is using. Outside run_jobs it changes nothing."""
    import socket

    import torch

    import training.first_stage.jobs as run

    monkeypatch.setattr(run.os, "cpu_count", lambda: 8)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(3)
        run.take_idle_cores()  # not under run_jobs
        assert torch.get_num_threads() == 3
        monkeypatch.setattr(run, "_IDLE", (tmp_path, 4))
        run.take_idle_cores()
        assert torch.get_num_threads() == 2  # 8 cores over 4 working ranks
        (tmp_path / f"idle-{socket.gethostname()}-1").touch()
        (tmp_path / "idle-some-other-machine-2").touch()  # another machine's idle rank frees none of these cores
        run.take_idle_cores()
        assert torch.get_num_threads() == 2  # 8 // 3
        (tmp_path / f"idle-{socket.gethostname()}-3").touch()
        run.take_idle_cores()
        assert torch.get_num_threads() == 4
    finally:
        torch.set_num_threads(threads)


def test_a_first_stage_rebuilt_from_its_state_ranks_as_the_fitted_one(runs, synthetic_dir):
    """Under several processes each rank scores its query shard with a model rebuilt from the fitted one's
    state (``NeuralRanker.from_state``): for every such kind, the rebuilt model's top 10 from the saved
    ``model.pt`` are the lists ``candidates.jsonl`` holds, and another catalogue's state is refused."""
    import numpy as np
    import torch

    from training.first_stage.base import Catalog
    from training.first_stage.neural import NeuralRanker
    from training.first_stage.run import SHARDED, rank_first_stage

    ds = load_dataset(synthetic_dir)
    catalog = Catalog.build(ds)
    queries = ds.queries()
    for kind in SHARDED:
        state = torch.load(runs[kind] / "model.pt", weights_only=False)
        ranker = NeuralRanker.from_state(state, catalog, ds)
        picked = np.arange(0, len(queries), 7)
        got = rank_first_stage(ranker, catalog, queries, picked, 10)
        lines = [json.loads(x) for x in (runs[kind] / "candidates.jsonl").read_text().splitlines()]
        for i, row in zip(picked, got["idx"], strict=True):
            assert [catalog.ids[j] for j in row] == [c["product_id"] for c in lines[i]["candidates"]], (kind, i)
    state["users"] = dict(list(state["users"].items())[1:])
    with pytest.raises(ValueError, match="another catalogue"):
        NeuralRanker.from_state(state, catalog, ds)
