"""``hmpps retrieve``: fit a first-stage ranker and write its candidates."""

from __future__ import annotations

import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

from contract.errors import InputError
from contract.reports import markdown_table
from training.artifacts import atomic_dir, write_json, write_jsonl
from training.config import load_config
from training.dataset import Dataset, as_dataset
from training.first_stage.base import Catalog, Ranker, split_validation
from training.metrics import paper_metrics, sampled_metrics
from training.report import metrics_table

MODELS = ("hem", "zam", "qem", "maps", "bm25", "pop")
NEURAL = ("hem", "zam", "qem", "maps")


def make_ranker(model: str, catalog: Catalog, config_path: Path | None, overrides: dict[str, Any]) -> tuple[Ranker, Any]:
    from training.first_stage.lexical import BM25Config, BM25Ranker, PopConfig, PopRanker

    if model == "maps":
        from training.first_stage.maps import MapsConfig, MapsRanker

        maps_cfg = load_config(MapsConfig, config_path, overrides)
        return MapsRanker(catalog, maps_cfg), maps_cfg
    if model in ("hem", "zam", "qem"):
        from training.first_stage.neural import NeuralConfig, NeuralRanker

        cfg = load_config(NeuralConfig, config_path, overrides)
        return NeuralRanker(model, catalog, cfg), cfg
    overrides = {k: v for k, v in overrides.items() if k not in ("seed", "epochs")}  # not learned
    if model == "bm25":
        cfg = load_config(BM25Config, config_path, overrides)
        return BM25Ranker(catalog, cfg), cfg
    cfg = load_config(PopConfig, config_path, overrides)
    return PopRanker(catalog, cfg), cfg


SAMPLED_NEGATIVES = 99
SAMPLED_SEED = 20250101  # fixed, so every model of a dataset sees the same negatives


def sample_negatives(rng: np.random.Generator, n_items: int, target: int, n: int) -> np.ndarray:
    """``n`` distinct products other than the target (all of them when the catalogue is smaller)."""
    pool = n_items - 1
    picks = rng.choice(pool, size=min(n, pool), replace=False)
    return picks + (picks >= target)  # skip the target's index


def top_k(scores: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    k = min(k, scores.shape[1])
    part = np.argpartition(-scores, k - 1, axis=1)[:, :k]
    part_scores = np.take_along_axis(scores, part, axis=1)
    order = np.argsort(-part_scores, axis=1, kind="stable")
    return np.take_along_axis(part, order, axis=1), np.take_along_axis(part_scores, order, axis=1)


def candidate_line(row: dict[str, Any], ids: np.ndarray, scores: np.ndarray, catalog: Catalog,
                   fit: bool, fold: int | None = None) -> dict[str, Any]:
    cands = [{"product_id": catalog.ids[i], "score": round(float(s), 6)} for i, s in zip(ids, scores, strict=True)]
    # fit False: the model never trained on this query (validation, holdout and test), so its candidates
    # look like those of a new query; a student with position signals learns only from such lines
    return {"query_id": row["query_id"], "user_id": row["user_id"], "query": row["query"], "split": row["split"],
            "target": row["product_id"], "candidates": cands, "fit": fit} | ({} if fold is None else {"fold": fold})


def shadow_candidates(ds: Dataset, model: str, catalog: Catalog, config_path: Path | None,
                      overrides: dict[str, Any], train_rows: list[dict[str, Any]], k: int, folds: int,
                      seed: int = 0) -> list[dict[str, Any]]:
    """Cross-fitting for the reranker's training data: the train queries in ``folds`` seeded folds; for
    each fold, a model of the same kind fitted on the other folds ranks that fold's queries.

    The first stage ranks its own train queries too well (their target is what it fitted), so a reranker
    that reads positions or scores from those lists would learn to trust them far more than a new
    query deserves. These lines come from models that never saw their query, as at serving time.
    """
    fold_of = np.random.default_rng(seed + 31).integers(0, folds, size=len(train_rows))
    lines = []
    for f in range(folds):
        held = [r for r, g in zip(train_rows, fold_of, strict=True) if g == f]
        rest = [r for r, g in zip(train_rows, fold_of, strict=True) if g != f]
        if not held or not rest:
            continue
        ranker, cfg = make_ranker(model, catalog, config_path, overrides)
        fit_rows, val_rows = split_validation(rest, getattr(cfg, "val_fraction", 0.1), getattr(cfg, "seed", 0) + 1 + f)
        ranker.fit(ds, fit_rows, val_rows)
        for start in range(0, len(held), 1024):
            rows = held[start : start + 1024]
            idx, sc = top_k(ranker.score(rows), k)
            lines += [candidate_line(r, i, s, catalog, fit=False, fold=f) for r, i, s in zip(rows, idx, sc, strict=True)]
    return sorted(lines, key=lambda x: x["query_id"])


def run_retrieval(data: Dataset | Path, model: str, out: Path, *, config_path: Path | None = None,
                  overrides: dict[str, Any] | None = None, k: int = 10, holdout_folds: int = 3) -> dict[str, Any]:
    """Fit, rank every query, write candidates.jsonl; for learned models with ``holdout_folds`` >= 2,
    also holdout.jsonl: every train query ranked by a model that never saw it (``shadow_candidates``)."""
    if holdout_folds == 1 or holdout_folds < 0:
        raise InputError(f"holdout_folds={holdout_folds}: use 0 (none) or 2 or more folds")
    if model not in MODELS:
        raise InputError(f"unknown --model {model!r}; choose one of {', '.join(MODELS)}")
    t0 = time.time()
    ds = as_dataset(data)
    queries = ds.queries()
    train_rows = [r for r in queries if r["split"] == "train"]
    test_rows = [r for r in queries if r["split"] == "test"]
    if not train_rows or not test_rows:
        raise InputError(f"{ds.root} needs train and test queries (found {len(train_rows)} train, {len(test_rows)} test)")
    catalog = Catalog.build(ds)
    ranker, cfg = make_ranker(model, catalog, config_path, overrides or {})
    seed = getattr(cfg, "seed", 0)
    fit_rows, val_rows = split_validation(train_rows, getattr(cfg, "val_fraction", 0.1), seed)
    train_log = ranker.fit(ds, fit_rows, val_rows)
    fitted = {r["query_id"] for r in fit_rows}
    fit_seconds = time.time() - t0

    candidates, ranked_test, targets_test = [], [], []
    neg_rng = np.random.default_rng(SAMPLED_SEED)
    pos_scores, neg_scores = [], []
    t1 = time.time()
    for start in range(0, len(queries), 1024):
        rows = queries[start : start + 1024]
        full = ranker.score(rows)
        for row, line in zip(rows, full, strict=True):  # MAPS protocol: 1 target + 99 sampled negatives
            if row["split"] == "test":
                target = catalog.index[row["product_id"]]
                pos_scores.append(line[target])
                neg_scores.append(line[sample_negatives(neg_rng, len(catalog.ids), target, SAMPLED_NEGATIVES)])
        idx, sc = top_k(full, k)
        for row, ids, scores in zip(rows, idx, sc, strict=True):
            candidates.append(candidate_line(row, ids, scores, catalog, fit=row["query_id"] in fitted))
            if row["split"] == "test":
                ranked_test.append([c["product_id"] for c in candidates[-1]["candidates"]])
                targets_test.append(row["product_id"])
    score_seconds = time.time() - t1
    t2 = time.time()
    shadow = (shadow_candidates(ds, model, catalog, config_path, overrides or {}, train_rows, k, holdout_folds, seed)
              if holdout_folds >= 2 and model in NEURAL else [])
    shadow_seconds = time.time() - t2
    metrics = paper_metrics(ranked_test, targets_test)
    sampled = sampled_metrics(np.array(pos_scores), np.array(neg_scores))
    sampled["negatives"] = min(SAMPLED_NEGATIVES, len(catalog.ids) - 1)
    hit = sum(t in r for r, t in zip(ranked_test, targets_test, strict=True)) / len(targets_test)

    with atomic_dir(out) as tmp:
        write_jsonl(tmp / "candidates.jsonl", candidates)
        if shadow:
            write_jsonl(tmp / "holdout.jsonl", shadow)
        write_json(tmp / "metrics.json", metrics)
        write_json(tmp / "sampled_metrics.json", sampled)
        info = {
            "stage": "retrieve", "model": model, "dataset": ds.name, "dataset_fingerprint": ds.fingerprint,
            "top_k": k, "config": asdict(cfg), "train_queries": len(fit_rows), "val_queries": len(val_rows),
            "test_queries": len(test_rows), "target_in_top_k": round(hit, 4),
            "sampled_protocol": sampled, "fit_seconds": round(fit_seconds, 2), "score_seconds": round(score_seconds, 2), "train_log": train_log,
            "holdout": {"queries": len(shadow), "folds": holdout_folds if shadow else 0,
                        "seconds": round(shadow_seconds, 2),
                        "target_in_top_k": round(sum(r["target"] in {c["product_id"] for c in r["candidates"]}
                                                     for r in shadow) / max(1, len(shadow)), 4)},
        }
        write_json(tmp / "retrieve.json", info)
        if model in NEURAL:
            import torch

            torch.save(ranker.state(), tmp / "model.pt")  # type: ignore[attr-defined]
        _write_report(tmp, ds, model, metrics, info)
    return metrics


def _write_report(tmp: Path, ds: Dataset, model: str, metrics: dict[str, Any], info: dict[str, Any]) -> None:
    lines = [
        f"# First stage: {model} on {ds.name}", "",
        f"Dataset fingerprint `{ds.fingerprint}`; top-{info['top_k']} candidates for "
        f"{info['train_queries'] + info['val_queries']} train and {info['test_queries']} test queries.", "",
        metrics_table({model: metrics}), "",
        f"MAPS protocol (1 target + {info['sampled_protocol']['negatives']} sampled negatives, ties against the "
        "target): " + ", ".join(f"{k} {v:.4f}" for k, v in info["sampled_protocol"].items()
                                if k.startswith(("HR", "NDCG"))), "",
        f"- test targets inside the top {info['top_k']}: {info['target_in_top_k']:.1%} (the ceiling for any reranker)",
        f"- fit {info['fit_seconds']} s, scoring {info['score_seconds']} s", "",
        *([f"- holdout for the reranker's training (`holdout.jsonl`): {info['holdout']['folds']}-fold cross-fitting, "
           f"each train query ranked by a model fitted on the other folds ({info['holdout']['queries']} queries, "
           f"{info['holdout']['seconds']} s); their targets are inside the top {info['top_k']} "
           f"{info['holdout']['target_in_top_k']:.1%} of the time", ""]
          if info["holdout"]["queries"] else []),
    ]
    epochs = info["train_log"].get("epochs") if isinstance(info["train_log"], dict) else None
    if epochs:
        lines += ["## Training", "", f"Best epoch {info['train_log']['best_epoch']} "
                  f"(validation NDCG@4 {info['train_log']['best_val_NDCG@4']}).", "",
                  markdown_table(["epoch", "loss", "val NDCG@4", "seconds"],
                                 [[e["epoch"], e["loss"], e["val_NDCG@4"], e["seconds"]] for e in epochs], align="rrrr")]
        lines += ["", "![training curve](training.png)", ""]
        _plot_training(tmp / "training.png", epochs, model)
    (tmp / "report.md").write_text("\n".join(lines))


def _plot_training(path: Path, epochs: list[dict[str, Any]], model: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.2))
    x = [e["epoch"] for e in epochs]
    ax.plot(x, [e["loss"] for e in epochs], color="tab:blue", label="train loss")
    ax.set_xlabel("epoch")
    ax.set_ylabel("loss")
    ax2 = ax.twinx()
    ax2.plot(x, [e["val_NDCG@4"] for e in epochs], color="tab:orange", label="val NDCG@4")
    ax2.set_ylabel("val NDCG@4")
    ax.set_title(f"{model}: training loss and validation NDCG@4")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
