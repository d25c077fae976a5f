"""``hmpps ablate``: the paper's teacher ablations on one dataset.

Rows (each trains a fresh backbone unless it is defined as a continuation):

Table 4, modality (raw descriptions, first stage only):
  text / zero-shot, text+vision / zero-shot, text / finetuned, text+vision / finetuned
Fig. 3, history:
  one-stage latest, one-stage random, one-stage selected (a fresh model trained on
  history selected with the one-stage-random model's embeddings), two-stage selected
  (the one-stage random model trained further on selected history)
Fig. 4a, training fraction: the one-stage random model at several fractions
Table 5, summaries (when ``--summaries`` is given, once per summarize run): the raw descriptions
  ("none") vs each run's mode, one-stage random history, reported with description word counts

"one-stage random" and "text+vision / finetuned" are the same model and are
trained once. All rows score the same test queries with the same first stage.
"""

from __future__ import annotations

import copy
import time
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import numpy as np

from contract.reports import markdown_table
from training.artifacts import write_json, write_jsonl
from training.candidates import FirstStage, load_first_stage, sample_rows, scored_test_rows
from training.dataset import Dataset, load_dataset, with_summaries
from training.metrics import PAPER_KEYS, paper_metrics
from training.teacher.align import align_vision
from training.teacher.build import build_backbone
from training.teacher.config import TeacherConfig
from training.teacher.examples import Embeddings, ExampleFactory
from training.teacher.run import (
    compute_embeddings,
    reranked_metrics,
    train_stage,
    versus_first_stage,
)
from training.teacher.scoring import score_rows

GROUPS = ("modality", "history", "fraction")


def row_slug(name: str) -> str:
    """A row's file name under scores/."""
    return "".join(c if c.isalnum() else "-" for c in name).strip("-")


class Ablation:
    def __init__(self, ds: Dataset, fs: FirstStage, cfg: TeacherConfig, out: Path):
        self.ds, self.fs, self.cfg, self.out = ds, fs, cfg, out
        self.train_rows = [r for r in ds.queries("train") if r["query_id"] in fs.rows]
        test_rows = scored_test_rows(ds, fs, cfg.test_fraction, cfg.seed)  # the teacher's sample, for every row
        if cfg.test_fraction < 1.0:
            fs.metrics = paper_metrics([fs.ids(r["query_id"]) for r in test_rows], [r["product_id"] for r in test_rows])
        self.n_test = len(test_rows)
        self.test_hits = [r for r in test_rows if r["product_id"] in fs.ids(r["query_id"])]
        self.rows: dict[str, dict[str, Any]] = {}

    def evaluate(self, name: str, backbone: Any, cfg: TeacherConfig, mode: str, emb: Embeddings | None,
                 extra: dict[str, Any] | None = None) -> dict[str, Any]:
        factory = ExampleFactory(self.ds, cfg, backbone.prompt_builder(), emb)
        t = time.time()
        scored = score_rows(backbone, factory, self.fs, self.test_hits, mode, cfg.seed, f"scoring {name}")
        m = reranked_metrics(scored, self.n_test)
        tokens = [n for s in scored for n in s["prompt_tokens"]]
        # per-query scores, so rows can be compared pairwise later (scripts/compare_teachers.py's readings)
        (self.out / "scores").mkdir(exist_ok=True)
        write_jsonl(self.out / "scores" / f"{row_slug(name)}.jsonl", scored)
        self.rows[name] = {"metrics": m, "history": mode, "vision": cfg.vision, "train_fraction": cfg.train_fraction,
                           "prompt_tokens": round(float(np.mean(tokens)), 1) if tokens else 0,
                           "score_seconds": round(time.time() - t, 1),
                           "versus_first_stage": versus_first_stage(scored, self.n_test), **(extra or {})}
        write_json(self.out / "ablate.json", self.rows)
        return m

    def fresh(self, cfg: TeacherConfig) -> Any:
        """A new backbone; with vision and ``align_epochs``, its tower aligned once and shared by every row."""
        backbone = build_backbone(cfg)
        align_vision(backbone, self.ds, cfg, self.out / "models" / "align")
        return backbone

    def train(self, name: str, cfg: TeacherConfig, mode: str, emb: Embeddings | None = None, backbone: Any = None,
              stage: str = "stage1") -> tuple[Any, dict[str, Any]]:
        backbone = backbone if backbone is not None else self.fresh(cfg)
        rows = sample_rows(self.train_rows, cfg.train_fraction, cfg.seed)
        factory = ExampleFactory(self.ds, cfg, backbone.prompt_builder(), emb)
        t = time.time()
        log = train_stage(backbone, factory, self.fs, rows, cfg, mode, self.out / "models" / name, stage)
        # a stage found already trained in models/ is loaded: report the time its training took, not the load
        return backbone, {"train_queries": len(rows), "train_seconds": round(log.get("seconds", time.time() - t), 1),
                          "final_loss": log["loss_curve"][-1]["loss"] if log["loss_curve"] else None}


def run_ablate(data: Path, first_stage: Path, out: Path, cfg: TeacherConfig, groups: tuple[str, ...] = GROUPS,
               fractions: tuple[float, ...] = (0.05, 0.1, 0.2), summaries: list[Path] | None = None) -> dict[str, Any]:
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    ds = load_dataset(data)
    fs = load_first_stage(first_stage, ds)
    ab = Ablation(ds, fs, cfg, out)
    text_cfg = replace(cfg, vision="none")
    vis_cfg = replace(cfg, vision="cnn")

    if "modality" in groups:
        for label, c in (("text / zero-shot", text_cfg), ("text+vision / zero-shot", vis_cfg)):
            ab.evaluate(label, ab.fresh(c), c, "random", None)
        bb_text, extra = ab.train("text-finetuned", text_cfg, "random")
        ab.evaluate("text / finetuned", bb_text, text_cfg, "random", None, extra)
    if {"modality", "history", "fraction"} & set(groups):
        bb_rand, extra_rand = ab.train("one-stage-random", vis_cfg, "random")
    if "modality" in groups:
        ab.evaluate("text+vision / finetuned", bb_rand, vis_cfg, "random", None, extra_rand)
    if "history" in groups:
        bb_latest, extra = ab.train("one-stage-latest", vis_cfg, "latest")
        ab.evaluate("one-stage latest", bb_latest, vis_cfg, "latest", None, extra)
        ab.evaluate("one-stage random", bb_rand, vis_cfg, "random", None, extra_rand)
        emb = compute_embeddings(bb_rand, ds, vis_cfg)
        bb_sel, extra = ab.train("one-stage-selected", vis_cfg, "selected", emb)
        ab.evaluate("one-stage selected", bb_sel, vis_cfg, "selected", emb, extra)
        two = copy.deepcopy(bb_rand)
        two, extra = ab.train("two-stage-selected", vis_cfg, "selected", emb, backbone=two, stage="stage2")
        ab.evaluate("two-stage selected", two, vis_cfg, "selected", emb, extra)
    if "fraction" in groups:
        for frac in fractions:
            c = replace(vis_cfg, train_fraction=frac)
            bb, extra = (bb_rand, extra_rand) if frac == cfg.train_fraction else ab.train(f"fraction-{frac}", c, "random")
            ab.evaluate(f"fraction {frac:g}", bb, c, "random", None, extra)
    if summaries:
        for summ in [None, *summaries]:
            ds_s = with_summaries(ds, summ)
            info = ds_s.summaries
            mode = info["mode"] if info else "none"
            label = f"descriptions: {mode}"
            sub = Ablation(ds_s, fs, cfg, out)
            sub.rows = ab.rows
            bb, extra = sub.train(f"summ-{mode}", vis_cfg, "random")
            words = [len((p.get("summary") or p["description"]).split()) for p in ds_s.products.values()]
            sub.evaluate(label, bb, vis_cfg, "random", None, {**extra, "summaries": info,
                                                             "WC_p_avg": round(float(np.mean(words)), 1),
                                                             "WC_p_max": int(max(words))})
    write_json(out / "ablate.json", ab.rows)
    (out / "report.md").write_text(render_report(ds, fs, cfg, ab.rows))
    plot_ablation(out / "ablate.png", ab.rows)
    return ab.rows


def render_report(ds: Dataset, fs: FirstStage, cfg: TeacherConfig, rows: dict[str, Any]) -> str:
    header = ["variant", *PAPER_KEYS, "ΔNDCG@4 vs first stage, 95% interval", "wins / losses", "prompt tokens",
              "train queries", "train s"]
    table = [[f"first stage ({fs.model})", *(f"{fs.metrics[k]:.4f}" for k in PAPER_KEYS), "", "", "", "", ""]]
    for name, r in rows.items():
        m, d = r["metrics"], r.get("versus_first_stage")
        paired = ([f"{d['diff']:+.4f} [{d['ci95'][0]:+.4f}, {d['ci95'][1]:+.4f}]", f"{d['wins']} / {d['losses']}"]
                  if d else ["", ""])
        table.append([name, *(f"{m[k]:.4f}" for k in PAPER_KEYS), *paired, r["prompt_tokens"],
                      r.get("train_queries", 0), r.get("train_seconds", 0)])
    lines = [f"# Teacher ablations on {ds.name}", "",
             f"First stage `{fs.model}` (NDCG@4 {fs.metrics['NDCG@4']:.4f} over {fs.metrics['n']} test queries); backbone `{cfg.lm}`"
             "; config:", "",
             "```", ", ".join(f"{k}={v}" for k, v in asdict(cfg).items()), "```", "",
             markdown_table(header, table, align="l" + "r" * len(PAPER_KEYS) + "lrrrr"),
             "", "![ablations](ablate.png)", ""]
    return "\n".join(lines)


def plot_ablation(path: Path, rows: dict[str, Any]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(rows)
    vals = [rows[n]["metrics"]["NDCG@4"] for n in names]
    fig, ax = plt.subplots(figsize=(7, 0.4 * len(names) + 1))
    ax.barh(names[::-1], vals[::-1], color="tab:blue")
    ax.set_xlabel("NDCG@4 (test)")
    ax.set_title("HMPPS teacher ablations")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
