"""Seconds per query of the teacher's three costs: a stage-1 training step, a stage-2 training step, scoring.

    .venv/bin/python scripts/bench_teacher_step.py --data runs/office/data --candidates runs/office/hem \\
        --profile smol --queries 6 [--set dtype=float32 --set lora_layers=0 ...]

Builds real training groups (the first stage's holdout lists where it wrote them: the target, 3 hard
and 2 random negatives) and real scoring groups (a test query's top 10), and times forward + backward
of the yes/no loss per training query (stage 1: one random history shared by the group; stage 2: each
candidate's selected history) and the scoring of a query's candidates, each after one warm-up query.
Stage 2 selects histories with stage-1 embeddings; without a trained teacher (``--embeddings DIR``)
random vectors stand in, which changes which items are picked, not how many tokens a prompt has.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from training.candidates import load_first_stage  # noqa: E402
from training.dataset import load_dataset  # noqa: E402
from training.teacher.build import build_backbone  # noqa: E402
from training.teacher.config import load_teacher_config  # noqa: E402
from training.teacher.examples import Embeddings, ExampleFactory, load_embeddings  # noqa: E402
from training.teacher.trainer import decision_logits  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", required=True)
    ap.add_argument("--candidates", required=True)
    ap.add_argument("--profile", default="smol")
    ap.add_argument("--queries", type=int, default=6)
    ap.add_argument("--embeddings", type=Path, help="a teacher run's embeddings/ directory (else random vectors)")
    ap.add_argument("--set", dest="sets", action="append", default=[], help="teacher config key=value")
    args = ap.parse_args()
    overrides = {k: yaml.safe_load(v) for k, _, v in (s.partition("=") for s in args.sets)}
    cfg = load_teacher_config(args.profile, overrides=overrides)
    ds = load_dataset(args.data)
    fs = load_first_stage(args.candidates, ds)
    bb = build_backbone(cfg)
    rng = np.random.default_rng(cfg.seed)
    if args.embeddings:
        emb = load_embeddings(args.embeddings)
    else:
        pids, queries = sorted(ds.products), sorted({r["query"] for r in ds.queries()})
        emb = Embeddings(pids, rng.normal(size=(len(pids), 64)).astype("f4"), queries,
                         rng.normal(size=(len(queries), 64)).astype("f4"))
    factory = ExampleFactory(ds, cfg, bb.prompt_builder(), emb)
    n = args.queries + 1  # the first is a warm-up
    train = [r for r in ds.queries("train") if r["query_id"] in (fs.holdout or fs.rows) and len(ds.history(r)) >= cfg.k_s1][:n]
    test = [r for r in ds.queries("test") if r["query_id"] in fs.rows and r["product_id"] in fs.ids(r["query_id"])][:n]
    print("| cost | queries | prompt tokens (mean) | seconds per query |\n|---|---:|---:|---:|")
    bb.train()
    for stage, mode in (("stage-1 training step", "random"), ("stage-2 training step", "selected")):
        groups = [factory.training_group(r, fs.list_ids(r["query_id"]), mode, rng) for r in train]
        spent = 0.0
        for i, g in enumerate(groups):
            t = time.perf_counter()
            logits = decision_logits(bb, g.prompts)[:, [bb.yes_id, bb.no_id]]
            target = torch.tensor([0 if y else 1 for y in g.labels])
            torch.nn.functional.cross_entropy(logits.float(), target).backward()
            spent += (time.perf_counter() - t) if i else 0.0
        tokens = np.mean([p.meta["tokens"] for g in groups for p in g.prompts])
        print(f"| {stage} | {len(groups) - 1} | {tokens:.0f} | {spent / (len(groups) - 1):.2f} |")
    bb.eval()
    groups = [factory.scoring_group(r, fs.ids(r["query_id"]), "selected", rng) for r in test]
    spent = 0.0
    for i, g in enumerate(groups):
        t = time.perf_counter()
        bb.score(g.prompts)
        spent += (time.perf_counter() - t) if i else 0.0
    tokens = np.mean([p.meta["tokens"] for g in groups for p in g.prompts])
    print(f"| scoring a test query (10 candidates) | {len(groups) - 1} | {tokens:.0f} | {spent / (len(groups) - 1):.2f} |")


if __name__ == "__main__":
    main()
