"""MAPS (paper 002) as a first-stage ranker: MoAE pooling, Eq. 2 pairs, consultations, the sampled protocol."""

import json
from collections import Counter

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from hmpps.cli import app
from training.dataset import load_dataset
from training.first_stage.base import Catalog
from training.first_stage.maps import MapsConfig, MapsRanker, MoAE
from training.first_stage.run import sample_negatives
from training.text import content_terms

runner = CliRunner()


def _pool_inputs(n=3, L=7, d=16):
    torch.manual_seed(0)
    x = torch.randn(n, L, d)
    mask = torch.ones(n, L, dtype=torch.bool)
    mask[0, 4:] = False  # a padded text
    return x, mask


def test_moae_expert_weights_are_distributions_over_real_tokens():
    x, mask = _pool_inputs()
    pool = MoAE(16, n=2, top_k=2)
    w = pool.weights(x, mask, ctx=torch.randn(3, 16))
    assert w.shape == (3, 6, 7)
    assert torch.allclose(w.sum(-1), torch.ones(3, 6), atol=1e-5), "each expert's weights sum to 1"
    assert float(w[0, :, 4:].abs().max().detach()) < 1e-6, "padding gets no weight"
    no_ctx = pool.weights(x, mask, ctx=None)
    assert float(no_ctx[:, 4:].abs().max().detach()) == 0.0, "search-centred experts are off without a query"


def test_moae_output_is_the_gated_top_k_mixture():
    x, mask = _pool_inputs()
    pool = MoAE(16, n=2, top_k=2)
    with torch.no_grad():
        pool.gate.weight.zero_()
        pool.gate.bias.copy_(torch.tensor([5.0, 0.0, 3.0, 0.0, 9.0, 0.0]))  # a cross expert would win...
        out = pool(x, mask, ctx=None)  # ...but without a search context it is never chosen
        w = pool.weights(x, mask, None)
        pooled = torch.einsum("nel,nld->ned", w, x)
        g = torch.softmax(torch.tensor([5.0, 3.0]), 0)
        manual = g[0] * pooled[:, 0] + g[1] * pooled[:, 2]
    assert torch.allclose(out, manual, atol=1e-5)
    with torch.no_grad():
        with_ctx = pool(x, mask, ctx=torch.randn(3, 16))
        pooled_c = torch.einsum("nel,nld->ned", pool.weights(x, mask, torch.randn(3, 16)), x)
    assert not torch.allclose(with_ctx, manual, atol=1e-4), "with a query the top cross expert takes part"
    assert pooled_c.shape == (3, 6, 16)


def test_consultations_precede_purchases_and_leave_the_data_unchanged(synthetic_dir, tmp_path):
    from training.synthetic import SyntheticConfig, generate

    ds = load_dataset(synthetic_dir)
    chats = ds.consultations()
    assert sum(len(c) for c in chats.values()) > 100
    first = next(iter(chats.values()))
    assert [c["timestamp"] for c in first] == sorted(c["timestamp"] for c in first)
    assert all("looking for" in c["text"] for c in first)
    generate(SyntheticConfig(users=60, products=50, seed=7), tmp_path / "with")
    generate(SyntheticConfig(users=60, products=50, seed=7, consultation_rate=0.0), tmp_path / "none")
    quiet = load_dataset(tmp_path / "none")
    assert load_dataset(tmp_path / "with").consultations()
    assert quiet.fingerprint == load_dataset(tmp_path / "with").fingerprint, "consultations use their own random stream"
    assert quiet.consultations() == {}


def test_alignment_pairs_respect_the_frequency_threshold(synthetic_dir):
    ds = load_dataset(synthetic_dir)
    train = ds.queries("train")
    chats = ds.consultations()
    freq = Counter(t for text in [r["query"] for r in train] + [c["text"] for cs in chats.values() for c in cs]
                   for t in content_terms(text))
    sizes = {}
    for gamma in (0, 3, 10**6):
        ranker = MapsRanker(Catalog.build(ds), MapsConfig(gamma=gamma))
        words, pairs = ranker._alignment_pairs(ds, train, chats)
        assert all(freq[w] >= gamma for w in words)
        assert pairs.shape[1] == 2 and (len(pairs) == 0 or pairs[:, 0].max() < len(words))
        sizes[gamma] = len(pairs)
    assert sizes[0] > sizes[3] > 0 and sizes[10**6] == 0, "noise words (numbers, CSS) drop out; no word is that frequent"


def test_sampled_negatives_are_distinct_and_never_the_target():
    rng = np.random.default_rng(0)
    for target in (0, 5, 149):
        neg = sample_negatives(rng, 150, target, 99)
        assert len(set(neg.tolist())) == 99 and target not in neg and neg.max() < 150
    assert len(sample_negatives(rng, 50, 3, 99)) == 49, "a small catalogue gives every other product"


@pytest.fixture(scope="module")
def maps_run(synthetic_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("maps")
    for model, extra in (("pop", []), ("maps", ["--epochs", "4", "--set", "item_tokens=32"])):
        res = runner.invoke(app, ["retrieve", "--data", str(synthetic_dir), "--model", model, "--out", str(root / model), *extra,
                                  "--holdout-folds", "0"])
        assert res.exit_code == 0, res.output
    return root


def test_maps_retrieval_end_to_end(maps_run, synthetic_dir):
    m = json.loads((maps_run / "maps" / "metrics.json").read_text())
    pop = json.loads((maps_run / "pop" / "metrics.json").read_text())
    assert m["NDCG@4"] > 2 * pop["NDCG@4"]
    info = json.loads((maps_run / "maps" / "retrieve.json").read_text())
    log = info["train_log"]
    assert log["consultations"] > 100 and log["alignment"]["pairs"] > 0
    assert info["config"]["item_tokens"] == 32, "--set reaches the config"
    ckpt = torch.load(maps_run / "maps" / "model.pt", weights_only=False)
    assert ckpt["config"] == info["config"] and "pool.gate.weight" in ckpt["state_dict"]
    lines = (maps_run / "maps" / "candidates.jsonl").read_text().splitlines()
    assert len(lines) == len(load_dataset(synthetic_dir).queries())


def test_sampled_protocol_is_written_for_every_model(maps_run):
    maps = json.loads((maps_run / "maps" / "sampled_metrics.json").read_text())
    pop = json.loads((maps_run / "pop" / "sampled_metrics.json").read_text())
    assert maps["n"] == pop["n"] > 100 and maps["negatives"] == 99
    assert 0 <= maps["NDCG@5"] <= maps["NDCG@10"] <= maps["NDCG@20"] <= 1
    assert maps["HR@5"] <= maps["HR@10"] <= maps["HR@20"]
    assert maps["NDCG@10"] > pop["NDCG@10"]
    assert "MAPS protocol" in (maps_run / "maps" / "report.md").read_text()


def test_unknown_config_key_is_named(synthetic_dir, tmp_path):
    res = runner.invoke(app, ["retrieve", "--data", str(synthetic_dir), "--model", "maps", "--out", str(tmp_path / "x"),
                              "--set", "experts=3"])
    assert res.exit_code != 0 and "experts" in res.output
    assert not (tmp_path / "x").exists()
