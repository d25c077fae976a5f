"""Teacher scoring: P(yes) for each candidate of a query's first-stage list (Eq. 3), in this process,
in spawned CPU processes, or on Ray; resumable through a partial file.

Selected-history scoring draws nothing at random, so any split of the rows gives the one-process
scores. At inference the LoRA adapters run in the LM's dtype (``inference_adapters``): in float32
beside bfloat16 weights each adapted layer cast its input up and its output back, about a tenth of
a scoring step on a CPU.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from contextlib import contextmanager
from dataclasses import asdict, dataclass, replace
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from training.artifacts import read_jsonl
from training.candidates import FirstStage, load_first_stage
from training.dataset import Dataset, with_summaries
from training.teacher.align import align_vision
from training.teacher.backbone import ComposedBackbone
from training.teacher.build import build_backbone
from training.teacher.config import DTYPES, TeacherConfig
from training.teacher.examples import ExampleFactory, load_embeddings
from training.teacher.scored import ScoredCandidate, ScoredList, partial_file, partial_files


@contextmanager
def inference_adapters(model: torch.nn.Module, dtype: str) -> Iterator[None]:
    """LoRA adapter weights in the LM's ``dtype`` for the duration (inference only); float32 again after."""
    kept: dict[str, torch.Tensor] = {}
    target = getattr(torch, dtype) if dtype in DTYPES else torch.float32
    for name, p in model.named_parameters():
        if "lora_" in name and p.dtype != target:
            kept[name] = p.data
            p.data = p.data.to(target)
    try:
        yield
    finally:
        for name, p in model.named_parameters():
            if name in kept:
                p.data = kept[name]


def score_chunk(backbone: ComposedBackbone, factory: ExampleFactory, fs: FirstStage, rows: list[dict[str, Any]],
                mode: str, rng: np.random.Generator) -> list[dict[str, Any]]:
    """Teacher scores of each row's first-stage list; the rows' prompts go to the backbone together (it
    splits them into ``score_batch`` prompts per pass), so a GPU scores several queries per pass."""
    groups = [factory.scoring_group(row, fs.list_ids(row["query_id"]), mode, rng) for row in rows]
    probs, margins = backbone.score([p for g in groups for p in g.prompts])
    out, at = [], 0
    for row, g in zip(rows, groups, strict=True):
        n = len(g.prompts)
        fs_scores = [c["score"] for c in fs.line(row["query_id"])["candidates"]]
        out.append(ScoredList(
            row["query_id"], row["split"], row["product_id"],
            tuple(ScoredCandidate(p, int(y), s, round(float(pr), 6), round(float(m), 5))
                  for p, s, pr, m, y in zip(g.product_ids, fs_scores, probs[at: at + n], margins[at: at + n],
                                            g.labels, strict=True)),
            row["user_id"], row["query"], prompt_tokens=tuple(pr.meta.get("tokens", 0) for pr in g.prompts),
        ).to_json())
        at += n
    return out


def score_rows(backbone: ComposedBackbone, factory: ExampleFactory, fs: FirstStage, rows: list[dict[str, Any]],
               mode: str, seed: int, desc: str = "scoring", partial: Path | None = None,
               key: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """Score each row's candidates. With ``partial``, each scored row is appended to that file as it is
    done and a rerun with the same ``key`` (what the scores depend on) scores only the rows not in it, so
    an interrupted scoring of thousands of queries resumes; selected-history scoring draws nothing at
    random, so a resumed run gives the same scores."""
    backbone.eval()
    rng = np.random.default_rng(seed)
    done = _scored_before(partial, key) if partial is not None else {}
    todo = [r for r in rows if r["query_id"] not in done]
    sink = None
    if partial is not None:
        if not done:
            partial.write_text(json.dumps({"key": key}) + "\n")
        sink = partial.open("a")
    # as many queries per pass as score_batch prompts hold (one on a CPU profile, tens on a GPU)
    per_pass = max(1, backbone.cfg.score_batch // 10)
    bar = tqdm(desc=desc, unit="q", initial=len(rows) - len(todo), total=len(rows))
    try:
        with inference_adapters(backbone, backbone.cfg.dtype), backbone.held_header():
            _score_todo(backbone, factory, fs, todo, mode, rng, per_pass, done, sink, bar)
    finally:
        bar.close()
        if sink is not None:
            sink.close()
    return [done[r["query_id"]] for r in rows]


def _score_todo(backbone: ComposedBackbone, factory: ExampleFactory, fs: FirstStage, todo: list[dict[str, Any]],
                mode: str, rng: np.random.Generator, per_pass: int, done: dict[str, dict[str, Any]],
                sink: Any, bar: Any) -> None:
    for start in range(0, len(todo), per_pass):
        for line in score_chunk(backbone, factory, fs, todo[start: start + per_pass], mode, rng):
            done[line["query_id"]] = line
            if sink is not None:
                sink.write(json.dumps(line) + "\n")
        if sink is not None:
            sink.flush()
        bar.update(min(per_pass, len(todo) - start))


@dataclass
class TrainedTeacher:
    """A trained stage-2 teacher loaded from its directory, ready to score (``score_rows``)."""

    ds: Dataset
    fs: FirstStage
    cfg: TeacherConfig
    backbone: ComposedBackbone
    factory: ExampleFactory


def load_trained_teacher(data: Path, first_stage: Path, teacher: Path, cfg: TeacherConfig,
                         summaries: Path | None = None) -> TrainedTeacher:
    """The dataset, first stage, stage-2 weights and stage-1 embeddings of a teacher run. ``cfg`` may differ
    from the run's in runtime fields and ``dtype`` (what a parity check of the dtype changes)."""
    from training.dataset import load_dataset

    ds = with_summaries(load_dataset(data), summaries)
    fs = load_first_stage(first_stage, ds)
    backbone = build_backbone(cfg)
    align_vision(backbone, ds, cfg, teacher / "align")  # restores the saved alignment
    state = torch.load(teacher / "stage2" / "checkpoint" / "state.pt", weights_only=False, map_location="cpu")
    backbone.load_trainable_state(state["trainable"])
    backbone.eval()
    factory = ExampleFactory(ds, cfg, backbone.prompt_builder(), load_embeddings(teacher / "embeddings"))
    return TrainedTeacher(ds, fs, cfg, backbone, factory)


class ScoreBatch:
    """Teacher scoring as a Ray Data callable class: each actor loads the dataset, the first stage, the
    trained stage-2 teacher and its embeddings once, then scores batches of query rows. Selected-history
    scoring draws nothing at random, so any split of the rows gives the one-process scores."""

    def __init__(self, data: str, first_stage: str, teacher: str, config: dict[str, Any], summaries: str | None):
        trained = load_trained_teacher(Path(data), Path(first_stage), Path(teacher), TeacherConfig(**config),
                                       None if summaries is None else Path(summaries))
        self.ds, self.fs, self.backbone, self.factory = trained.ds, trained.fs, trained.backbone, trained.factory
        self.rng = np.random.default_rng(trained.cfg.seed)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        rows = [json.loads(str(r)) for r in batch["row"]]
        with inference_adapters(self.backbone, self.backbone.cfg.dtype), self.backbone.held_header():
            out = [json.dumps(line) for line in score_chunk(self.backbone, self.factory, self.fs, rows, "selected",
                                                             self.rng)]
        return {"scored": np.asarray(out)}


def score_rows_ray(address: str, data: Path, first_stage: Path, teacher: Path, cfg: TeacherConfig,
                   rows: list[dict[str, Any]], summaries: Path | None = None, actors: int | None = None,
                   batch_size: int = 4) -> list[dict[str, Any]]:
    """``score_rows(..., "selected", ...)`` for a trained teacher directory, as a Ray Data job (an actor per
    CPU it is given, one thread each)."""
    from training.raydata import ray_init

    ray = ray_init(address)
    ray.data.DataContext.get_current().execution_options.preserve_order = True
    n = actors or max(1, int(ray.cluster_resources().get("CPU", 1)))
    items = [{"row": json.dumps(r)} for r in rows]
    ds = ray.data.from_items(items).map_batches(
        ScoreBatch, fn_constructor_args=(str(data), str(first_stage), str(teacher), asdict(replace(cfg, threads=1)),
                                         None if summaries is None else str(summaries)),
        batch_size=batch_size, batch_format="numpy", concurrency=n, num_cpus=1)
    scored = [json.loads(str(x)) for b in ds.iter_batches(batch_size=256, batch_format="numpy") for x in b["scored"]]
    order = {r["query_id"]: i for i, r in enumerate(rows)}
    return sorted(scored, key=lambda s: order[s["query_id"]])


def _scored_before(partial: Path, key: dict[str, Any] | None) -> dict[str, dict[str, Any]]:
    """The scored lines of a partial file by query id, when its first line holds ``key``; else none."""
    lines = read_jsonl(partial) if partial.is_file() else []
    if not lines or lines[0].get("key") != key:
        return {}
    return {r["query_id"]: r for r in lines[1:] if "query_id" in r}


def score_rows_processes(processes: int, data: Path, first_stage: Path, teacher: Path, cfg: TeacherConfig,
                         rows: list[dict[str, Any]], key: dict[str, Any], summaries: Path | None = None
                         ) -> list[dict[str, Any]]:
    """``score_rows(..., "selected", ...)`` over ``processes`` spawned CPU processes, the cores split among
    them: two one-thread processes score about 1.3x the queries per second of one two-thread process
    (docs/benchmarks.md). Each loads the trained teacher from ``teacher`` and scores a shard of the rows
    that no partial file there holds yet, into its own ``scores.partial.<k>.jsonl``, so an interrupted
    run resumes whatever the number of processes."""
    done = {q: line for path in partial_files(teacher) for q, line in _scored_before(path, key).items()}
    todo = [r for r in rows if r["query_id"] not in done]
    threads = max(1, (cfg.threads or os.cpu_count() or 1) // processes)
    config = asdict(replace(cfg, threads=threads))
    shards = [(k, todo[k::processes]) for k in range(processes) if todo[k::processes]]
    if shards:
        with ProcessPoolExecutor(len(shards), mp_context=get_context("spawn")) as pool:
            futures = [pool.submit(_score_shard, str(data), str(first_stage), str(teacher), config,
                                   None if summaries is None else str(summaries), shard, k, key)
                       for k, shard in shards]
            for future in futures:
                done.update({line["query_id"]: line for line in future.result()})
    return [done[r["query_id"]] for r in rows]


def _score_shard(data: str, first_stage: str, teacher: str, config: dict[str, Any], summaries: str | None,
                 rows: list[dict[str, Any]], k: int, key: dict[str, Any]) -> list[dict[str, Any]]:
    cfg = TeacherConfig(**config)
    t = load_trained_teacher(Path(data), Path(first_stage), Path(teacher), cfg,
                             None if summaries is None else Path(summaries))
    return score_rows(t.backbone, t.factory, t.fs, rows, "selected", cfg.seed, f"teacher scoring, process {k + 1}",
                      partial=partial_file(Path(teacher), k), key=key)
