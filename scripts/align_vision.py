"""Vision alignment alone, with its brand probe: is captioning teaching the CNN to read the picture?

    .venv/bin/python scripts/align_vision.py --data DIR --profile smol --out DIR \\
        --set align_epochs=20 --set align_lr=0.001 --set threads=2

Runs ``training/teacher/align.py`` exactly as the pipeline does before stage 1
(the saved alignment in ``--out`` is what a teacher run with the same fields
would load: copy it to ``<teacher out>/align``), and prints the caption-loss
curve and the brand probe before and after.

``--supervised`` instead answers whether the CNN can read the logos at all: it
trains the same tower with a linear head on the catalog brands of the products
whose text names one (cross-entropy, 300 full-batch AdamW steps at 1e-3) and
prints its accuracy on the picture-only products, against their true brands.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import yaml

from training.dataset import load_dataset
from training.errors import InputError
from training.teacher.align import align_vision
from training.teacher.backbone import build_backbone
from training.teacher.config import load_teacher_config


def supervised_brands(ds, cfg, steps: int = 300) -> dict[str, float | int]:
    import torch

    from training.teacher.vision import SmallCNN, load_image

    torch.manual_seed(cfg.seed)
    rows = [(ds.image_path(pid), p["brand"], p["extra"]["truth"]["brand"]) for pid, p in sorted(ds.products.items())
            if ds.image_path(pid) is not None and (p.get("extra") or {}).get("truth")]
    brands = sorted({truth for _, _, truth in rows})
    x = torch.stack([load_image(str(path), cfg.image_size) for path, _, _ in rows])
    y = torch.tensor([brands.index(truth) for _, _, truth in rows])
    known = torch.tensor([bool(text) for _, text, _ in rows])
    cnn = SmallCNN(cfg.image_tokens)
    head = torch.nn.Linear(cnn.width * cfg.image_tokens, len(brands))
    opt = torch.optim.AdamW([*cnn.parameters(), *head.parameters()], lr=1e-3)
    for _ in range(steps):
        loss = torch.nn.functional.cross_entropy(head(cnn(x[known]).flatten(1)), y[known])
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        acc = (head(cnn(x[~known]).flatten(1)).argmax(1) == y[~known]).float().mean().item()
    return {"trained_on": int(known.sum()), "picture_only": int((~known).sum()), "final_loss": round(loss.item(), 4),
            "picture_only_accuracy": round(acc, 4), "chance": round(1 / len(brands), 4)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", required=True)
    ap.add_argument("--profile", default="smol")
    ap.add_argument("--out", help="where the alignment is saved (required unless --supervised)")
    ap.add_argument("--set", dest="sets", action="append", default=[], help="teacher config key=value")
    ap.add_argument("--supervised", action="store_true", help="train the CNN on brand labels instead (upper bound)")
    args = ap.parse_args()
    overrides = {k: yaml.safe_load(v) for k, _, v in (s.partition("=") for s in args.sets)}
    cfg = load_teacher_config(args.profile, overrides=overrides)
    if args.supervised:
        print(json.dumps(supervised_brands(load_dataset(args.data), cfg)))
        return
    if not args.out:
        raise SystemExit("--out is required")
    if cfg.align_epochs <= 0 or cfg.vision != "cnn":
        raise SystemExit(str(InputError("set align_epochs > 0 with vision: cnn")))
    log = align_vision(build_backbone(cfg), load_dataset(args.data), cfg, Path(args.out))
    assert log is not None
    print(json.dumps({k: v for k, v in log.items() if k != "loss_curve"}, indent=1))
    for row in log["loss_curve"]:
        term = f"  (matching term {row['contrast']:.4f})" if "contrast" in row else ""
        print(f"epoch {row['epoch']:3d}  loss {row['loss']:.4f}{term}  {row['seconds']:.0f} s")


if __name__ == "__main__":
    main()
