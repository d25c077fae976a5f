"""Vision alignment alone, with its brand probe: is captioning teaching the CNN to read the picture?

    .venv/bin/python scripts/align_vision.py --data DIR --profile smol --out DIR \\
        --set align_epochs=20 --set align_lr=0.001 --set threads=2

Runs ``training/teacher/align.py`` exactly as the pipeline does before stage 1
(the saved alignment in ``--out`` is what a teacher run with the same fields
would load: copy it to ``<teacher out>/align``), and prints the caption-loss
curve and the brand probe before and after.

``--supervised`` instead answers whether the CNN can read the logos at all: it
trains a fresh tower alone with a linear head on the catalog brands of the
products whose text names one (``train_tower_on_brands``, 300 AdamW steps at
``align_lr``) and prints its accuracy on the picture-only products, against
their true brands. ``--set align_tower_steps=N`` runs that same training as the
first part of the alignment, before the projector is captioned.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import yaml

from contract.errors import InputError
from training.dataset import load_dataset
from training.teacher.align import align_vision, train_tower_on_brands
from training.teacher.build import build_backbone
from training.teacher.config import load_teacher_config


def supervised_brands(ds, cfg, steps: int = 300) -> dict:
    import torch

    from training.teacher.vision import SmallCNN

    torch.manual_seed(cfg.seed)
    return train_tower_on_brands(SmallCNN(cfg.image_tokens), ds, cfg, steps)


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
    if (cfg.align_epochs <= 0 and cfg.align_tower_steps <= 0) or cfg.vision != "cnn":
        raise SystemExit(str(InputError("set align_epochs > 0 or align_tower_steps > 0 with vision: cnn")))
    log = align_vision(build_backbone(cfg), load_dataset(args.data), cfg, Path(args.out))
    assert log is not None
    print(json.dumps({k: v for k, v in log.items() if k != "loss_curve"}, indent=1))
    for row in log["loss_curve"]:
        term = f"  (matching term {row['contrast']:.4f})" if "contrast" in row else ""
        print(f"epoch {row['epoch']:3d}  loss {row['loss']:.4f}{term}  {row['seconds']:.0f} s")


if __name__ == "__main__":
    main()
