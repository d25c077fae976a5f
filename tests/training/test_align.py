"""LLaVA-style vision alignment (training/teacher/align.py) on the tiny random LM."""

from __future__ import annotations

import math

import pytest
import torch

from training.dataset import load_dataset
from training.teacher.align import IMAGE_CUE, _continuation_logprob, align_vision, caption, probe_brands
from training.teacher.build import build_backbone
from training.teacher.config import load_teacher_config
from training.teacher.prompt import ImageSlot


@pytest.fixture(scope="module")
def ds(synthetic_dir):
    return load_dataset(synthetic_dir)


def _cfg(**kw):
    return load_teacher_config("tiny", overrides={"lora_r": 4, "align_epochs": 1, "align_batch": 32, **kw})


def test_caption_is_the_catalog_brand_and_title():
    assert caption({"title": "Acme Red Mug", "brand": "Acme"}) == "Brand: Acme. Title: Acme Red Mug."
    assert caption({"title": "Red Mug", "brand": ""}) == "Title: Red Mug."
    assert caption({"title": None, "brand": None}) == ""
    assert caption({"title": "Acme Red Mug", "brand": "Acme"}, "brand") == "Brand: Acme."
    assert caption({"title": "Red Mug", "brand": ""}, "brand") == ""  # nothing to say: not captioned
    with pytest.raises(ValueError, match="align_caption"):
        caption({"title": "Red Mug"}, "colour")
    from contract.errors import InputError

    with pytest.raises(InputError, match="align_caption='colour'"):
        _cfg(align_caption="colour")


def test_continuation_logprob_equals_a_manual_sum(ds):
    bb = build_backbone(_cfg())
    bb.eval()
    pid = sorted(ds.products)[0]
    prompt = [IMAGE_CUE, ImageSlot(str(ds.image_path(pid))), "\n"]
    text = caption(ds.products[pid])
    with torch.no_grad():
        got = _continuation_logprob(bb, [prompt, prompt], [text, "Brand: X."])
        enc = bb.encode([[*prompt, text]])
        logp = torch.log_softmax(bb.lm(**enc, use_cache=False).logits[0].float(), -1)
    ids = bb.ids(text)
    n = logp.shape[0]
    manual = sum(logp[n - len(ids) - 1 + i, t] for i, t in enumerate(ids))
    assert torch.allclose(got[0], manual, atol=1e-4)
    assert not torch.allclose(got[0], got[1])


def test_alignment_moves_only_the_vision_path_then_freezes_the_tower_and_resumes(ds, tmp_path, monkeypatch):
    import training.teacher.align as align

    monkeypatch.setattr(align, "probe_brands", lambda bb, ds: {"probed": True})  # tested on its own below
    cfg = _cfg()
    bb = build_backbone(cfg)
    before = {n: p.detach().clone() for n, p in bb.named_parameters()}
    log = align_vision(bb, ds, cfg, tmp_path / "align")
    after = dict(bb.named_parameters())
    moved = {n for n, v in before.items() if not torch.equal(v, after[n])}
    assert moved and all(n.startswith(("vision.", "projector.")) for n in moved)
    assert any(n.startswith("vision.") for n in moved) and any(n.startswith("projector.") for n in moved)
    assert not any(p.requires_grad for p in bb.vision.parameters()), "the aligned tower is frozen"
    assert all(p.requires_grad for p in bb.projector.parameters())
    assert any(p.requires_grad for n, p in bb.named_parameters() if "lora_" in n), "adapters are trainable again"
    assert {k for k in bb.trainable_state() if k.startswith("vision.")}, "checkpoints keep the frozen tower"
    assert len(log["loss_curve"]) == 1 and log["products"] == sum(1 for p in ds.products.values() if p.get("image"))

    assert log["probe_before"] == log["probe_after"] == {"probed": True}

    again = build_backbone(cfg)  # a fresh process: the saved alignment is loaded, not retrained
    assert align_vision(again, ds, cfg, tmp_path / "align") == log
    assert all(torch.equal(after[n], p) for n, p in again.named_parameters() if n.startswith(("vision.", "projector.")))
    other = _cfg(align_epochs=2)  # another schedule does not reuse it
    assert len(align_vision(build_backbone(other), ds, other, tmp_path / "align")["loss_curve"]) == 2


def test_no_alignment_when_off_or_text_only(ds, tmp_path):
    for cfg in (_cfg(align_epochs=0), _cfg(vision="none")):
        assert align_vision(build_backbone(cfg), ds, cfg, tmp_path / "a") is None
    assert not (tmp_path / "a").exists()


def test_probe_reads_a_brand_that_the_pictures_carry(ds, monkeypatch):
    """A backbone whose log-probabilities favour each product's true brand scores 1.0; one that favours a
    single brand for every picture scores that brand's share raw, and chance-like once calibrated."""
    import training.teacher.align as align

    truth = {str(ds.image_path(pid)): p["extra"]["truth"]["brand"] for pid, p in ds.products.items()}

    def fake(bias):
        def logprob(_bb, prompts, texts):
            return torch.tensor([(2.0 if t == f"Brand: {truth[p[1].path]}." else 0.0) + bias(t)
                                 for p, t in zip(prompts, texts, strict=True)])
        return logprob

    bb = build_backbone(_cfg())
    real = probe_brands(bb, ds)  # the generator records the true brand of every product
    assert real["products"]["picture_only"] + real["products"]["brand_in_text"] == len(ds.products)
    assert real["products"]["picture_only"] == sum(1 for p in ds.products.values() if not p["brand"])
    assert all(0 <= real[k][s] <= 1 for k in ("raw", "calibrated") for s in ("brand_in_text", "picture_only"))
    monkeypatch.setattr(align, "_continuation_logprob", fake(lambda t: 0.0))
    good = probe_brands(bb, ds)
    assert good["raw"] == good["calibrated"] == {"brand_in_text": 1.0, "picture_only": 1.0}
    monkeypatch.setattr(align, "_continuation_logprob", fake(lambda t: 5.0 if t == "Brand: Acme." else 0.0))
    biased = probe_brands(bb, ds)
    acme = sum(b == "Acme" for b in truth.values()) / len(truth)
    assert biased["raw"]["picture_only"] < 0.5 and biased["calibrated"]["picture_only"] == 1.0
    assert abs((biased["raw"]["brand_in_text"] * good["products"]["brand_in_text"]
                + biased["raw"]["picture_only"] * good["products"]["picture_only"]) / len(truth) - acme) < 1e-3


def test_probe_needs_true_brands(ds):
    bb = build_backbone(_cfg())
    plain = load_dataset(ds.root)
    for p in plain.products.values():
        p.pop("extra", None)
    assert probe_brands(bb, plain) is None


def test_pipeline_report_line_states_the_probe():
    from hmpps.pipeline import _align_line

    probe = lambda pic, txt: {"chance": 0.1, "products": {"picture_only": 61, "brand_in_text": 81},  # noqa: E731
                              "raw": {"picture_only": 0.1, "brand_in_text": 0.1},
                              "calibrated": {"picture_only": pic, "brand_in_text": txt}}
    line = _align_line({"products": 142, "epochs": 20, "loss_curve": [{"loss": 4.885}, {"loss": 2.614}],
                        "probe_before": probe(0.1148, 0.0988), "probe_after": probe(0.1311, 0.3333)})
    assert "142 product images, 20 epochs, caption loss 4.885 -> 2.614" in line
    assert "61 products whose text has none: 13.1% (before alignment 11.5%, chance 10.0%)" in line
    assert line.endswith("names it: 33.3%")
    assert "nothing to align" in _align_line({"products": 0, "note": "no product has both an image and catalog "
                                                                     "text; nothing to align"})


def test_matching_term_is_logged_and_changes_the_tower(ds, tmp_path, monkeypatch):
    import training.teacher.align as align

    monkeypatch.setattr(align, "probe_brands", lambda bb, ds: None)
    plain_cfg, contrast_cfg = _cfg(), _cfg(align_contrast=1.0)
    plain, contrast = build_backbone(plain_cfg), build_backbone(contrast_cfg)
    log_plain = align_vision(plain, ds, plain_cfg, tmp_path / "plain")
    log_contrast = align_vision(contrast, ds, contrast_cfg, tmp_path / "contrast")
    assert "contrast" not in log_plain["loss_curve"][0]
    assert log_contrast["loss_curve"][0]["contrast"] > 0  # softplus is positive
    # same seed, same data order: only the matching term separates the two towers
    assert not torch.equal(plain.vision.net[0].weight, contrast.vision.net[0].weight)


def test_tower_learns_catalog_brands_then_captioning_moves_only_the_projector(ds, tmp_path, monkeypatch):
    import training.teacher.align as align

    monkeypatch.setattr(align, "probe_brands", lambda bb, ds: None)
    seen = {}
    real = align.train_tower_on_brands

    def spy(cnn, d, cfg, steps):
        log = real(cnn, d, cfg, steps)
        seen["vision"] = {n: p.detach().clone() for n, p in cnn.named_parameters()}
        return log

    monkeypatch.setattr(align, "train_tower_on_brands", spy)
    cfg = _cfg(align_tower_steps=40)
    bb = build_backbone(cfg)
    start = {n: p.detach().clone() for n, p in bb.named_parameters()}
    log = align_vision(bb, ds, cfg, tmp_path / "align")
    tower = log["tower"]
    brands = {p["brand"] for p in ds.products.values() if p["brand"]}
    assert tower["trained_on"] == sum(1 for p in ds.products.values() if p["brand"] and p.get("image"))
    assert tower["brands"] == len(brands) and tower["final_loss"] < math.log(len(brands))  # it learned something
    assert tower["head_picture_only"]["products"] == sum(1 for p in ds.products.values() if not p["brand"])
    vision = dict(bb.vision.named_parameters())
    assert any(not torch.equal(start[f"vision.{n}"], p) for n, p in vision.items()), "the tower trained on brands"
    assert all(torch.equal(seen["vision"][n], p) for n, p in vision.items()), "captioning left the tower alone"
    assert any(not torch.equal(start[n], p) for n, p in bb.named_parameters() if n.startswith("projector."))
    assert not any(p.requires_grad for p in bb.vision.parameters())

    from hmpps.pipeline import _align_line
    assert f"tower first trained on {tower['trained_on']} catalog brand labels (40 steps" in _align_line(log)


def test_tower_labels_are_catalog_fields_only(ds):
    """Without the generator's truth the tower still trains (on catalog brands) and reports no hidden accuracy;
    with fewer than two catalog brands it says so instead of training."""
    from training.teacher.align import train_tower_on_brands
    from training.teacher.vision import SmallCNN

    cfg = _cfg()
    plain = load_dataset(ds.root)
    for p in plain.products.values():
        p.pop("extra", None)
    log = train_tower_on_brands(SmallCNN(cfg.image_tokens), plain, cfg, steps=5)
    assert log["steps"] == 5 and "head_picture_only" not in log
    for p in plain.products.values():
        p["brand"] = "Acme" if p["brand"] else ""
    cnn = SmallCNN(cfg.image_tokens)
    before = [p.detach().clone() for p in cnn.parameters()]
    assert "fewer than two catalog brands" in train_tower_on_brands(cnn, plain, cfg, steps=5)["note"]
    assert all(torch.equal(a, b) for a, b in zip(before, cnn.parameters(), strict=True))
