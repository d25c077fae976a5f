"""LLaVA-style feature alignment of the from-scratch vision tower, before stage 1.

A pretrained VLM arrives with a vision tower whose tokens the LM can already
read; the composed backbone's CNN starts from random weights. LLaVA's first
training stage fixes that by captioning: the LM stays frozen and the vision
tower and projector learn to make image tokens from which the LM predicts the
image's caption. The caption here is the product's own catalog text, its brand
(when the catalog has one) and title, so no labels beyond the catalog are used.

``align_contrast`` adds a matching term: each caption must be likelier after its
own picture than after another product's (a logistic loss on the two
log-likelihoods). Plain captioning can lower its loss with image tokens that
act as one soft prompt for the caption format, the same for every picture;
the matching term rewards only what tells pictures apart.

What this buys on the synthetic data: about half of the brands appear only as
a logo in the picture. The tower learns logo -> brand word from the products
whose text names the brand, and the probe below measures whether that carries
over to the products whose text does not (their captions never name it).

``align_tower_steps`` first trains the CNN on its own, with a linear head on
the catalog's brand field (the products whose text names one). Captioning
through the frozen LM mostly memorises the captioned products; a classifier
on the same labels generalises to the unnamed logos far better (the CNN is a
stand-in for a pretrained vision encoder, which is what LLaVA starts from).
The CNN is then frozen, and captioning trains only the projector: it learns to
say in the LM's words what the tower already tells apart. ``align_caption:
brand`` captions with the brand alone, so that the projector is not spent on
the title's wording (synth150: 52.5% of the unnamed brands, against 13.1%
with brand and title; docs/results.md).

After alignment the CNN is frozen for the teacher stages (LLaVA keeps its
vision encoder frozen too); the projector keeps training with the adapters.
"""

from __future__ import annotations

import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from training.artifacts import atomic_dir, read_json, write_json
from training.dataset import Dataset
from training.teacher.backbone import ComposedBackbone
from training.teacher.config import CAPTION_FIELDS, TeacherConfig
from training.teacher.prompt import ImageSlot, Segment
from training.teacher.vision import SmallCNN, load_image

IMAGE_CUE = "Product image: "
# the fields that alignment reads: a change to any of them invalidates a saved alignment
_ALIGN_FIELDS = ("lm", "tokenizer", "tiny_hidden", "tiny_layers", "tiny_heads", "vision", "image_size",
                 "image_tokens", "align_epochs", "align_batch", "align_lr", "align_contrast", "align_tower_steps",
                 "align_caption", "seed")


def caption(p: dict[str, Any], fields: str = "brand_title") -> str:
    """What the catalog says a product's picture shows: its brand (if known) and, with ``brand_title``, its title."""
    if fields not in CAPTION_FIELDS:
        raise ValueError(f"align_caption must be 'brand_title' or 'brand', got {fields!r}")
    title = (p.get("title") or "").strip() if fields == "brand_title" else ""
    brand = (p.get("brand") or "").strip()
    return ((f"Brand: {brand}. " if brand else "") + (f"Title: {title}." if title else "")).strip()


def _vision_params(backbone: ComposedBackbone) -> list[torch.nn.Parameter]:
    assert backbone.vision is not None and backbone.projector is not None
    return [*backbone.vision.parameters(), *backbone.projector.parameters()]


def _continuation_logprob(backbone: ComposedBackbone, prompts: list[list[Segment]], texts: list[str]) -> torch.Tensor:
    """Sum of log P(text tokens | prompt) per row; the text is the last segment, so with left padding
    its tokens are the last ones of every row."""
    lengths = [len(backbone.ids(t)) for t in texts]
    enc = backbone.encode([[*p, t] for p, t in zip(prompts, texts, strict=True)])
    k = max(lengths) + 1
    logits = backbone.lm(**enc, use_cache=False, logits_to_keep=k).logits.float()  # (B, k, V)
    logp = torch.log_softmax(logits, dim=-1)
    out = []
    for b, (t, n) in enumerate(zip(texts, lengths, strict=True)):
        ids = torch.tensor(backbone.ids(t), device=logp.device)
        pred = logp[b, k - n - 1: k - 1]  # position i predicts token i + 1
        out.append(pred.gather(1, ids[:, None]).sum())
    return torch.stack(out)


def _image(ds: Dataset, pid: str) -> str | None:
    path = ds.image_path(pid)
    return str(path) if path is not None and path.is_file() else None


def _captioned(ds: Dataset, fields: str) -> list[tuple[str, str]]:
    """(image path, caption) of every product that has both."""
    rows = [(_image(ds, pid), caption(ds.products[pid], fields)) for pid in sorted(ds.products)]
    return [(path, text) for path, text in rows if path and text]


def _true_brand(p: dict[str, Any]) -> str | None:
    """The generator's brand of a synthetic product (None on real data)."""
    return (p.get("extra") or {}).get("truth", {}).get("brand")


def train_tower_on_brands(cnn: SmallCNN, ds: Dataset, cfg: TeacherConfig, steps: int,
                          batch: int = 256) -> dict[str, Any]:
    """Train ``cnn`` with a linear head to name the catalog brand of each product that has one.

    Only catalog fields are labels. Where the generator's truth exists, the head's accuracy on the
    products whose catalog has no brand (the picture is the only clue) is reported as well.
    """
    rows = [(path, (p.get("brand") or "").strip(), _true_brand(p)) for pid, p in sorted(ds.products.items())
            if (path := _image(ds, pid))]
    brands = sorted({b for _, b, _ in rows} - {""})
    labelled = [(path, brands.index(b)) for path, b, _ in rows if b]
    if len(brands) < 2:
        return {"trained_on": len(labelled), "note": "fewer than two catalog brands with images; tower not trained"}
    t0 = time.time()
    gen = torch.Generator().manual_seed(cfg.seed + 11)
    head = torch.nn.Linear(cnn.width * cfg.image_tokens, len(brands))
    x = torch.stack([load_image(path, cfg.image_size) for path, _ in labelled])
    y = torch.tensor([label for _, label in labelled])
    opt = torch.optim.AdamW([*cnn.parameters(), *head.parameters()], lr=cfg.align_lr)
    cnn.train()
    for _ in tqdm(range(steps), desc="training vision tower on catalog brands", unit="step"):
        idx = torch.randperm(len(y), generator=gen)[:batch]
        loss = torch.nn.functional.cross_entropy(head(cnn(x[idx]).flatten(1)), y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    log: dict[str, Any] = {"trained_on": len(labelled), "brands": len(brands), "steps": steps,
                           "final_loss": round(loss.item(), 4), "seconds": round(time.time() - t0, 1)}
    hidden = [(path, brands.index(t)) for path, b, t in rows if not b and t in brands]
    if hidden:
        with torch.no_grad():
            xh = torch.stack([load_image(path, cfg.image_size) for path, _ in hidden])
            hit = head(cnn(xh).flatten(1)).argmax(1) == torch.tensor([t for _, t in hidden])
        log["head_picture_only"] = {"products": len(hidden), "accuracy": round(hit.float().mean().item(), 4)}
    return log


@torch.no_grad()
def probe_brands(backbone: ComposedBackbone, ds: Dataset, batch: int = 32) -> dict[str, Any] | None:
    """Brand read from the picture alone: argmax over the catalog's brands of log P("Brand: b." | image).

    Scored where the true brand is known from the generator (``extra.truth.brand``), split into products
    whose catalog names the brand (trained on) and those whose does not (the picture is the only clue).
    ``calibrated`` subtracts each brand's mean log-probability over all pictures first, so a brand
    the LM finds likely a priori (a short or common word) does not win on every picture.
    None when the dataset records no true brands.
    """
    brands = sorted({(p.get("brand") or "").strip() for p in ds.products.values()} - {""})
    items = [(path, _true_brand(p), bool(p.get("brand")))
             for pid, p in sorted(ds.products.items()) if _true_brand(p) in brands and (path := _image(ds, pid))]
    if not items or len(brands) < 2:
        return None
    backbone.eval()
    per = max(1, batch // len(brands))
    rows = []
    for start in range(0, len(items), per):
        chunk = items[start: start + per]
        prompts = [[IMAGE_CUE, ImageSlot(path), "\n"] for path, _, _ in chunk for _ in brands]
        texts = [f"Brand: {b}." for _ in chunk for b in brands]
        rows.append(_continuation_logprob(backbone, prompts, texts).view(len(chunk), len(brands)).cpu())
    lp = torch.cat(rows)
    truth = torch.tensor([brands.index(b) for _, b, _ in items])
    in_text = torch.tensor([t for _, _, t in items])
    out: dict[str, Any] = {"brands": len(brands), "chance": round(1 / len(brands), 4),
                           "products": {"brand_in_text": int(in_text.sum()), "picture_only": int((~in_text).sum())}}
    for name, scores in (("raw", lp), ("calibrated", lp - lp.mean(0, keepdim=True))):
        hit = scores.argmax(1) == truth
        out[name] = {"brand_in_text": round(float(hit[in_text].float().mean()), 4) if in_text.any() else None,
                     "picture_only": round(float(hit[~in_text].float().mean()), 4) if (~in_text).any() else None}
    return out


def align_vision(backbone: ComposedBackbone, ds: Dataset, cfg: TeacherConfig, out: Path) -> dict[str, Any] | None:
    """Caption-train the vision tower and projector (LM frozen), then freeze the tower.

    Resumable: a finished alignment in ``out`` with the same fields is loaded instead of retrained.
    Returns the alignment log, or None when the config asks for none.
    """
    if (cfg.align_epochs <= 0 and cfg.align_tower_steps <= 0) or getattr(backbone, "vision", None) is None:
        return None
    fields = {k: v for k, v in asdict(cfg).items() if k in _ALIGN_FIELDS}
    saved = read_json(out / "align.json") if (out / "align.json").exists() else {}
    if saved.get("fields") == fields:
        state = torch.load(out / "state.pt", weights_only=True)
        with torch.no_grad():
            for p, v in zip(_vision_params(backbone), state, strict=True):
                p.copy_(v)
        backbone.vision.requires_grad_(False)
        return saved["log"]

    rows = _captioned(ds, cfg.align_caption)
    if not rows:
        backbone.vision.requires_grad_(False)
        return {"products": 0, "note": "no product has both an image and catalog text; nothing to align"}
    t0 = time.time()
    probe_before = probe_brands(backbone, ds)
    tower = train_tower_on_brands(backbone.vision, ds, cfg, cfg.align_tower_steps) if cfg.align_tower_steps > 0 else None
    if tower is not None and "steps" in tower:  # a trained tower stays as it is: captioning moves only the projector
        backbone.vision.requires_grad_(False)
    params = [p for p in _vision_params(backbone) if p.requires_grad]
    own = {id(p) for p in params}
    frozen = [p for p in backbone.parameters() if p.requires_grad and id(p) not in own]
    for p in frozen:  # the LM and its (still zero) adapters stay as they are
        p.requires_grad_(False)
    opt = torch.optim.AdamW(params, lr=cfg.align_lr, weight_decay=0.0)
    rng = np.random.default_rng(cfg.seed + 7)
    backbone.train()
    curve = []
    bar = tqdm(range(cfg.align_epochs), desc="aligning vision (captions)", unit="epoch")
    for epoch in bar:
        losses, contrasts = [], []
        order = rng.permutation(len(rows))
        for start in range(0, len(rows), cfg.align_batch):
            chunk = [rows[i] for i in order[start: start + cfg.align_batch]]
            texts = [text for _, text in chunk]
            prompts = [[IMAGE_CUE, ImageSlot(path), "\n"] for path, _ in chunk]
            n_tokens = sum(len(backbone.ids(t)) for t in texts)
            if cfg.align_contrast > 0 and len(chunk) > 1:
                # each caption once more after another product's picture (a derangement): the soft-prompt
                # part of the image tokens helps both equally, only what is specific to a picture separates them
                mismatched = prompts[1:] + prompts[:1]
                lp = _continuation_logprob(backbone, prompts + mismatched, texts + texts)
                pos, neg = lp[: len(chunk)], lp[len(chunk):]
                contrast = torch.nn.functional.softplus(neg - pos).mean()
                loss = -pos.sum() / n_tokens + cfg.align_contrast * contrast
                contrasts.append(contrast.item())
            else:
                loss = -_continuation_logprob(backbone, prompts, texts).sum() / n_tokens
            opt.zero_grad()
            loss.backward()
            opt.step()
            losses.append(loss.item())
        curve.append({"epoch": epoch + 1, "loss": round(float(np.mean(losses)), 4), "seconds": round(time.time() - t0, 1),
                      **({"contrast": round(float(np.mean(contrasts)), 4)} if contrasts else {})})
        bar.set_postfix(loss=curve[-1]["loss"])
    for p in frozen:
        p.requires_grad_(True)
    backbone.vision.requires_grad_(False)
    log = {"products": len(rows), "epochs": cfg.align_epochs, "loss_curve": curve, "tower": tower,
           "probe_before": probe_before, "probe_after": probe_brands(backbone, ds),
           "seconds": round(time.time() - t0, 1)}
    from training.teacher.dist import is_main

    if is_main():  # every rank aligned the same way (same seed, no collectives); one writes
        with atomic_dir(out) as tmp:
            torch.save([p.detach().cpu().clone() for p in _vision_params(backbone)], tmp / "state.pt")
            write_json(tmp / "align.json", {"fields": fields, "log": log})
    return log
