"""Cost of one teacher training step, prompt by prompt vs sharing the history prefix.

    .venv/bin/python scripts/bench_teacher_step.py --data DIR --candidates FIRST_STAGE_DIR \\
        --profile smol --queries 4 --set description_words=10 --set k_s1=3 --set threads=1

Builds stage-1 training groups (one random history per query), then times
forward + backward of the yes/no loss both ways, twice each, and prints the
seconds per training query. The two paths give the same gradients
(tests/test_teacher.py); only the cost differs.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
import yaml

from training.candidates import load_first_stage
from training.dataset import load_dataset
from training.teacher.build import build_backbone
from training.teacher.config import load_teacher_config
from training.teacher.examples import ExampleFactory
from training.teacher.trainer import decision_logits


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", required=True)
    ap.add_argument("--candidates", required=True)
    ap.add_argument("--profile", default="smol")
    ap.add_argument("--queries", type=int, default=4)
    ap.add_argument("--set", dest="sets", action="append", default=[], help="teacher config key=value")
    args = ap.parse_args()
    overrides = {k: yaml.safe_load(v) for k, _, v in (s.partition("=") for s in args.sets)}
    cfg = load_teacher_config(args.profile, overrides=overrides)
    ds = load_dataset(args.data)
    fs = load_first_stage(args.candidates, ds)
    bb = build_backbone(cfg)
    bb.train()
    factory = ExampleFactory(ds, cfg, bb.prompt_builder())
    rows = [r for r in ds.queries("train") if r["query_id"] in fs.rows and r["seq"] >= cfg.k_s1][: args.queries]
    rng = np.random.default_rng(cfg.seed)
    groups = [factory.training_group(r, fs.ids(r["query_id"]), "random", rng) for r in rows]
    first = groups[0].prompts[0]
    print(f"{len(groups)} groups of {len(groups[0].prompts)} "
          f"prompts, {np.mean([p.meta['tokens'] for g in groups for p in g.prompts]):.0f} tokens each, "
          f"{bb.count_tokens(first.prefix) / first.meta['tokens']:.0%} of them in the shared prefix")
    for mode in ("plain", "shared", "plain", "shared"):
        t = time.time()
        for g in groups:
            logits = bb([p.segments for p in g.prompts]) if mode == "plain" else decision_logits(bb, g.prompts)
            target = torch.tensor([bb.yes_id if y else bb.no_id for y in g.labels])
            torch.nn.functional.cross_entropy(logits, target).backward()
        print(f"{mode:>6}: {(time.time() - t) / len(groups):.2f} s per training query")


if __name__ == "__main__":
    main()
