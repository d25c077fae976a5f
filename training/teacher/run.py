"""The two-stage HMPPS teacher (paper Sec. 4.3) end to end.

align:   (optional) caption-train the from-scratch vision tower, LM frozen (align.py)
stage 1: train on K_s1 random history items
embed:   mean-pooled stage-1 embeddings of every product and query (Eq. 4-5)
stage 2: continue from stage 1 with the two-step selected history (Eq. 6)
score:   P(yes) (Eq. 3) for the first stage's top-10 of every test query and a
         share of the train queries (soft labels for distillation)

The output directory is resumable: each stage's checkpoint is reused when its
config matches, and ``metrics.json`` is written last.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from contract.errors import InputError
from training.artifacts import read_json, read_jsonl, require_same_dataset, write_json, write_jsonl
from training.candidates import FirstStage, load_first_stage, sample_rows, scored_test_rows
from training.dataset import Dataset, as_dataset, with_summaries
from training.metrics import paired_bootstrap, pairwise_auc, paper_metrics, random_order, rerank
from training.teacher.align import align_vision
from training.teacher.backbone import ComposedBackbone
from training.teacher.build import build_backbone
from training.teacher.config import TeacherConfig
from training.teacher.dist import is_main, processes
from training.teacher.dist import state as dist_state
from training.teacher.examples import Embeddings, ExampleFactory, Group, load_embeddings, save_embeddings
from training.teacher.scored import ScoredList, partial_file, partial_files
from training.teacher.scoring import inference_adapters, score_rows, score_rows_processes, score_rows_ray
from training.teacher.trainer import train, training_fields


@dataclass(frozen=True)
class TeacherRun:
    """A complete teacher output directory, as the next stages read it."""

    dir: Path
    metrics: dict[str, Any]  # the paper's metrics of the teacher's reranking (metrics.json)
    info: dict[str, Any]  # teacher.json: config, first stage, logs, comparisons

    @property
    def config(self) -> dict[str, Any]:
        return dict(self.info["config"])

    @property
    def first_stage_metrics(self) -> dict[str, Any]:
        """The first stage over the same (possibly sampled) test queries as the teacher's row."""
        return dict(self.info["first_stage"]["metrics"])

    @property
    def n_test(self) -> int:
        """Every test query of the evaluation, scored or not (an unscored one is a miss for all)."""
        return int(self.info["scored_queries"]["test_total"])

    @property
    def summaries_dir(self) -> Path | None:
        return Path(self.info["summaries"]["dir"]) if self.info.get("summaries") else None

    def scores(self) -> list[dict[str, Any]]:
        return read_jsonl(self.dir / "scores.jsonl")

    def scored_lists(self) -> list[ScoredList]:
        """``scores.jsonl``, typed: what distillation reads."""
        return [ScoredList.from_json(d) for d in self.scores()]

    def embeddings(self) -> Embeddings:
        return load_embeddings(self.dir / "embeddings")

    @classmethod
    def load(cls, teacher_dir: Path, ds: Dataset) -> TeacherRun:
        teacher_dir = Path(teacher_dir)
        info_path = teacher_dir / "teacher.json"
        if not info_path.is_file() or not read_json(info_path).get("complete"):
            raise InputError(f"{teacher_dir} holds no complete teacher run (teacher.json); run 'hmpps teacher' first")
        info = read_json(info_path)
        require_same_dataset(ds.fingerprint, info["dataset_fingerprint"], f"teacher outputs in {teacher_dir}")
        return cls(teacher_dir, read_json(teacher_dir / "metrics.json"), info)


def compute_embeddings(backbone: ComposedBackbone, ds: Dataset, cfg: TeacherConfig, batch: int = 32) -> Embeddings:
    """Eq. 4-5 with the stage-1 weights: products as [t_p; v_p], queries as t_q."""
    pids = sorted(ds.products)
    queries = sorted({r["query"] for r in ds.queries()})
    factory = ExampleFactory(ds, cfg, backbone.prompt_builder())
    backbone.eval()
    vecs = []
    with inference_adapters(backbone, cfg.dtype):
        for start in tqdm(range(0, len(pids), batch), desc="embedding products", unit="batch"):
            vecs.append(backbone.embed([factory.product_segments(p) for p in pids[start:start + batch]]))
        qvecs = [backbone.embed([[q] for q in queries[s:s + batch]]) for s in range(0, len(queries), batch)]
    return Embeddings(pids, torch.cat(vecs).numpy(), queries, torch.cat(qvecs).numpy())


def train_stage(backbone: ComposedBackbone, factory: ExampleFactory, fs: FirstStage, rows: list[dict[str, Any]],
                cfg: TeacherConfig, mode: str, out: Path, stage: str) -> dict[str, Any]:
    done = out / "trained.json"
    if done.exists() and training_fields(read_json(done).get("config", {}), stage) == training_fields(asdict(cfg), stage):
        state = torch.load(out / "checkpoint" / "state.pt", weights_only=False)
        backbone.load_trainable_state(state["trainable"])
        return read_json(done)["log"]

    def groups_for_epoch(epoch: int) -> list[Group]:
        rng = np.random.default_rng(cfg.seed * 1000 + epoch + (1 if stage == "stage2" else 0))
        order = rng.permutation(len(rows))
        return [factory.training_group(rows[i], fs.list_ids(rows[i]["query_id"]), mode, rng) for i in order]

    backbone.train()
    log = train(backbone, groups_for_epoch, cfg, out / "checkpoint", stage)
    if is_main():
        write_json(done, {"stage": stage, "history": mode, "config": asdict(cfg), "log": log})
    return log


def ranked_test_lists(scored: list[dict[str, Any]], n_test: int, key: str) -> tuple[list[list[str]], list[list[str]], list[str]]:
    """(reranked, first-stage order, targets) over all ``n_test`` test queries; the unscored ones (target
    outside the top 10) are empty lists, a miss for every model."""
    test = [s for s in scored if s["split"] == "test"]
    missing = n_test - len(test)
    base = [[c["product_id"] for c in s["candidates"]] for s in test]
    ranked = [rerank(ids, [c[key] for c in s["candidates"]]) for ids, s in zip(base, test, strict=True)]
    targets = [s["target"] for s in test] + ["\0miss"] * missing
    return ranked + [[]] * missing, base + [[]] * missing, targets


def reranked_metrics(scored: list[dict[str, Any]], n_test: int, key: str = "teacher_score") -> dict[str, Any]:
    """Paper metrics over all ``n_test`` test queries; unscored ones (target outside the top 10) are misses."""
    ranked, _, targets = ranked_test_lists(scored, n_test, key)
    return paper_metrics(ranked, targets)


def versus_first_stage(scored: list[dict[str, Any]], n_test: int, key: str = "teacher_score") -> dict[str, Any]:
    """Paired bootstrap of NDCG@4 (reranked - first stage) over all ``n_test`` test queries (misses tie at 0)."""
    ranked, base, targets = ranked_test_lists(scored, n_test, key)
    return paired_bootstrap(ranked, base, targets)


def versus_random_order(scored: list[dict[str, Any]], n_test: int, key: str = "teacher_score") -> dict[str, Any]:
    """The reranked NDCG@4 against random shuffles of the same lists, over all ``n_test`` test queries."""
    ranked, _, targets = ranked_test_lists(scored, n_test, key)
    observed = paper_metrics(ranked, targets)["NDCG@4"]
    return random_order(ranked, targets, observed=observed) | {"observed": observed}


def training_queries(train_rows: list[dict[str, Any]], cfg: TeacherConfig) -> list[dict[str, Any]]:
    """The seeded sample the teacher trains on: ``train_queries`` of them when set, else ``train_fraction``.
    A prefix of one seeded permutation, so the samples of a learning curve are nested (100 within 300)."""
    if cfg.train_queries > 0:
        order = np.random.default_rng(cfg.seed + 7).permutation(len(train_rows))[: cfg.train_queries]
        return [train_rows[i] for i in sorted(order)]
    return sample_rows(train_rows, cfg.train_fraction, cfg.seed)


def run_teacher(data: Dataset | Path, first_stage: Path, out: Path, cfg: TeacherConfig,
                summaries: Path | None = None, ray: str | None = None) -> TeacherRun:
    """Train both stages, embed, score; write metrics.json, scores.jsonl, teacher.json."""
    t0 = time.time()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    ds = with_summaries(as_dataset(data), summaries)
    fs = load_first_stage(first_stage, ds)
    summ = ds.summaries
    train_rows = [ds_row for ds_row in ds.queries("train") if ds_row["query_id"] in fs.rows]
    if fs.holdout:  # learn from, and score for the student, the lists ranked as new queries would be
        train_rows = [r for r in train_rows if r["query_id"] in fs.holdout]
    test_rows = scored_test_rows(ds, fs, cfg.test_fraction, cfg.seed)  # validates test_fraction
    if not train_rows or not test_rows:
        raise InputError(f"{first_stage} has no candidates for this dataset's train/test queries")
    if cfg.test_fraction < 1.0:
        # every later comparison (pipeline report, distillation) reads the first stage from teacher.json
        fs_metrics = paper_metrics([fs.ids(r["query_id"]) for r in test_rows], [r["product_id"] for r in test_rows])
        fs_meta = {"dir": str(first_stage), "model": fs.model, "metrics": fs_metrics, "metrics_all_test": fs.metrics}
    else:
        fs_meta = {"dir": str(first_stage), "model": fs.model, "metrics": fs.metrics}
    # a teacher shown the first stage's rank learns it from lists that hold the target, as every test list
    # it can change does; elsewhere the target would carry "not listed", which no scored target ever does
    fit_pool = ([r for r in train_rows if r["product_id"] in fs.list_ids(r["query_id"])] if cfg.first_stage_rank
                else train_rows)
    fit_rows = training_queries(fit_pool, cfg)

    backbone = build_backbone(cfg)
    builder = backbone.prompt_builder()
    timings: dict[str, float] = {}

    t = time.time()
    align_log = align_vision(backbone, ds, cfg, out / "align")
    timings["align"] = time.time() - t

    t = time.time()
    log1 = train_stage(backbone, ExampleFactory(ds, cfg, builder), fs, fit_rows, cfg, "random", out / "stage1", "stage1")
    timings["stage1_train"] = time.time() - t

    t = time.time()
    if (out / "embeddings" / "index.json").exists() and (out / "stage1" / "trained.json").exists():
        emb = load_embeddings(out / "embeddings")
    else:
        emb = compute_embeddings(backbone, ds, cfg)  # every rank: stage 2 needs them, no waiting on rank 0
        if is_main():
            save_embeddings(emb, out / "embeddings")
    timings["embed"] = time.time() - t

    factory = ExampleFactory(ds, cfg, builder, emb)
    t = time.time()
    log2 = train_stage(backbone, factory, fs, fit_rows, cfg, "selected", out / "stage2", "stage2")
    timings["stage2_train"] = time.time() - t
    if not is_main():  # data-parallel training is done; rank 0 scores and writes the reports
        return TeacherRun(out, {}, {"rank": dist_state().process_index, "complete": False})

    t = time.time()
    score_train = sample_rows(train_rows, cfg.score_train_fraction, cfg.seed + 1)
    # A test query whose target is not in the top 10 is a miss for every reranker: no need to score it.
    test_hits = [r for r in test_rows if r["product_id"] in fs.ids(r["query_id"])]
    key = training_fields(asdict(cfg), "stage2")  # what the scores depend on: a resume reuses them only then
    if ray:  # the trained teacher's files are on disk: Ray actors load them and score shards of the rows
        if isinstance(data, Dataset):
            raise InputError("teacher scoring on Ray needs the dataset as a directory")
        scored = score_rows_ray(ray, Path(data), first_stage, out, cfg, test_hits + score_train, summaries)
    elif cfg.score_processes > 1 and not torch.cuda.is_available():  # one GPU is one process's
        scored = score_rows_processes(cfg.score_processes, ds.root, first_stage, out, cfg, test_hits + score_train,
                                      key, summaries)
    else:
        scored = score_rows(backbone, factory, fs, test_hits + score_train, "selected", cfg.seed, "teacher scoring",
                            partial=partial_file(out), key=key)
    timings["score"] = time.time() - t
    metrics = reranked_metrics(scored, n_test=len(test_rows))

    write_jsonl(out / "scores.jsonl", scored)
    for f in partial_files(out):
        f.unlink()
    tokens = [n for s in scored for n in s["prompt_tokens"]]
    info = {
        "stage": "teacher", "dataset": ds.name, "dataset_fingerprint": ds.fingerprint,
        "first_stage": fs_meta,
        "summaries": summ, "config": asdict(cfg), "train_queries": len(fit_rows),
        "train_lists": "holdout" if fs.holdout else "in-sample",
        "scored_queries": {"test": len(test_hits), "test_total": len(test_rows), "train": len(score_train)},
        "prompt_tokens": {"mean": round(float(np.mean(tokens)), 1), "max": int(np.max(tokens))},
        "versus_first_stage": versus_first_stage(scored, n_test=len(test_rows)),
        "versus_random_order": versus_random_order(scored, n_test=len(test_rows)),
        "within_query_auc": {k: round(pairwise_auc([s for s in scored if s["split"] == "test"], f"{k}_score"), 4)
                             for k in ("first_stage", "teacher")},
        "align": align_log,
        "logs": {"stage1": log1, "stage2": log2}, "processes": processes(),
        "seconds": {k: round(v, 1) for k, v in timings.items()} | {"total": round(time.time() - t0, 1)},
        "complete": True,
    }
    write_json(out / "teacher.json", info)
    write_json(out / "metrics.json", metrics)
    return TeacherRun(out, metrics, info)
