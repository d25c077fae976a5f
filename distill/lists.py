"""What the student trains and is evaluated on: scored lists, their arrays, per-fold feature tables.

The teacher's lists arrive typed (``training.teacher.scored.ScoredList``); the arrays are built the
way the service builds them for a request (``request_arrays``), so training and serving agree.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from contract.constants import HISTORY_CAP
from contract.errors import InputError
from contract.signals import Listing
from contract.spec import SIGNALS, FeatureSpec, build_inputs, gather_history, request_rows
from distill.features import SEQ_DIM, FeatureTables, MiniLM, build_features, with_signals
from distill.student import StudentConfig
from training.artifacts import iter_jsonl
from training.candidates import first_stage_info
from training.dataset import Dataset, as_dataset, with_summaries
from training.teacher.run import TeacherRun
from training.teacher.scored import ScoredCandidate, ScoredList


def request_history(tables: FeatureTables, ds: Dataset, row: dict[str, Any], lst: ScoredList,
                    extra: list[str] | None = None) -> tuple[list[str], Listing | None]:
    """The service's view of this list: the user's capped history and (with signals) the listing."""
    hist = [p for p in ds.history(row) if tables.has_product(p)][-HISTORY_CAP:]
    listing = None
    if tables.spec.signals:
        pids = lst.product_ids + list(extra or [])
        scores = [c.first_stage_score for c in lst.candidates] + [None] * len(extra or [])
        listing = Listing(np.arange(len(pids)), len(lst.candidates),
                          np.array([np.nan if x is None else x for x in scores], float), pids, hist)
    return hist, listing


def request_arrays(tables: FeatureTables, ds: Dataset, row: dict[str, Any], lst: ScoredList,
                    extra: list[str] | None = None, query_features: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """The arrays the service builds for this list: the same history cap, order, scores and ids.

    ``extra`` products (random negatives) are appended below the caller's list, without a score.
    """
    hist, listing = request_history(tables, ds, row, lst, extra)
    q = tables.query(row["query"]) if query_features is None else query_features
    hist_feats = tables.product(hist) if hist else np.zeros((0, tables.spec.product_dim), np.float32)
    return build_inputs(tables.spec, q, tables.product(lst.product_ids + list(extra or [])), hist_feats,
                        listing=listing)


@dataclass
class TrainingArrays:
    """Every training pair as row indices into feature tables; ``inputs_for`` gathers a batch's arrays.

    The gathered arrays (a (K_s2, Dp) history block per pair) would grow as pairs x history slots x
    feature width: 4 GB for a 2,000-user shop. The indices cost a few dozen bytes per pair.
    """

    spec: FeatureSpec
    products: np.ndarray  # (R, Dp) every fold's product table, stacked
    queries: np.ndarray  # (Q, Dq)
    query_row: np.ndarray  # (N,) into ``queries``
    candidate_row: np.ndarray  # (N,) into ``products``
    history_rows: np.ndarray  # (N, K_s2) into ``products``, -1 for an empty slot
    signals: np.ndarray | None  # (N, S)
    teacher_logits: np.ndarray  # (N, 2)
    has_teacher: np.ndarray  # (N,) 1 where the teacher scored the pair
    labels: np.ndarray  # (N,) 1 for the purchased product
    starts: np.ndarray  # (L + 1,) row offsets of the L lists; each list's rows are contiguous
    listed: np.ndarray  # (N,) True for the caller's candidates, False for the added random negatives

    def rows_for(self, rows: np.ndarray) -> dict[str, np.ndarray]:
        """``Student.forward_rows``'s inputs for these pairs: the distinct queries and product rows they read
        (candidates and history items), and each pair's query, candidate and history as indices into them (an
        empty history slot points at its own candidate; the mask drops it)."""
        cand, hist = self.candidate_row[rows], self.history_rows[rows]
        filled = hist >= 0
        used, inverse = np.unique(np.concatenate([cand, np.where(filled, hist, cand[:, None]).ravel()]),
                                  return_inverse=True)
        queries, query = np.unique(self.query_row[rows], return_inverse=True)
        out = {"queries": self.queries[queries], "query": query,
               "products": self.products[used].astype(np.float32, copy=False),
               "candidate": inverse[: len(cand)], "history": inverse[len(cand):].reshape(hist.shape),
               "history_mask": filled.astype(np.float32)}
        if self.signals is not None:
            out[SIGNALS] = self.signals[rows]
        return out

    def inputs_for(self, rows: np.ndarray) -> dict[str, np.ndarray]:
        """The student's inputs for these pairs, as ``contract.spec.build_inputs`` builds them."""
        hist, mask = gather_history(self.spec, self.products, self.history_rows[rows])
        out = {"query": self.queries[self.query_row[rows]], "candidate": self.products[self.candidate_row[rows]],
               "history": hist, "history_mask": mask}
        if self.signals is not None:
            out[SIGNALS] = self.signals[rows]
        return out


def sample_mask(scored: np.ndarray, max_lists: int, seed: int) -> np.ndarray:
    """Which lists the student trains on: every list the teacher scored (``scored``), and a seeded sample
    of the others up to ``max_lists`` in all (0: every list). It bounds an epoch's cost on a large shop,
    whose lists grow with its purchases; ``distill.json`` records how many there were and how many were used."""
    keep = np.ones(len(scored), bool)
    if max_lists and len(scored) > max_lists:
        rest = np.flatnonzero(~scored)
        keep = scored.copy()
        take = min(len(rest), max(0, max_lists - int(scored.sum())))
        keep[np.random.default_rng(seed + 7).choice(rest, size=take, replace=False)] = True
    return keep


def training_arrays(tables: dict[int | None, FeatureTables], ds: Dataset, rows: dict[str, dict[str, Any]],
                    lists: list[ScoredList], cfg: StudentConfig, rng: np.random.Generator) -> TrainingArrays:
    """Indices, teacher logits, has-teacher mask, hard labels and list offsets for every training list,
    each list's features from the tables of its cross-fitting fold (``training_tables``).

    Each list adds ``extra_negatives`` random catalog products with a hard label only:
    the teacher never scored them, so they carry no soft target.
    """
    folds = list(tables)
    first = tables[folds[0]]
    offset = {f: i * len(first.product_ids) for i, f in enumerate(folds)}
    q_rows, c_rows, h_rows, sig = [], [], [], []
    t_logits, has_t, labels, starts, listed = [], [], [], [0], []
    catalog = np.array(first.product_ids)
    for s in tqdm(lists, desc="student lists", unit="list", mininterval=5, disable=len(lists) < 20_000):
        pids = s.product_ids
        taken = set(pids)
        extra = [p for p in rng.choice(catalog, size=min(len(catalog), cfg.extra_negatives + len(pids)), replace=False)
                 if p not in taken][: cfg.extra_negatives]
        t = tables[s.fold]
        row = rows[s.query_id]
        hist, listing = request_history(t, ds, row, s, extra)
        every = pids + extra
        r, sg = request_rows(t.spec, t.query(row["query"]), t.product(every), t.product(hist) if hist else
                             np.zeros((0, t.spec.product_dim), np.float32), listing=listing)
        base = offset[s.fold]
        hist_rows = first.product_rows(hist)
        h_rows.append(np.where(r >= 0, base + hist_rows[np.maximum(r, 0)] if len(hist) else -1, -1))
        c_rows.append(base + first.product_rows(every))
        q_rows += [t.query_row(row["query"])] * len(every)
        if sg is not None:
            sig.append(sg.astype(np.float32))
        t_logits += [[c.teacher_logit or 0.0, 0.0] for c in s.candidates] + [[0.0, 0.0]] * len(extra)
        has_t += [float(c.teacher_logit is not None) for c in s.candidates] + [0.0] * len(extra)
        labels += [c.label for c in s.candidates] + [0] * len(extra)
        starts.append(starts[-1] + len(every))
        listed += [True] * len(pids) + [False] * len(extra)
    k_s2 = first.spec.k_s2
    return TrainingArrays(
        first.spec, np.concatenate([tables[f].products for f in folds]).astype(np.float32, copy=False),
        first.query_features, np.asarray(q_rows, np.int64),
        np.concatenate(c_rows) if c_rows else np.zeros(0, np.int64),
        np.concatenate(h_rows) if h_rows else np.zeros((0, k_s2), np.int64),
        np.concatenate(sig) if sig else None,
        np.asarray(t_logits, np.float32).reshape(-1, 2), np.asarray(has_t, np.float32),
        np.asarray(labels, np.float32), np.asarray(starts, np.int64), np.asarray(listed, bool))


def student_lists(teacher: TeacherRun, scored_train: list[ScoredList], max_lists: int = 0, seed: int = 0,
                  first_stage: Path | None = None) -> tuple[list[ScoredList], str, int]:
    """What the student trains on, where it came from, and how many lists there were before sampling
    (``sample_mask``).

    The first stage's holdout lists (``holdout.jsonl``: queries its shadow fit never saw) when it wrote
    them, with the teacher's logit on every (query, product) pair it scored; else the teacher-scored
    train lists, whose candidates the first stage ranked in-sample (positions there overstate it).
    """
    path = Path(first_stage or teacher.info["first_stage"]["dir"]) / "holdout.jsonl"
    if not path.is_file():
        if first_stage is not None:
            raise InputError(f"{first_stage} has no holdout.jsonl: run 'hmpps retrieve' with --holdout-folds 2 or more")
        keep = sample_mask(np.array([s.teacher_scored > 0 for s in scored_train], bool), max_lists, seed)
        return ([s for s, k in zip(scored_train, keep, strict=True) if k],
                "teacher-scored train lists (in-sample first stage)", len(scored_train))
    logits = {(s.query_id, c.product_id): c.teacher_logit for s in scored_train for c in s.candidates}
    scored_ids = {s.query_id for s in scored_train if s.teacher_scored}
    # two passes over the file: the sample is drawn from the query ids, then only its lists are built
    keep = sample_mask(np.array([line["query_id"] in scored_ids for line in iter_jsonl(path)], bool), max_lists, seed)
    lists = [first_stage_list(line, logits, line.get("fold", 0))
             for line, k in zip(iter_jsonl(path), keep, strict=True) if k]
    return lists, "the first stage's holdout lists (ranked by models that never saw their queries)", len(keep)


def first_stage_list(line: dict[str, Any], logits: dict[tuple[str, str], Any], fold: int | None) -> ScoredList:
    """A first-stage list (``candidates.jsonl``/``holdout.jsonl`` line) as a ``ScoredList``, with the teacher's
    logit on every (query, product) pair it scored (in any list: a pair's logit does not depend on the list)."""
    cands = tuple(ScoredCandidate(c["product_id"], int(c["product_id"] == line["target"]), c["score"],
                                  teacher_logit=logits.get((line["query_id"], c["product_id"])))
                  for c in line["candidates"])
    return ScoredList(line["query_id"], line["split"], line["target"], cands, fold=fold)


def first_stage_test_lists(first_stage: Path, scored_test: list[ScoredList]) -> tuple[list[ScoredList], int]:
    """Every test query of a first stage's ``candidates.jsonl`` whose target it listed, and how many test queries
    there are (the rest are misses for every reranker): the student evaluated on all of them, whatever share
    the teacher scored."""
    path = Path(first_stage) / "candidates.jsonl"
    if not path.is_file():
        raise InputError(f"{first_stage} has no candidates.jsonl: run 'hmpps retrieve' first")
    logits = {(s.query_id, c.product_id): c.teacher_logit for s in scored_test for c in s.candidates}
    lists, total = [], 0
    for line in iter_jsonl(path):
        if line["split"] != "test":
            continue
        total += 1
        if any(c["product_id"] == line["target"] for c in line["candidates"]):
            lists.append(first_stage_list(line, logits, None))
    return lists, total


def training_tables(content: FeatureTables, signals: tuple[str, ...], ds: Dataset, lists: list[ScoredList],
                    cf_dim: int, seq_dim: int = SEQ_DIM) -> dict[int | None, FeatureTables]:
    """Feature tables per cross-fitting fold: popularity and co-purchase vectors from the train purchases
    outside the fold (else a list's own target would look co-bought with its history by construction).
    Lists without a fold (in-sample ones) share tables from every train purchase."""
    folds: dict[int | None, set[str]] = {}
    for lst in lists:
        folds.setdefault(lst.fold, set()).add(lst.query_id)
    return {f: with_signals(content, signals, train_baskets(ds, ids if f is not None else set()), cf_dim, seq_dim)
            for f, ids in folds.items()}


def train_baskets(ds: Dataset, exclude: set[str]) -> list[list[str]]:
    """Each user's train purchases, oldest first (popularity, co-purchase and transition vectors), without the
    ``exclude`` queries'."""
    return [[r["product_id"] for r in seq if r["split"] == "train" and r.get("query_id") not in exclude]
            for _, seq in sorted(ds.by_user().items())]


@dataclass
class StudentData:
    """What every student trained on one teacher run shares: the dataset, the teacher's lists, the
    content features and the training lists (``run_distill`` and ``hmpps ablate-student`` read it)."""

    ds: Dataset
    teacher: TeacherRun
    train: list[ScoredList]  # the teacher-scored train lists
    test: list[ScoredList]  # the teacher-scored test lists
    rows: dict[str, dict[str, Any]]  # query id -> purchase row
    minilm: MiniLM
    content: FeatureTables  # content parts only, no signal slices
    lists: list[ScoredList]  # what the student trains on (``student_lists``)
    lists_source: str
    lists_available: int  # before sampling
    n_test: int  # every test query of the evaluation, listed or not (an unlisted one is a miss for all)
    first_stage_dir: Path  # whose lists the student trains and is evaluated on

    def tables(self, signals: tuple[str, ...], cf_dim: int, seq_dim: int = SEQ_DIM
               ) -> tuple[dict[int | None, FeatureTables], FeatureTables]:
        """Per-fold training tables, and the tables for serving and the test queries (every train purchase)."""
        return (training_tables(self.content, signals, self.ds, self.lists, cf_dim, seq_dim),
                with_signals(self.content, signals, train_baskets(self.ds, set()), cf_dim, seq_dim))


def load_student_data(data: Dataset | Path, teacher_dir: Path, max_lists: int = 0, seed: int = 0,
                      first_stage: Path | None = None) -> StudentData:
    """The teacher's run and lists; with ``first_stage``, that first stage's holdout lists to train on and all its
    test lists to evaluate on instead of the teacher's (the teacher's logits kept on every pair it scored), so a
    student can be distilled over another first stage, or scored on every test query when the teacher scored a
    sample."""
    ds = as_dataset(data)
    if first_stage is not None:
        first_stage_info(first_stage, ds)
    teacher = TeacherRun.load(teacher_dir, ds)
    ds = with_summaries(ds, teacher.summaries_dir)  # a no-op when the pipeline already applied them
    scored = teacher.scored_lists()
    train = [s for s in scored if s.split == "train"]
    test = [s for s in scored if s.split == "test"]
    if not train:
        raise InputError(f"{teacher_dir}/scores.jsonl has no scored train queries; raise score_train_fraction")
    minilm = MiniLM()
    content = build_features(ds, teacher.embeddings(), teacher_dir, teacher.config, minilm, int(teacher.config["k_s2"]))
    lists, source, available = student_lists(teacher, train, max_lists, seed, first_stage)
    n_test = teacher.n_test
    if first_stage is not None:
        test, n_test = first_stage_test_lists(first_stage, test)
    return StudentData(ds, teacher, train, test, {r["query_id"]: r for r in ds.queries()}, minilm, content, lists,
                       source, available, n_test, Path(first_stage or teacher.info["first_stage"]["dir"]))


def split_scores(probs: np.ndarray, test: list[ScoredList]) -> list[np.ndarray]:
    out, i = [], 0
    for s in test:
        k = len(s.candidates)
        out.append(probs[i:i + k])
        i += k
    return out
