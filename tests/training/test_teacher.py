"""The HMPPS teacher on a tiny randomly initialised LM (no downloads)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from hmpps.cli import app
from training.dataset import load_dataset
from training.teacher.build import build_backbone
from training.teacher.config import load_teacher_config
from training.teacher.prompt import ImageSlot, PromptBuilder

runner = CliRunner()


@pytest.fixture(scope="module")
def cfg():
    return load_teacher_config("tiny", overrides={"lora_r": 4, "max_prompt_tokens": 400})


@pytest.fixture(scope="module")
def backbone(cfg):
    return build_backbone(cfg)


@pytest.fixture(scope="module")
def ds(synthetic_dir):
    return load_dataset(synthetic_dir)


def _item(ds, pid):
    return ds.products[pid], str(ds.image_path(pid))


def _prompts(ds, backbone, n=4, history=3, query="clothing tops hoodies"):
    pids = sorted(ds.products)
    builder = backbone.prompt_builder()
    hist = [_item(ds, p) for p in pids[:history]]
    return builder.build_group(hist, query, [_item(ds, p) for p in pids[history: history + n]])


def test_yes_no_score_is_the_softmax_of_the_two_logits(ds, backbone):
    prompts = _prompts(ds, backbone)
    probs, margins = backbone.score(prompts)
    with torch.no_grad():
        logits = backbone([p.segments for p in prompts])
    s_yes, s_no = logits[:, backbone.yes_id], logits[:, backbone.no_id]
    manual = torch.exp(s_yes) / (torch.exp(s_yes) + torch.exp(s_no))
    assert torch.allclose(probs, manual, atol=1e-6)
    assert torch.allclose(margins, s_yes - s_no, atol=1e-5)


def test_shared_prefix_kv_cache_gives_the_same_scores_as_full_prompts(ds, backbone):
    prompts = _prompts(ds, backbone, n=5)
    assert len({tuple(p.prefix) for p in prompts}) == 1
    shared, _ = backbone.score(prompts)
    one_by_one = torch.cat([backbone.score([p])[0] for p in prompts])
    assert torch.allclose(shared, one_by_one, atol=1e-5)


def _mixed_histories(ds, backbone):
    """Prompts as stage 2 builds them: one query, candidates with different selected histories (two
    share one), so the prefix tree has a stem, distinct rests and a rest shared by two candidates."""
    pids = sorted(ds.products)
    builder = backbone.prompt_builder()
    hists = [pids[0:2], pids[2:4], pids[0:2], pids[1:3]]
    return [builder.build([_item(ds, h) for h in hist], "clothing tops hoodies", _item(ds, pids[10 + i]))
            for i, hist in enumerate(hists)]


@pytest.mark.parametrize("case", ["shared history", "per-candidate histories"])
def test_training_through_the_prefix_tree_gives_the_plain_loss_and_gradients(ds, cfg, case):
    bb = build_backbone(cfg)
    torch.manual_seed(0)
    with torch.no_grad():  # LoRA B starts at zero, which would hide the adapters' A gradients
        for n, p in bb.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.05)
    bb.eval()  # no dropout, so both paths see the same network
    prompts = _prompts(ds, bb, n=5) if case == "shared history" else _mixed_histories(ds, bb)
    target = torch.tensor([0] + [1] * (len(prompts) - 1))
    trainable = [(n, p) for n, p in bb.named_parameters() if p.requires_grad]

    def loss_and_grads(logits):
        loss = torch.nn.functional.cross_entropy(logits[:, [bb.yes_id, bb.no_id]], target)
        grads = torch.autograd.grad(loss, [p for _, p in trainable], allow_unused=True)
        return loss.detach(), grads

    # the reference: every whole prompt on its own (one prompt has nothing to share)
    plain_loss, plain = loss_and_grads(torch.cat([bb.prompt_logits([p]) for p in prompts]))
    shared_loss, shared = loss_and_grads(bb.prompt_logits(prompts))
    assert torch.allclose(plain_loss, shared_loss, atol=1e-5)
    checked = 0
    for (name, _), a, b in zip(trainable, plain, shared, strict=True):
        if a is None:
            assert b is None, name
            continue
        assert torch.allclose(a, b, atol=1e-5, rtol=1e-3), name
        checked += int(a.abs().sum() > 0)
    # the history's image tokens only reach the loss through the cached prefix
    assert checked > 10 and any(n.startswith("vision.") for n, _ in trainable)


def _decoder_passes(backbone, run):
    """(batch, tokens) of each pass through the LM's decoder that ``run()`` makes."""
    seen = []
    hook = backbone._decoder().register_forward_pre_hook(
        lambda m, a, kw: seen.append(tuple(kw["inputs_embeds"].shape[:2])), with_kwargs=True)
    try:
        run()
    finally:
        hook.remove()
    return seen


def test_the_prefix_tree_computes_shared_tokens_once(ds, backbone):
    prompts = _mixed_histories(ds, backbone)
    with torch.no_grad():
        seen = _decoder_passes(backbone, lambda: backbone.prompt_logits(prompts))
    assert len(seen) == 3, "stem, distinct history rests, suffixes"
    assert seen[0][0] == 1 and seen[1][0] == 3 and seen[2][0] == 4, seen
    whole = sum(backbone.count_tokens(p.segments) for p in prompts)
    assert sum(b * w for b, w in seen) < whole, "fewer token positions than the prompts one by one"


def test_a_held_header_is_computed_once_and_gives_the_same_scores(ds, backbone):
    """held_header (scoring): the instruction every prompt starts with is computed once on entering, and
    each query's stem pass then holds only the tokens after it; the scores equal those computed whole."""
    groups = [_prompts(ds, backbone, n=3, history=h, query=q) for h, q in ((2, "clothing tops"), (3, "shoes"))]
    plain = [backbone.score(g)[0] for g in groups]
    held = []

    def score_held():
        with backbone.held_header():
            held.extend(backbone.score(g)[0] for g in groups)

    seen = _decoder_passes(backbone, score_held)
    n_held = len(backbone.ids(backbone.prompt_builder().history_start())) - 1
    assert n_held > 10 and backbone._held is None, "held for the context only"
    assert seen[0] == (1, n_held), "the header once, on entering"
    for g, stem in zip(groups, (seen[1], seen[3]), strict=True):  # per group: stem, suffixes
        stem_whole = backbone._common([backbone._tokenize(p.prefix) for p in g])
        assert stem == (1, stem_whole - n_held), "each stem pass holds only what follows the header"
    for a, b in zip(plain, held, strict=True):
        assert torch.allclose(a, b, atol=1e-5)


def test_training_groups_keep_their_order(ds, backbone):
    from training.teacher.trainer import decision_logits

    a = _prompts(ds, backbone, n=3, history=3)
    b = _prompts(ds, backbone, n=2, history=2)  # another history: another prefix
    mixed = [a[0], b[0], a[1], b[1], a[2]]
    with torch.no_grad():
        grouped = decision_logits(backbone, mixed)
        plain = torch.cat([backbone.prompt_logits([p]) for p in mixed])
    assert torch.allclose(grouped, plain, atol=1e-4)


def test_loaded_teacher_models_have_hub_kernels_off_whatever_the_environment_says(monkeypatch, tmp_path):
    """transformers 5.x turns hub kernels on by default, and model.train() on CUDA then fetches them."""
    from training.teacher.tiny_vlm import build_tiny_idefics3

    monkeypatch.setenv("USE_HUB_KERNELS", "1")
    composed = build_backbone(load_teacher_config("tiny"))
    assert composed.lm.get_base_model().use_kernels is False
    vlm_dir = build_tiny_idefics3(tmp_path / "vlm")
    monkeypatch.setenv("USE_HUB_KERNELS", "1")
    vlm = build_backbone(load_teacher_config("gpu", overrides={"lm": str(vlm_dir), "lora_r": 4}))
    assert vlm.lm.get_base_model().use_kernels is False
    vlm.train()  # where kernelization would start
    assert vlm.lm.get_base_model().use_kernels is False


def test_hub_free_turns_kernels_off_on_a_model_that_has_them():
    from training.pretrained import hub_free

    class Flagged:
        use_kernels = True

    model = Flagged()
    assert hub_free(model).use_kernels is False


def test_images_are_spliced_into_the_input_embeddings(ds, backbone, cfg):
    prompt = _prompts(ds, backbone, n=1)[0]
    slots = [s for s in prompt.segments if isinstance(s, ImageSlot)]
    assert len(slots) == 4, "3 history items and the candidate each carry an image"
    enc = backbone.encode([prompt.segments])
    assert enc["inputs_embeds"].shape[1] == backbone.count_tokens(prompt.segments)
    other = sorted(ds.products)[-1]
    swapped = [ImageSlot(str(ds.image_path(other))) if s == slots[-1] else s for s in prompt.segments]
    with torch.no_grad():
        a, b = backbone([prompt.segments]), backbone([swapped])
    assert not torch.allclose(a, b), "changing only the candidate's image changes the decision logits"


def test_products_without_image_or_metadata_render(backbone):
    builder = backbone.prompt_builder()
    bare = {"product_id": "X1", "title": "X1", "brand": "", "category": [], "description": ""}
    p = builder.build([(bare, None)], "magazine", (bare, None))
    text = "".join(s for s in p.segments if isinstance(s, str))
    assert "Brand: unknown" in text and "Image: none" in text and "Category: unknown" in text
    assert not any(isinstance(s, ImageSlot) for s in p.segments)


def test_the_compact_prompt_asks_once_in_the_shared_prefix_and_drops_empty_fields(ds):
    """compact_prompt: the question moves into the prefix the candidates share, each suffix is the candidate
    and the answer cue alone, empty description and image fields are left out; the same products, ids,
    ranks and query are shown, in fewer tokens; the shared-prefix scores still equal whole prompts'."""
    pids = sorted(ds.products)
    bare = {"product_id": "X1", "title": "Bare thing", "brand": "Acme", "category": ["A", "B"], "description": ""}
    texts = {}
    for compact in (False, True):
        cfg = load_teacher_config("tiny", overrides={"compact_prompt": compact, "description_words": 0})
        bb = build_backbone(cfg)
        builder = bb.prompt_builder()
        hist = [(ds.products[p], None) for p in pids[:2]]
        group = builder.build_group(hist, "office boxes", [(bare, None, 1), (ds.products[pids[5]], None, 2)])
        assert len({tuple(p.prefix) for p in group}) == 1
        prefix = "".join(s for s in group[0].prefix if isinstance(s, str))
        suffix = "".join(s for s in group[0].suffix if isinstance(s, str))
        texts[compact] = (prefix, suffix, group[0].meta["tokens"])
        if compact:
            shared, _ = bb.score(group)
            whole = torch.cat([bb.score([p])[0] for p in group])
            assert torch.allclose(shared, whole, atol=1e-5)
    (p0, s0, n0), (p1, s1, n1) = texts[False], texts[True]
    assert "Will the user purchase" in s0 and "Will the user purchase" not in s1
    assert "Search query: office boxes\nWill the user purchase the candidate product below?" in p1
    assert "Description: none" in s0 + p0 and "Image: none" in s0 + p0
    assert "Description:" not in s1 + p1 and "Image:" not in s1 + p1
    for shown in ("ID: X1; Search rank: 1; Title: Bare thing; Brand: Acme; Category: A > B", "office boxes",
                  ds.products[pids[0]]["title"][:20]):
        assert shown in s1 + p1
    assert n1 < n0


def test_bought_before_marks_candidates_from_the_users_whole_history(ds):
    """bought_before: a candidate the user bought before the query says "Bought before: yes", any other
    "no", read from the whole history even where the prompt shows only part of it; off, neither appears."""
    from training.teacher.examples import ExampleFactory

    row = next(r for r in ds.queries() if len(ds.history(r)) >= 4)
    history = ds.history(row)
    owned, fresh = history[0], next(p for p in sorted(ds.products) if p not in set(history) | {row["product_id"]})
    texts = {}
    for flag in (False, True):
        cfg = load_teacher_config("tiny", overrides={"bought_before": flag, "k_s1": 1, "first_stage_rank": True})
        factory = ExampleFactory(ds, cfg, build_backbone(cfg).prompt_builder())
        prompts = factory.prompts(row, [owned, fresh], "latest", np.random.default_rng(0))
        shown = "".join(s for s in prompts[0].prefix if isinstance(s, str))
        assert f"ID: {owned};" not in shown, "the owned candidate is not among the history items shown"
        texts[flag] = ["".join(s for s in p.suffix if isinstance(s, str)) for p in prompts]
    assert f"ID: {owned}; Search rank: 1; Bought before: yes; Title:" in texts[True][0]
    assert f"ID: {fresh}; Search rank: 2; Bought before: no; Title:" in texts[True][1]
    assert not any("Bought before" in t for t in texts[False])


def test_budget_trims_descriptions_before_history_and_never_cuts_the_candidate(ds, backbone):
    pids = sorted(ds.products)
    hist = [_item(ds, p) for p in pids[:5]]
    cand = _item(ds, pids[10])
    full = PromptBuilder(backbone.count_tokens, 10_000, 40).build(hist, "q", cand)
    n_full = full.meta["tokens"]
    mid = PromptBuilder(backbone.count_tokens, n_full - 40, 40).build(hist, "q", cand)
    assert mid.meta["history"] == 5 and mid.meta["history_words"] < 40, "descriptions go first"
    tight = PromptBuilder(backbone.count_tokens, 150, 40).build(hist, "q", cand)
    assert tight.meta["history"] < 5 and tight.meta["history_words"] == 0
    assert tight.meta["tokens"] <= 150
    text = "".join(s for s in tight.suffix if isinstance(s, str))
    assert cand[0]["product_id"] in text and cand[0]["title"] in text
    assert any(isinstance(s, ImageSlot) and s.path == cand[1] for s in tight.suffix)


def test_lora_keeps_the_base_frozen_and_moves_adapters_vision_and_projector(ds, cfg, synthetic_dir, tmp_path):
    from training.candidates import load_first_stage
    from training.first_stage.run import run_retrieval
    from training.teacher.examples import ExampleFactory
    from training.teacher.run import train_stage

    run_retrieval(synthetic_dir, "bm25", tmp_path / "fs")
    fs = load_first_stage(tmp_path / "fs", ds)
    bb = build_backbone(cfg)
    names = {n for n, p in bb.named_parameters() if p.requires_grad}
    assert any("lora_A" in n for n in names) and any(n.startswith("vision.") for n in names)
    assert not any("embed_tokens" in n or ("lora" not in n and n.startswith("lm.")) for n in names)
    before = {n: p.detach().clone() for n, p in bb.named_parameters()}
    rows = ds.queries("train")[:6]
    train_stage(bb, ExampleFactory(ds, cfg, bb.prompt_builder()), fs, rows, cfg, "random", tmp_path / "s1", "stage1")
    after = dict(bb.named_parameters())
    frozen_moved = [n for n in before if n not in names and not torch.equal(before[n], after[n])]
    assert frozen_moved == [], f"base weights changed: {frozen_moved[:3]}"
    assert any(not torch.equal(before[n], after[n]) for n in names if "lora_B" in n), "adapters moved"
    assert any(not torch.equal(before[n], after[n]) for n in names if n.startswith("vision."))
    assert any(not torch.equal(before[n], after[n]) for n in names if n.startswith("projector."))


def test_training_resumes_from_its_checkpoint(ds, synthetic_dir, tmp_path):
    from training.candidates import load_first_stage
    from training.first_stage.run import run_retrieval
    from training.teacher.examples import ExampleFactory
    from training.teacher.trainer import train

    cfg = load_teacher_config("tiny", overrides={"checkpoint_every": 2, "max_steps": 3})
    run_retrieval(synthetic_dir, "pop", tmp_path / "fs")
    fs = load_first_stage(tmp_path / "fs", ds)
    rows = ds.queries("train")[:8]
    bb = build_backbone(cfg)
    factory = ExampleFactory(ds, cfg, bb.prompt_builder())
    groups = lambda epoch: [factory.training_group(r, fs.ids(r["query_id"]), "random", np.random.default_rng(0)) for r in rows]  # noqa: E731
    log = train(bb, groups, cfg, tmp_path / "ckpt", "stage1")
    assert log["steps"] == 3
    cfg5 = load_teacher_config("tiny", overrides={"checkpoint_every": 2, "max_steps": 3})
    log2 = train(build_backbone(cfg5), groups, cfg5, tmp_path / "ckpt", "stage1")
    assert log2["steps"] == 3 and log2["groups"] == 3, "a finished run resumes at its last step and does no more"
    longer = load_teacher_config("tiny", overrides={"checkpoint_every": 2, "max_steps": 0, "epochs": 2})
    log3 = train(build_backbone(longer), groups, longer, tmp_path / "ckpt", "stage1")
    assert log3["steps"] == 2 * len(rows) and log3["groups"] == 2 * len(rows), "a longer schedule continues, not restarts"
    assert log3["loss_curve"][0]["epoch"] == 1 and log3["loss_curve"][-1]["epoch"] == 2
    other = load_teacher_config("tiny", overrides={"checkpoint_every": 2, "max_steps": 3, "lr": 0.01})
    from contract.errors import ArtifactMismatch

    with pytest.raises(ArtifactMismatch):
        train(build_backbone(other), groups, other, tmp_path / "ckpt", "stage1")


def test_tiny_pipeline_end_to_end(synthetic_dir, tiny_pipeline):
    out = tiny_pipeline
    metrics = json.loads((out / "metrics.json").read_text())
    assert set(metrics) == {"first_stage", "teacher", "student", "versus_rules"}
    for m in (metrics[k] for k in ("first_stage", "teacher", "student")):
        assert set(m) == {"MRR@8", "NDCG@4", "Recall@4", "Recall@1", "n"}
    assert metrics["teacher"]["n"] == metrics["first_stage"]["n"]
    assert "Rel.Impr" in (out / "report.md").read_text()
    scores = [json.loads(x) for x in (out / "teacher" / "scores.jsonl").read_text().splitlines()]
    assert {s["split"] for s in scores} == {"train", "test"}
    probs = [c["teacher_score"] for s in scores for c in s["candidates"]]
    assert all(0.0 <= p <= 1.0 for p in probs) and len(set(probs)) > 10
    emb = np.load(out / "teacher" / "embeddings" / "products.npy")
    assert emb.shape[0] == len(load_dataset(synthetic_dir).products)


def test_teacher_refuses_candidates_of_another_dataset(synthetic_dir, tmp_path):
    from training.synthetic import SyntheticConfig, generate

    other = tmp_path / "other"
    generate(SyntheticConfig(users=40, products=40, seed=99, min_core=2), other)
    assert runner.invoke(app, ["retrieve", "--data", str(other), "--model", "pop", "--out", str(tmp_path / "fs")]).exit_code == 0
    res = runner.invoke(app, ["teacher", "--data", str(synthetic_dir), "--candidates", str(tmp_path / "fs"), "--out", str(tmp_path / "t")])
    assert res.exit_code == 2 and "fingerprint" in res.output


def test_unknown_profile_and_fields_are_named(synthetic_dir, tmp_path):
    res = runner.invoke(app, ["teacher", "--data", str(synthetic_dir), "--candidates", "x", "--out", str(tmp_path / "t"), "--profile", "huge"])
    assert res.exit_code == 2 and "huge" in res.output and "tiny" in res.output
    res = runner.invoke(app, ["teacher", "--data", str(synthetic_dir), "--candidates", "x", "--out", str(tmp_path / "t"), "--set", "k_s9=1"])
    assert res.exit_code == 2 and "k_s9" in res.output


def test_hub_ids_fail_clearly_instead_of_downloading():
    from contract.errors import InputError
    from training.pretrained import load_lm

    with pytest.raises(InputError, match="not a local directory"):
        load_lm("HuggingFaceTB/SmolLM2-135M-Instruct")


def test_image_file_exists_for_every_prompt_image(ds, backbone):
    for p in _prompts(ds, backbone, n=2):
        for s in p.segments:
            if isinstance(s, ImageSlot):
                assert Path(s.path).is_file()


def test_ablate_runs_every_group_on_the_tiny_profile(tmp_path):
    from contract.errors import InputError
    from training.synthetic import SyntheticConfig, generate
    from training.teacher.ablate import row_slug
    from training.teacher.compare import load_scored, versus

    data = tmp_path / "data"  # smaller than the shared fixture: ten variants are trained and scored
    generate(SyntheticConfig(users=50, products=60, seed=11, min_core=3), data)
    fs = tmp_path / "fs"
    assert runner.invoke(app, ["retrieve", "--data", str(data), "--model", "bm25", "--out", str(fs)]).exit_code == 0
    res = runner.invoke(app, ["ablate", "--data", str(data), "--candidates", str(fs), "--out", str(tmp_path / "ab"),
                              "--fractions", "0.05,0.1", "--set", "train_fraction=0.1"])
    assert res.exit_code == 0, res.output
    rows = json.loads((tmp_path / "ab" / "ablate.json").read_text())
    expected = {"text / zero-shot", "text+vision / zero-shot", "text / finetuned", "text+vision / finetuned",
                "one-stage latest", "one-stage random", "one-stage selected", "two-stage selected",
                "fraction 0.05", "fraction 0.1"}
    assert set(rows) == expected
    assert rows["text / zero-shot"]["vision"] == "none" and rows["text+vision / zero-shot"]["vision"] == "cnn"
    assert rows["two-stage selected"]["prompt_tokens"] < rows["one-stage random"]["prompt_tokens"], \
        "K_s2 selected items make shorter prompts than K_s1 random ones"
    assert (tmp_path / "ab" / "ablate.png").stat().st_size > 1000
    # each row keeps its per-query scores and a paired interval against the first stage on the same queries
    fs_ndcg = json.loads((fs / "metrics.json").read_text())["NDCG@4"]
    for name, row in rows.items():
        d = row["versus_first_stage"]
        assert d["diff"] == pytest.approx(row["metrics"]["NDCG@4"] - fs_ndcg) and d["ci95"][0] <= d["diff"] <= d["ci95"][1]
        scored, n = load_scored(tmp_path / "ab" / "scores" / f"{row_slug(name)}.jsonl")
        assert n == d["n"] and 0 < len(scored) <= n
    assert "ΔNDCG@4 vs first stage" in (tmp_path / "ab" / "report.md").read_text()
    # two rows compared pairwise, as scripts/compare_teachers.py does: the difference of their NDCG@4
    text, n = load_scored(tmp_path / "ab" / "scores" / f"{row_slug('text / finetuned')}.jsonl")
    vision, _ = load_scored(tmp_path / "ab" / "scores" / f"{row_slug('text+vision / finetuned')}.jsonl")
    assert versus(vision, n, text, n)["diff"] == pytest.approx(
        rows["text+vision / finetuned"]["metrics"]["NDCG@4"] - rows["text / finetuned"]["metrics"]["NDCG@4"])
    stray = tmp_path / "ab" / "scores" / "two-stage-latest.jsonl"
    with pytest.raises(InputError, match="not an `hmpps ablate` row"):
        load_scored(stray)
    stray.write_text((tmp_path / "ab" / "scores" / f"{row_slug('text / finetuned')}.jsonl").read_text())
    with pytest.raises(InputError, match="no such row"):
        load_scored(stray)
    res = runner.invoke(app, ["ablate", "--data", str(data), "--candidates", str(fs), "--out", str(tmp_path / "x"), "--groups", "colour"])
    assert res.exit_code == 2 and "colour" in res.output


def test_config_layers_profile_then_file_then_flags(tmp_path):
    from contract.errors import InputError

    f = tmp_path / "c.yaml"
    f.write_text("k_s1: 5\nlr: 0.0001\n")  # both equal the defaults, but must still override the tiny profile
    cfg = load_teacher_config("tiny", f, {"k_s2": 3})
    assert (cfg.k_s1, cfg.lr, cfg.k_s2, cfg.lm) == (5, 0.0001, 3, "tiny")
    f.write_text("k_s1: five\n")
    with pytest.raises(InputError, match="k_s1: input should be a valid integer, got 'five'"):
        load_teacher_config("tiny", f)
    f.write_text("k_s1: true\n")  # a YAML boolean is not a count
    with pytest.raises(InputError, match="k_s1: input should be a valid integer, got True"):
        load_teacher_config("tiny", f)


def test_a_test_fraction_scores_a_sample_and_compares_on_the_same_queries(tmp_path):
    from training.synthetic import SyntheticConfig, generate

    data = tmp_path / "data"
    generate(SyntheticConfig(users=50, products=60, seed=11, min_core=3), data)
    fs = tmp_path / "fs"
    assert runner.invoke(app, ["retrieve", "--data", str(data), "--model", "bm25", "--out", str(fs)]).exit_code == 0
    res = runner.invoke(app, ["teacher", "--data", str(data), "--candidates", str(fs), "--out", str(tmp_path / "t0"),
                              "--set", "test_fraction=0"])
    assert res.exit_code == 2 and "test_fraction" in res.output
    res = runner.invoke(app, ["teacher", "--data", str(data), "--candidates", str(fs), "--out", str(tmp_path / "t"),
                              "--set", "test_fraction=0.2", "--set", "max_steps=2", "--set", "train_fraction=0.05",
                              "--set", "score_train_fraction=0.02"])
    assert res.exit_code == 0, res.output
    info = json.loads((tmp_path / "t" / "teacher.json").read_text())
    n_all = json.loads((fs / "metrics.json").read_text())["n"]
    n = info["scored_queries"]["test_total"]
    assert n == round(0.2 * n_all)
    assert info["first_stage"]["metrics"]["n"] == n and info["first_stage"]["metrics_all_test"]["n"] == n_all
    assert json.loads((tmp_path / "t" / "metrics.json").read_text())["n"] == n
    teacher_metrics = json.loads((tmp_path / "t" / "metrics.json").read_text())
    chance = info["versus_random_order"]
    # the chance level covers the same sampled queries, and the teacher's own NDCG@4 is what it is tested on
    assert chance["expected"]["n"] == n and chance["observed"] == pytest.approx(teacher_metrics["NDCG@4"])
    assert 0.0 <= chance["p_value"] <= 1.0 and chance["expected"]["NDCG@4"] <= chance["p95"]
    from training.teacher.trainer import training_fields

    assert "test_fraction" not in training_fields({"test_fraction": 0.2}), "a resume may score a different sample"
    from training.teacher.trainer import stage_epochs

    assert training_fields({"stage2_epochs": 3, "k_s2": 4}, "stage1") == training_fields({}, "stage1"), \
        "stage-2 knobs keep a trained stage 1"
    assert training_fields({"stage2_epochs": 3}, "stage2") != training_fields({}, "stage2")
    # a text-only model has no tower to align: its alignment knobs cannot tell two of them apart
    text = {"vision": "none"}
    assert training_fields(text | {"align_tower_steps": 300, "image_tokens": 8}) == training_fields(text)
    assert training_fields({"align_tower_steps": 300}) != training_fields({}), "they do change a vision model"
    cfg3 = load_teacher_config("tiny", overrides={"stage2_epochs": 3})
    assert (stage_epochs(cfg3, "stage1"), stage_epochs(cfg3, "stage2")) == (1, 3)


def test_first_stage_rank_is_shown_for_candidates_only_when_configured(ds):
    from training.teacher.examples import ExampleFactory

    pids = sorted(ds.products)
    listed = pids[20:30]
    row = next(r for r in ds.queries("train") if r["product_id"] not in listed and ds.history(r))
    for show in (True, False):
        cfg = load_teacher_config("tiny", overrides={"first_stage_rank": show})
        factory = ExampleFactory(ds, cfg, build_backbone(cfg, with_lora=False).prompt_builder())
        group = factory.training_group(row, listed, "random", np.random.default_rng(0))
        texts = ["".join(s for s in p.suffix if isinstance(s, str)) for p in group.prompts]
        prefix = "".join(s for s in group.prompts[0].prefix if isinstance(s, str))
        assert "Search rank" not in prefix, "history items carry no rank"
        if not show:
            assert not any("Search rank" in t for t in texts)
            continue
        # the target (not listed here), three hard negatives from the list, two random products (not listed)
        assert "Search rank: not listed;" in texts[0] and all("Search rank: not listed;" in t for t in texts[4:])
        assert all(t.split("Search rank: ")[1].split(";")[0] in {str(i) for i in range(1, 11)} for t in texts[1:4])


def test_with_ranks_shown_hard_negatives_come_from_the_whole_list(ds):
    """The list's top 3 as the only negatives would teach that a top rank means "no"."""
    from training.teacher.examples import ExampleFactory

    pids = sorted(ds.products)
    listed = pids[20:30]
    row = next(r for r in ds.queries("train") if ds.history(r))
    ranks = {True: [], False: []}
    for show in (True, False):
        cfg = load_teacher_config("tiny", overrides={"first_stage_rank": show})
        factory = ExampleFactory(ds, cfg, build_backbone(cfg, with_lora=False).prompt_builder())
        rng = np.random.default_rng(0)
        for _ in range(10):
            group = factory.training_group(row, listed, "random", rng)
            ranks[show] += [listed.index(p) + 1 for p in group.product_ids[1:4]]
    assert set(ranks[False]) == {1, 2, 3}, "without ranks in the prompt: the paper's best-scored negatives"
    assert max(ranks[True]) > 5 and len(set(ranks[True])) > 5


def test_training_query_samples_are_nested():
    from training.teacher.run import training_queries

    rows = [{"query_id": str(i)} for i in range(500)]
    small = training_queries(rows, load_teacher_config("tiny", overrides={"train_queries": 100}))
    large = training_queries(rows, load_teacher_config("tiny", overrides={"train_queries": 300}))
    assert len(small) == 100 and len(large) == 300
    assert {r["query_id"] for r in small} <= {r["query_id"] for r in large}


def test_scoring_resumes_from_its_partial_file(ds, synthetic_dir, tmp_path, monkeypatch):
    from training.candidates import load_first_stage
    from training.first_stage.run import run_retrieval
    from training.teacher import scoring as teacher_run
    from training.teacher.examples import ExampleFactory

    cfg = load_teacher_config("tiny")
    run_retrieval(synthetic_dir, "pop", tmp_path / "fs")
    fs = load_first_stage(tmp_path / "fs", ds)
    rows = ds.queries("test")[:4]  # latest history: nothing drawn at random, as with selected history
    bb = build_backbone(cfg)
    factory = ExampleFactory(ds, cfg, bb.prompt_builder())
    full = teacher_run.score_rows(bb, factory, fs, rows, "latest", 0)
    partial = tmp_path / "scores.partial.jsonl"
    first = teacher_run.score_rows(bb, factory, fs, rows[:2], "latest", 0, partial=partial, key={"k": 1})  # interrupted
    assert len(partial.read_text().splitlines()) == 3, "a key line and one line per scored query"
    calls = []
    real = teacher_run.score_chunk
    monkeypatch.setattr(teacher_run, "score_chunk", lambda *a: calls.extend(r["query_id"] for r in a[3]) or real(*a))
    resumed = teacher_run.score_rows(bb, factory, fs, rows, "latest", 0, partial=partial, key={"k": 1})
    assert calls == [r["query_id"] for r in rows[2:]], "only the rows not scored before"
    assert [r["query_id"] for r in resumed] == [r["query_id"] for r in rows]
    assert resumed[:2] == first
    assert [c["teacher_logit"] for r in resumed for c in r["candidates"]] == pytest.approx(
        [c["teacher_logit"] for r in full for c in r["candidates"]], abs=1e-4)
    calls.clear()
    teacher_run.score_rows(bb, factory, fs, rows, "latest", 0, partial=partial, key={"k": 2})
    assert len(calls) == len(rows), "scores of another trained teacher are not reused"


def test_batching_query_groups_takes_the_same_optimizer_steps(ds, synthetic_dir, tmp_path):
    """group_batch (several queries per pass, for a GPU) changes the batching, not the training."""
    from training.candidates import load_first_stage
    from training.first_stage.run import run_retrieval
    from training.teacher.examples import ExampleFactory
    from training.teacher.trainer import train

    run_retrieval(synthetic_dir, "pop", tmp_path / "fs")
    fs = load_first_stage(tmp_path / "fs", ds)
    rows = ds.queries("train")[:6]
    states = []
    for batch in (1, 3):
        cfg = load_teacher_config("tiny", overrides={"grad_accum": 3, "group_batch": batch, "max_steps": 2,
                                                     "lora_dropout": 0.0})
        bb = build_backbone(cfg)
        factory = ExampleFactory(ds, cfg, bb.prompt_builder())
        groups = lambda epoch: [factory.training_group(r, fs.ids(r["query_id"]), "latest", np.random.default_rng(0))  # noqa: B023,E731
                                for r in rows]
        log = train(bb, groups, cfg, tmp_path / f"ckpt{batch}", "stage1")
        assert log["steps"] == 2 and log["groups"] == 6
        states.append(bb.trainable_state())
    moved = 0
    for name, a in states[0].items():
        assert torch.allclose(a, states[1][name], atol=1e-5, rtol=1e-4), name
        moved += int("lora_B" in name and a.abs().sum() > 0)
    assert moved > 0, "the adapters trained"


def test_stage_two_training_is_the_same_twice(ds, synthetic_dir, tmp_path):
    """Two runs of the same stage-2 steps (per-candidate selected histories) give bit-identical adapters
    on a CPU. Without deterministic kernels this test failed, and the demo's teacher differed between
    two runs of the same commit from stage 2 on (scripts/check_identical.py)."""
    from training.candidates import load_first_stage
    from training.first_stage.run import run_retrieval
    from training.teacher.examples import Embeddings, ExampleFactory
    from training.teacher.trainer import train

    run_retrieval(synthetic_dir, "pop", tmp_path / "fs")
    fs = load_first_stage(tmp_path / "fs", ds)
    rows = ds.queries("train")[:40]
    rng = np.random.default_rng(3)
    pids, queries = sorted(ds.products), sorted({r["query"] for r in ds.queries()})
    emb = Embeddings(pids, rng.standard_normal((len(pids), 16)).astype(np.float32), queries,
                     rng.standard_normal((len(queries), 16)).astype(np.float32))
    states = []
    for run in range(2):
        cfg = load_teacher_config("tiny", overrides={"grad_accum": 4, "max_steps": 10, "threads": 2, "lora_dropout": 0.0})
        bb = build_backbone(cfg)
        factory = ExampleFactory(ds, cfg, bb.prompt_builder(), emb)
        groups = lambda epoch: [factory.training_group(r, fs.ids(r["query_id"]), "selected", np.random.default_rng(0))  # noqa: B023,E731
                                for r in rows]
        assert train(bb, groups, cfg, tmp_path / f"ckpt{run}", "stage2")["steps"] == 10
        states.append(bb.trainable_state())
    assert all(torch.equal(a, states[1][k]) for k, a in states[0].items())


def test_adapters_score_in_the_lm_dtype_and_train_in_float32_again(ds):
    # bfloat16 weights with float32 adapters cast every adapted layer's input up and its output back;
    # scoring runs the adapters in bfloat16 instead: the scores move by bfloat16 rounding only
    from training.teacher.scoring import inference_adapters

    cfg = load_teacher_config("tiny", overrides={"lora_r": 4, "dtype": "bfloat16"})
    bb = build_backbone(cfg).eval()
    torch.manual_seed(1)
    adapters = {n: p for n, p in bb.named_parameters() if "lora_" in n}
    assert adapters and all(p.dtype == torch.float32 for p in adapters.values())
    with torch.no_grad():
        for p in adapters.values():  # trained-looking adapters: lora_B starts at zero, which would hide a cast
            p.normal_(std=0.3)
    kept = {n: p.detach().clone() for n, p in adapters.items()}
    prompts = _prompts(ds, bb, n=6)
    p32, m32 = bb.score(prompts)
    with inference_adapters(bb, cfg.dtype):
        assert all(p.dtype == torch.bfloat16 for n, p in bb.named_parameters() if "lora_" in n)
        p16, m16 = bb.score(prompts)
    # cast (the margins move), and within the stated bfloat16 tolerance of 0.06 in P(yes) (docs/benchmarks.md)
    assert float((p16 - p32).abs().max()) < 0.06 and float((m16 - m32).abs().max()) > 0
    assert all(p.dtype == torch.float32 and torch.equal(p, kept[n]) for n, p in bb.named_parameters() if "lora_" in n)


def test_scoring_in_processes_resumes_and_equals_one_process(tiny_pipeline, synthetic_dir, tmp_path):
    import shutil
    from dataclasses import asdict

    from training.teacher.config import TeacherConfig
    from training.teacher.scoring import load_trained_teacher, partial_files, score_rows, score_rows_processes
    from training.teacher.trainer import training_fields

    teacher = tmp_path / "teacher"
    shutil.copytree(tiny_pipeline / "teacher", teacher)
    cfg = TeacherConfig(**json.loads((teacher / "teacher.json").read_text())["config"])
    key = training_fields(asdict(cfg), "stage2")
    t = load_trained_teacher(synthetic_dir, tiny_pipeline / "first_stage", teacher, cfg)
    rows = [r for r in t.ds.queries("test") if r["query_id"] in t.fs.rows][:6]
    one = score_rows(t.backbone, t.factory, t.fs, rows, "selected", cfg.seed)
    # an interrupted one-process run left two rows; two processes score the other four, two each
    score_rows(t.backbone, t.factory, t.fs, rows[:2], "selected", cfg.seed, partial=teacher / "scores.partial.jsonl",
               key=key)
    both = score_rows_processes(2, synthetic_dir, tiny_pipeline / "first_stage", teacher, cfg, rows, key)
    assert [r["query_id"] for r in both] == [r["query_id"] for r in rows]
    assert [c["teacher_score"] for r in both for c in r["candidates"]] == pytest.approx(
        [c["teacher_score"] for r in one for c in r["candidates"]], abs=1e-5)
    lines = {f.name: len(f.read_text().splitlines()) - 1 for f in partial_files(teacher)}
    assert lines == {"scores.partial.jsonl": 2, "scores.partial.0.jsonl": 2, "scores.partial.1.jsonl": 2}, lines
