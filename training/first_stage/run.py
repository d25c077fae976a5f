"""``hmpps retrieve``: fit a first-stage ranker and write its candidates."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import numpy as np

from contract.errors import InputError
from contract.reports import markdown_table
from training.artifacts import atomic_dir, write_json, write_jsonl
from training.config import load_config
from training.dataset import Dataset, as_dataset
from training.first_stage.base import Catalog, Ranker, split_validation
from training.first_stage.jobs import processes_now, run_jobs, take_idle_cores
from training.metrics import paper_metrics, sampled_metrics
from training.report import metrics_table

MODELS = ("hem", "zam", "qem", "seq", "maps", "bm25", "pop")
NEURAL = ("hem", "zam", "qem", "seq", "maps")
SHARDED = ("hem", "zam", "qem", "seq")  # rebuilt from their state on every rank (NeuralRanker.from_state)


def make_ranker(model: str, catalog: Catalog, config_path: Path | None, overrides: dict[str, Any]) -> tuple[Ranker, Any]:
    from training.first_stage.lexical import BM25Config, BM25Ranker, PopConfig, PopRanker

    if model == "maps":
        from training.first_stage.maps import MapsConfig, MapsRanker

        maps_cfg = load_config(MapsConfig, config_path, overrides)
        return MapsRanker(catalog, maps_cfg), maps_cfg
    if model in ("hem", "zam", "qem", "seq"):
        from training.first_stage.neural import NeuralConfig, NeuralRanker

        cfg = load_config(NeuralConfig, config_path, overrides)
        if not cfg.item_loss:  # the model's own (NeuralConfig.item_loss); the checkpoint records which
            cfg = replace(cfg, item_loss="softmax" if model == "seq" else "nsl")
        if cfg.item_loss not in ("nsl", "softmax") or cfg.shared_negatives < 1:
            raise InputError(f"first-stage config item_loss={cfg.item_loss!r}, shared_negatives={cfg.shared_negatives}: "
                             "choose item_loss nsl or softmax, and shared_negatives >= 1")
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
    """Each row's ``k`` best product indices and their scores, best first. torch.topk: 28 ms per 1,024 x
    20,000 chunk on one thread against 283 ms for numpy's argpartition and sort, which at 100,000 users
    made the selection, not the scoring, most of the first stage's 462 s over 1.1M queries. Among equal
    scores the order is torch's (ties are unordered, as they were)."""
    import torch

    k = min(k, scores.shape[1])
    val, idx = torch.topk(torch.from_numpy(np.ascontiguousarray(scores)), k, dim=1, sorted=True)
    return idx.numpy().astype(np.int64), val.numpy()


def rank_rows(ranker: Ranker, rows: list[dict[str, Any]], k: int, chunk: int = 1024,
              on_scores: Callable[[list[int], np.ndarray], None] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The top ``k`` (at most the catalogue's size) product indices and scores of every row, scored
    ``chunk`` rows at a time.

    Rows are scored grouped by query text, so a ranker that embeds the catalogue per distinct query
    (MAPS) does it once per query rather than once per query per chunk. ``on_scores(positions,
    full_scores)`` sees each chunk's full-catalogue scores (the sampled protocol reads them).
    """
    order = sorted(range(len(rows)), key=lambda i: rows[i]["query"])
    idx = np.zeros((len(rows), k), np.int64)
    sc = np.zeros((len(rows), k), np.float64)
    for start in range(0, len(order), chunk):
        take_idle_cores()
        pos = order[start : start + chunk]
        full = ranker.score([rows[i] for i in pos])
        if on_scores is not None:
            on_scores(pos, full)
        i, s = top_k(full, k)
        idx[pos, : i.shape[1]], sc[pos, : s.shape[1]] = i, s
    return idx, sc


def candidate_line(row: dict[str, Any], ids: np.ndarray, scores: np.ndarray, catalog: Catalog,
                   fit: bool, fold: int | None = None) -> dict[str, Any]:
    cands = [{"product_id": catalog.ids[i], "score": round(float(s), 6)} for i, s in zip(ids, scores, strict=True)]
    # fit False: the model never trained on this query (validation, holdout and test), so its candidates
    # look like those of a new query; a student with position signals learns only from such lines
    return {"query_id": row["query_id"], "user_id": row["user_id"], "query": row["query"], "split": row["split"],
            "target": row["product_id"], "candidates": cands, "fit": fit} | ({} if fold is None else {"fold": fold})


def fold_of(train_rows: list[dict[str, Any]], folds: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed + 31).integers(0, folds, size=len(train_rows))


# holdout lists for at most this many train queries by default: the student trains on at most 50,000 lists
# (distill's ``max_lists``), so ranking more of them only costs fits
HOLDOUT_QUERIES = 50_000


def holdout_sample(where: np.ndarray, max_queries: int, seed: int) -> np.ndarray:
    """Which train rows get a holdout list: all of them, or a seeded sample of ``max_queries`` taken fold by
    fold (all of fold 0 in a random order, then fold 1, ...), so only the folds the sample reaches need a
    fit. Folds are drawn independently of the rows, so the sample is still uniform over the train queries."""
    if not max_queries or max_queries >= len(where):
        return np.ones(len(where), dtype=bool)
    order = np.lexsort((np.random.default_rng(seed + 37).random(len(where)), where))
    mask = np.zeros(len(where), dtype=bool)
    mask[order[:max_queries]] = True
    return mask


def shadow_fold(ds: Dataset, model: str, catalog: Catalog, config_path: Path | None, overrides: dict[str, Any],
                train_rows: list[dict[str, Any]], k: int, where: np.ndarray, listed: np.ndarray, f: int
                ) -> dict[str, Any]:
    """Cross-fitting for the reranker's training data: the train queries fall in seeded folds (``where``,
    from ``fold_of``); for fold ``f``, a model of the same kind fitted on the other folds ranks that
    fold's queries that are ``listed`` (all of them, or those of ``holdout_sample``).

    The first stage ranks its own train queries too well (their target is what it fitted), so a reranker
    that reads positions or scores from those lists would learn to trust them far more than a new
    query deserves. These lines come from models that never saw their query, as at serving time.
    Returns the fold's rows (positions in ``train_rows``) and their top-k arrays: lines are formatted
    only as they are written, so a million of them never sit in memory as dicts. The fold's model fits on
    every row outside the fold, listed or not.
    """
    t = time.time()
    in_fold = where == f
    pos = np.flatnonzero(in_fold & listed)
    empty = {"positions": pos[:0], "idx": np.zeros((0, k), np.int64), "sc": np.zeros((0, k)), "seconds": 0.0}
    if not len(pos) or in_fold.all():
        return empty
    held = [train_rows[i] for i in pos]
    rest = [r for r, inside in zip(train_rows, in_fold, strict=True) if not inside]
    ranker, cfg = make_ranker(model, catalog, config_path, overrides)
    fit_rows, val_rows = split_validation(rest, getattr(cfg, "val_fraction", 0.1), getattr(cfg, "seed", 0) + 1 + f)
    ranker.fit(ds, fit_rows, val_rows)
    idx, sc = rank_rows(ranker, held, k)
    return {"positions": pos, "idx": idx, "sc": sc, "seconds": time.time() - t}


def fit_first_stage(ds: Dataset, model: str, catalog: Catalog, config_path: Path | None, overrides: dict[str, Any],
                    queries: list[dict[str, Any]], train_rows: list[dict[str, Any]]) -> tuple[Ranker, dict[str, Any]]:
    """The first stage itself, fitted on the train queries (early-stopped on a validation slice of them)."""
    t0 = time.time()
    ranker, cfg = make_ranker(model, catalog, config_path, overrides)
    fit_rows, val_rows = split_validation(train_rows, getattr(cfg, "val_fraction", 0.1), getattr(cfg, "seed", 0))
    train_log = ranker.fit(ds, fit_rows, val_rows)
    fitted = {r["query_id"] for r in fit_rows}
    return ranker, {"fitted": np.array([r["query_id"] in fitted for r in queries]), "config": asdict(cfg),
                    "train_log": train_log, "fit_rows": len(fit_rows), "val_rows": len(val_rows),
                    "fit_seconds": time.time() - t0,
                    "state": ranker.state() if model in NEURAL else None}  # type: ignore[attr-defined]


def rank_first_stage(ranker: Ranker, catalog: Catalog, queries: list[dict[str, Any]], positions: np.ndarray,
                     k: int) -> dict[str, Any]:
    """The top k of the queries at ``positions``, and for the test queries among them the scores of the MAPS
    sampled protocol (the target and 99 seeded negatives, by test index)."""
    import torch

    t = time.time()
    test_index = {i: j for j, i in enumerate(i for i, r in enumerate(queries) if r["split"] == "test")}
    n_neg = min(SAMPLED_NEGATIVES, len(catalog.ids) - 1)
    sampled_j: list[int] = []
    pos_scores: list[float] = []
    neg_scores: list[np.ndarray] = []

    def sampled(local: list[int], full: np.ndarray) -> None:  # MAPS protocol: 1 target + 99 sampled negatives
        for i, line in zip(local, full, strict=True):
            if (j := test_index.get(int(positions[i]))) is not None:
                target = catalog.index[queries[int(positions[i])]["product_id"]]
                sampled_j.append(j)
                pos_scores.append(float(line[target]))
                # negatives seeded per test query: the same for every model, whatever order it is scored in
                neg_scores.append(line[sample_negatives(np.random.default_rng([SAMPLED_SEED, j]), len(catalog.ids),
                                                        target, SAMPLED_NEGATIVES)])

    idx, sc = rank_rows(ranker, [queries[int(i)] for i in positions], k, on_scores=sampled)
    return {"positions": positions, "idx": idx, "sc": sc, "sampled_j": np.array(sampled_j, np.int64),
            "pos_scores": np.array(pos_scores), "neg_scores": np.array(neg_scores).reshape(len(pos_scores), n_neg),
            "seconds": time.time() - t, "threads": torch.get_num_threads()}


def merge_ranked(parts: list[dict[str, Any]], n_queries: int, n_test: int, k: int) -> dict[str, Any]:
    """The shards of ``rank_first_stage`` as one: top-k arrays over every query, the sampled metrics."""
    idx, sc = np.zeros((n_queries, k), np.int64), np.zeros((n_queries, k))
    n_neg = parts[0]["neg_scores"].shape[1]
    pos_scores, neg_scores = np.zeros(n_test), np.zeros((n_test, n_neg))
    for p in parts:
        idx[p["positions"], : p["idx"].shape[1]], sc[p["positions"], : p["sc"].shape[1]] = p["idx"], p["sc"]
        pos_scores[p["sampled_j"]], neg_scores[p["sampled_j"]] = p["pos_scores"], p["neg_scores"]
    return {"idx": idx, "sc": sc, "sampled": sampled_metrics(pos_scores, neg_scores),
            "score_seconds": max(p["seconds"] for p in parts), "score_threads": max(p["threads"] for p in parts),
            "score_processes": len(parts)}


def run_retrieval(data: Dataset | Path, model: str, out: Path, *, config_path: Path | None = None,
                  overrides: dict[str, Any] | None = None, k: int = 10, holdout_folds: int = 3,
                  holdout_queries: int = HOLDOUT_QUERIES) -> dict[str, Any]:
    """Fit, rank every query, write candidates.jsonl; for learned models with ``holdout_folds`` >= 2,
    also holdout.jsonl: each train query (or a seeded sample of ``holdout_queries`` of them; 0: all)
    ranked by a model fitted on the other folds (``shadow_fold``).

    The fits (the first stage and each fold's shadow) are independent jobs. Under ``accelerate launch``
    with N processes, rank r runs jobs r, r + N, ...; each hands its result to rank 0 through a file
    beside OUT, and rank 0 alone writes OUT. Then every rank scores a shard of the queries with the fitted
    first stage (``SHARDED`` models). In one process the jobs run in turn.
    """
    if holdout_folds == 1 or holdout_folds < 0:
        raise InputError(f"holdout_folds={holdout_folds}: use 0 (none) or 2 or more folds")
    if holdout_queries < 0:
        raise InputError(f"holdout_queries={holdout_queries}: use 0 (every train query) or a positive number")
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
    k = min(k, len(catalog.ids))
    overrides = overrides or {}
    seed = getattr(make_ranker(model, catalog, config_path, overrides)[1], "seed", 0)
    folds = holdout_folds if holdout_folds >= 2 and model in NEURAL else 0
    where = fold_of(train_rows, folds, seed) if folds else np.zeros(0, np.int64)
    listed = holdout_sample(where, holdout_queries, seed)
    reached = sorted({int(f) for f in where[listed]})  # a fold the sample does not reach is not fitted
    jobs: list[int | None] = [None, *reached]  # None: the first stage itself; f: fold f's shadow

    procs = processes_now()
    # with several processes, the fitted first stage's full-catalogue scoring (queries x products, the one
    # part of retrieve above linear) is split into a query shard per rank; MAPS and the lexical rankers,
    # whose models are not rebuilt from their state, score on the rank that fitted them
    sharded = procs > 1 and model in SHARDED
    n_test = len(test_rows)

    def run_job(job: int | None) -> Any:
        if job is None:
            ranker, fit = fit_first_stage(ds, model, catalog, config_path, overrides, queries, train_rows)
            if sharded:
                return fit
            return fit | merge_ranked([rank_first_stage(ranker, catalog, queries, np.arange(len(queries)), k)],
                                      len(queries), n_test, k)
        return shadow_fold(ds, model, catalog, config_path, overrides, train_rows, k, where, listed, job)

    results = run_jobs(jobs, run_job, Path(out), everywhere=sharded)
    if results is None:  # another rank's process: rank 0 writes OUT
        return {}
    main = results[None]
    if sharded:
        from training.first_stage.neural import NeuralRanker

        ranker = NeuralRanker.from_state(main["state"], catalog, ds)
        shards = np.array_split(np.arange(len(queries)), procs)
        ranked = run_jobs(list(range(procs)), lambda i: rank_first_stage(ranker, catalog, queries, shards[i], k),
                          Path(out).parent / f"{Path(out).name}.scoring")
        if ranked is None:
            return {}
        main = main | merge_ranked(list(ranked.values()), len(queries), n_test, k)
    # holdout lines ordered by query id: (fold, row in that fold's arrays) per line
    held = sorted(((train_rows[p]["query_id"], f, j) for f in reached
                   for j, p in enumerate(results[f]["positions"])), key=lambda x: x[0])
    shadow_seconds = sum(results[f]["seconds"] for f in reached)
    is_test = np.array([r["split"] == "test" for r in queries])
    ranked_test = [[catalog.ids[i] for i in line] for line in main["idx"][is_test]]
    targets_test = [r["product_id"] for r in test_rows]
    shadow_hits = sum(train_rows[results[f]["positions"][j]]["product_id"] in
                      {catalog.ids[i] for i in results[f]["idx"][j]} for _, f, j in held)
    metrics = paper_metrics(ranked_test, targets_test)
    sampled = main["sampled"] | {"negatives": min(SAMPLED_NEGATIVES, len(catalog.ids) - 1)}
    hit = sum(t in r for r, t in zip(ranked_test, targets_test, strict=True)) / len(targets_test)

    with atomic_dir(out) as tmp:
        write_jsonl(tmp / "candidates.jsonl", (candidate_line(r, i, s, catalog, fit=bool(fit)) for r, i, s, fit in
                                               zip(queries, main["idx"], main["sc"], main["fitted"], strict=True)))
        if held:
            write_jsonl(tmp / "holdout.jsonl", (
                candidate_line(train_rows[results[f]["positions"][j]], results[f]["idx"][j], results[f]["sc"][j],
                               catalog, fit=False, fold=f) for _, f, j in held))
        write_json(tmp / "metrics.json", metrics)
        write_json(tmp / "sampled_metrics.json", sampled)
        info = {
            "stage": "retrieve", "model": model, "dataset": ds.name, "dataset_fingerprint": ds.fingerprint,
            "top_k": k, "config": main["config"], "train_queries": main["fit_rows"], "val_queries": main["val_rows"],
            "test_queries": len(test_rows), "target_in_top_k": round(hit, 4),
            "sampled_protocol": sampled, "fit_seconds": round(main["fit_seconds"], 2),
            "score_seconds": round(main["score_seconds"], 2), "score_processes": main["score_processes"],
            "score_threads": main["score_threads"],
            "train_log": main["train_log"],
            "processes": processes_now(), "wall_seconds": round(time.time() - t0, 2),
            "holdout": {"queries": len(held), "folds": folds if held else 0,
                        "folds_fitted": len(reached) if held else 0, "of_train_queries": len(train_rows),
                        "seconds": round(shadow_seconds, 2),
                        "target_in_top_k": round(shadow_hits / max(1, len(held)), 4)},
        }
        write_json(tmp / "retrieve.json", info)
        if main["state"] is not None:
            import torch

            torch.save(main["state"], tmp / "model.pt")
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
        f"- fit {info['fit_seconds']} s, scoring {info['score_seconds']} s"
        + (f" (query shards over {info['score_processes']} processes)" if info["score_processes"] > 1 else ""), "",
        *([f"- holdout for the reranker's training (`holdout.jsonl`): {info['holdout']['folds']}-fold cross-fitting, "
           f"each listed train query ranked by a model fitted on the other folds ({info['holdout']['queries']} of "
           f"{info['holdout'].get('of_train_queries', info['holdout']['queries'])} train queries, a seeded sample "
           f"when fewer; {info['holdout'].get('folds_fitted', info['holdout']['folds'])} fold models fitted, "
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
