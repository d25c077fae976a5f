"""``hmpps distill``: teacher scores -> student -> ONNX -> bundle.

Reads the pipeline's dataset, first-stage candidates and teacher outputs
(scores.jsonl, stage-1 embeddings, trained vision tower) and writes:

    OUT/metrics.json   student quality (torch, ONNX fp32, int8, tail-query encoder)
    OUT/distill.json   config, parity, timings, kept share of the teacher's gain
    OUT/report.md      the comparison table and the training curve
    OUT/bundle/        what the service loads (format: contract/bundle.py)
"""

from __future__ import annotations

import copy
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from contract.bundle import PRODUCT_ENCODER, QUERY_ENCODER, STUDENT, STUDENT_INT8, TOKENIZER, write_manifest
from contract.constants import HISTORY_CAP
from contract.errors import InputError
from contract.products import record_text, summary_text
from contract.reports import markdown_table
from contract.signals import Listing
from contract.spec import build_inputs, concat_inputs, yes_probability
from distill.export import (
    ProductEncoderModule,
    QueryEncoderModule,
    export_product_encoder,
    export_query_encoder,
    export_student,
    fit_projection,
    onnx_logits,
    quantize_int8,
)
from distill.features import FeatureTables, MiniLM, build_features, load_vision_tower, unit, with_signals
from distill.student import Student, StudentConfig, distill_loss, listwise_loss
from service.core.bundle import OnnxProductEncoder, OnnxQueryEncoder, OnnxScorer
from training.artifacts import atomic_dir, read_jsonl, write_json, write_jsonl
from training.dataset import Dataset, as_dataset, with_summaries
from training.metrics import (
    PAPER_KEYS,
    kept_gain,
    paired_bootstrap,
    paper_metrics,
    query_metrics,
    relative_gain,
    rerank,
)
from training.pretrained import minilm_dir
from training.teacher.run import TeacherRun

PARITY_TOL = 1e-4


def _request_arrays(tables: FeatureTables, ds: Dataset, row: dict[str, Any], lst: dict[str, Any],
                    extra: list[str] | None = None, query_features: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """The arrays the service builds for this list: the same history cap, order, scores and ids.

    ``extra`` products (random negatives) are appended below the caller's list, without a score.
    """
    hist = [p for p in ds.history(row) if tables.has_product(p)][-HISTORY_CAP:]
    q = tables.query(row["query"]) if query_features is None else query_features
    hist_feats = tables.product(hist) if hist else np.zeros((0, tables.spec.product_dim), np.float32)
    pids = _candidate_ids(lst) + list(extra or [])
    listing = None
    if tables.spec.signals:
        k = len(lst["candidates"])
        scores = [c.get("first_stage_score") for c in lst["candidates"]] + [None] * len(extra or [])
        listing = Listing(np.arange(len(pids)), k, np.array([np.nan if x is None else x for x in scores], float),
                          pids, hist)
    return build_inputs(tables.spec, q, tables.product(pids), hist_feats, listing=listing)


@dataclass
class TrainingArrays:
    inputs: dict[str, np.ndarray]  # the student's inputs, N rows; each list's rows are contiguous
    teacher_logits: np.ndarray  # (N, 2)
    has_teacher: np.ndarray  # (N,) 1 where the teacher scored the pair
    labels: np.ndarray  # (N,) 1 for the purchased product
    starts: np.ndarray  # (L + 1,) row offsets of the L lists
    listed: np.ndarray  # (N,) True for the caller's candidates, False for the added random negatives


def training_arrays(tables: dict[int | None, FeatureTables], ds: Dataset, rows: dict[str, dict[str, Any]],
                    lists: list[dict[str, Any]], cfg: StudentConfig, rng: np.random.Generator) -> TrainingArrays:
    """Inputs, teacher logits, has-teacher mask, hard labels and list offsets for every training list,
    each list's features from the tables of its cross-fitting fold (``training_tables``).

    Each list adds ``extra_negatives`` random catalog products with a hard label only:
    the teacher never scored them, so they carry no soft target.
    """
    parts, t_logits, has_t, labels, starts, listed = [], [], [], [], [0], []
    catalog = np.array(next(iter(tables.values())).product_ids)
    for s in lists:
        pids = _candidate_ids(s)
        taken = set(pids)
        extra = [p for p in rng.choice(catalog, size=min(len(catalog), cfg.extra_negatives + len(pids)), replace=False)
                 if p not in taken][: cfg.extra_negatives]
        parts.append(_request_arrays(tables[s.get("fold")], ds, rows[s["query_id"]], s, extra))
        t_logits += [[c.get("teacher_logit") or 0.0, 0.0] for c in s["candidates"]] + [[0.0, 0.0]] * len(extra)
        has_t += [float(c.get("teacher_logit") is not None) for c in s["candidates"]] + [0.0] * len(extra)
        labels += [c["label"] for c in s["candidates"]] + [0] * len(extra)
        starts.append(starts[-1] + len(pids) + len(extra))
        listed += [True] * len(pids) + [False] * len(extra)
    return TrainingArrays(concat_inputs(parts), np.asarray(t_logits, np.float32), np.asarray(has_t, np.float32),
                          np.asarray(labels, np.float32), np.asarray(starts, np.int64), np.asarray(listed, bool))


def _val_ndcg4(margins: np.ndarray, labels: np.ndarray, rows: list[np.ndarray]) -> float:
    """Mean NDCG@4 of the purchased product over validation lists that hold it (stable ties)."""
    out = []
    for r in rows:
        m, y = margins[r], labels[r]
        if y.max() <= 0:
            continue
        p = int(np.argmax(y))
        rank = 1 + int((m > m[p]).sum() + (m[:p] == m[p]).sum())
        out.append(query_metrics(rank)["NDCG@4"])
    return float(np.mean(out)) if out else 0.0


def student_lists(teacher: TeacherRun, scored_train: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], str]:
    """What the student trains on, and where it came from.

    The first stage's holdout lists (``holdout.jsonl``: queries its shadow fit never saw) when it wrote
    them, with the teacher's logit on every (query, product) pair it scored; else the teacher-scored
    train lists, whose candidates the first stage ranked in-sample (positions there overstate it).
    """
    path = Path(teacher.info["first_stage"]["dir"]) / "holdout.jsonl"
    if not path.is_file():
        return scored_train, "teacher-scored train lists (in-sample first stage)"
    logits = {(s["query_id"], c["product_id"]): c["teacher_logit"] for s in scored_train for c in s["candidates"]}
    lists = []
    for line in read_jsonl(path):
        cands = [{"product_id": c["product_id"], "first_stage_score": c["score"],
                  "teacher_logit": logits.get((line["query_id"], c["product_id"])),
                  "label": int(c["product_id"] == line["target"])} for c in line["candidates"]]
        lists.append({"query_id": line["query_id"], "split": "train", "target": line["target"], "candidates": cands,
                      "fold": line.get("fold", 0)})
    return lists, "the first stage's holdout lists (ranked by models that never saw their queries)"


def training_tables(content: FeatureTables, signals: tuple[str, ...], ds: Dataset, lists: list[dict[str, Any]],
                    cf_dim: int) -> dict[int | None, FeatureTables]:
    """Feature tables per cross-fitting fold: popularity and co-purchase vectors from the train purchases
    outside the fold (else a list's own target would look co-bought with its history by construction).
    Lists without a fold (in-sample ones) share tables from every train purchase."""
    folds: dict[int | None, set[str]] = {}
    for lst in lists:
        folds.setdefault(lst.get("fold"), set()).add(lst["query_id"])
    return {f: with_signals(content, signals, train_baskets(ds, ids if f is not None else set()), cf_dim)
            for f, ids in folds.items()}


def train_baskets(ds: Dataset, exclude: set[str]) -> list[list[str]]:
    """Each user's train purchases (popularity and co-purchase vectors), without the ``exclude`` queries'."""
    return [[r["product_id"] for r in seq if r["split"] == "train" and r.get("query_id") not in exclude]
            for _, seq in sorted(ds.by_user().items())]


def train_student(spec: Any, cfg: StudentConfig, data: TrainingArrays) -> tuple[Student, list[dict[str, float]]]:
    """Mini-batches of whole lists, so the listwise term sees each list's candidates together.

    A seeded ``val_fraction`` of the lists is held out; the weights of the epoch with the best
    validation NDCG@4 are kept, and training stops after ``patience`` epochs without a better one
    (a few thousand lists and a 100k-parameter network overfit well before ``epochs``).
    """
    torch.manual_seed(cfg.seed)
    tensors = [torch.from_numpy(data.inputs[n]) for n in spec.input_names]
    tl, ht, lab = (torch.from_numpy(x) for x in (data.teacher_logits, data.has_teacher, data.labels))
    if not cfg.use_teacher:
        ht = torch.zeros_like(ht)
    model = Student(spec, cfg)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(1, cfg.epochs))
    starts = data.starts
    n_lists = len(starts) - 1
    width = int(np.diff(starts).max()) if n_lists else 0
    # (L, width) row index of each list, -1 padded
    pad = np.full((n_lists, width), -1, np.int64)
    for i in range(n_lists):
        pad[i, : starts[i + 1] - starts[i]] = np.arange(starts[i], starts[i + 1])
    perm = np.random.default_rng(cfg.seed + 99).permutation(n_lists)
    n_val = int(round(cfg.val_fraction * n_lists)) if n_lists >= 20 else 0
    val, fit = perm[:n_val], perm[n_val:]
    val_rows = [np.arange(starts[i], starts[i + 1])[data.listed[starts[i]:starts[i + 1]]] for i in val]
    val_idx = torch.from_numpy(np.concatenate(val_rows)) if n_val else None
    per_batch = max(1, cfg.batch // max(1, width))
    curve: list[dict[str, float]] = []
    best, best_state, bad = -1.0, None, 0
    bar = tqdm(range(cfg.epochs), desc="student epochs", unit="ep")
    for epoch in bar:
        model.train()
        order = fit[torch.randperm(len(fit)).numpy()]
        total, seen = 0.0, 0
        for i in range(0, len(order), per_batch):
            grid = torch.from_numpy(pad[order[i:i + per_batch]])
            valid = grid >= 0
            idx = grid[valid]
            logits = model(*(t[idx] for t in tensors))
            loss = distill_loss(logits, tl[idx], ht[idx], lab[idx], cfg)
            if cfg.listwise_weight > 0:
                loss = loss + cfg.listwise_weight * listwise_loss(logits, lab[idx], valid)
            opt.zero_grad()
            loss.backward()
            opt.step()
            total += float(loss) * len(idx)
            seen += len(idx)
        sched.step()
        point = {"epoch": epoch + 1, "loss": round(total / max(1, seen), 5)}
        if val_idx is not None:
            model.eval()
            with torch.no_grad():
                z = model(*(t[val_idx] for t in tensors)).numpy()
            margins = np.zeros(len(lab), np.float64)
            margins[val_idx.numpy()] = z[:, 0] - z[:, 1]
            point["val_NDCG@4"] = round(_val_ndcg4(margins, data.labels, val_rows), 5)
            if point["val_NDCG@4"] > best:
                best, best_state, bad = point["val_NDCG@4"], copy.deepcopy(model.state_dict()), 0
            else:
                bad += 1
        curve.append(point)
        bar.set_postfix(point)
        if best_state is not None and bad >= cfg.patience:
            break
    if best_state is not None:
        model.load_state_dict(best_state)
    model.eval()
    return model, curve


def student_logits(model: Student, inputs: dict[str, np.ndarray]) -> np.ndarray:
    with torch.no_grad():
        return model(*(torch.from_numpy(inputs[n]) for n in model.spec.input_names)).numpy()


def _rerank_metrics(test: list[dict[str, Any]], scores: list[np.ndarray], n_test: int) -> dict[str, Any]:
    ranked = [rerank([c["product_id"] for c in s["candidates"]], list(sc)) for s, sc in zip(test, scores, strict=True)]
    missing = n_test - len(test)
    return paper_metrics(ranked + [[]] * missing, [s["target"] for s in test] + ["\0miss"] * missing)


def _split_scores(probs: np.ndarray, test: list[dict[str, Any]]) -> list[np.ndarray]:
    out, i = [], 0
    for s in test:
        k = len(s["candidates"])
        out.append(probs[i:i + k])
        i += k
    return out


def write_bundle(dst: Path, ds: Dataset, tables: FeatureTables, files: dict[str, Path], fields: dict[str, Any]) -> str:
    """Copy models, write features, then the manifest (every file's sha256; version named after them)."""
    (dst / "tokenizer").mkdir(parents=True)
    (dst / "features").mkdir()
    for rel, src in files.items():
        shutil.copyfile(src, dst / rel)
    np.save(dst / "features" / "products.npy", tables.products)
    np.save(dst / "features" / "queries.npy", tables.query_features)
    write_json(dst / "features" / "index.json", {"products": tables.product_ids, "queries": tables.queries})
    write_jsonl(dst / "features" / "summaries.jsonl",
                ({"product_id": p, "summary": summary_text(ds.products[p].get("description") or "",
                                                           ds.products[p].get("summary"))}
                 for p in tables.product_ids))
    write_jsonl(dst / "features" / "histories.jsonl", _histories(ds))
    manifest = write_manifest(dst, _slug(ds.name), ds.name, ds.fingerprint, tables.spec, **fields)
    return manifest.version


def _slug(name: str) -> str:
    return "".join(ch if ch.isalnum() else "-" for ch in name.lower())[:32].strip("-") or "bundle"


def _histories(ds: Dataset) -> list[dict[str, Any]]:
    """Each user's train-split purchases, newest first and capped, with their times: what the service
    knows before the test period (publish seeds the live histories with it)."""
    rows = []
    for user, seq in sorted(ds.by_user().items()):
        train = [r for r in seq if r["split"] == "train"][::-1][:HISTORY_CAP]
        rows.append({"user_id": user, "history": [r["product_id"] for r in train],
                     "timestamps": [r["timestamp"] for r in train]})
    return rows


@dataclass
class Exported:
    """The exported models in ``work/`` and how closely each reproduces what it was exported from."""

    logits_fp32: np.ndarray  # ONNX fp32 on the test inputs
    logits_int8: np.ndarray  # ONNX int8, called per request as the service calls it
    logits_tail: np.ndarray  # ONNX fp32 with every test query through the tail-query encoder
    parity: float
    query_encoder: dict[str, Any]


@dataclass
class DistillResult:
    metrics: dict[str, Any]  # metrics.json: student (torch), student_onnx, student_int8, student_tail_queries
    info: dict[str, Any]  # distill.json
    bundle_dir: Path


def export_and_check(model: Student, minilm: MiniLM, tables: FeatureTables, ds: Dataset,
                     rows: dict[str, dict[str, Any]], test: list[dict[str, Any]], test_inputs: dict[str, np.ndarray],
                     torch_logits: np.ndarray, seed: int, work: Path) -> Exported:
    """Student to ONNX (parity-checked), int8, and the tail-query encoder fitted into the stage-1 space."""
    export_student(model, test_inputs, work / "student.onnx")
    onnx_fp32 = onnx_logits(work / "student.onnx", test_inputs)
    parity = float(np.abs(onnx_fp32 - torch_logits).max())
    if parity > PARITY_TOL:
        raise RuntimeError(f"ONNX/PyTorch parity failed: max abs diff {parity:.2e} > {PARITY_TOL}")
    quantize_int8(work / "student.onnx", work / "student.int8.onnx")
    # per request, as the service calls it: dynamic int8 picks activation ranges per call
    int8_scorer = OnnxScorer(work / "student.int8.onnx")
    test_parts = [_request_arrays(tables, ds, rows[s["query_id"]], s) for s in test]
    onnx_int8 = np.concatenate([int8_scorer.logits(p) for p in test_parts]) if test_parts else onnx_fp32

    qe = QueryEncoderModule(minilm.model, minilm.dim, tables.spec.sel_dim)
    sel = tables.spec
    qe_text = np.concatenate([tables.products[:, :sel.text_dim], tables.query_features[:, :sel.text_dim]])
    qe_target = np.concatenate([tables.products[:, sel.product_sel], tables.query_features[:, sel.query_sel]])
    qe_curve = fit_projection(qe, qe_text, qe_target, seed=seed)
    export_query_encoder(qe, minilm.tokenizer, work / "query_encoder.onnx")
    tail = _tail_query_features(work / "query_encoder.onnx", tables.queries)
    qe_parity = float(np.abs(tail[:, :sel.text_dim] - tables.query_features[:, :sel.text_dim]).max())
    qe_cos = float((unit(tail[:, sel.query_sel]) * tables.query_features[:, sel.query_sel]).sum(1).mean())
    tail_tables = FeatureTables(tables.spec, tables.product_ids, tables.products, tables.queries, tail)
    tail_inputs = concat_inputs([_request_arrays(tail_tables, ds, rows[s["query_id"]], s) for s in test])
    onnx_tail = onnx_logits(work / "student.onnx", tail_inputs)
    return Exported(onnx_fp32, onnx_int8, onnx_tail, parity,
                    {"text_max_abs_diff": qe_parity, "sel_cosine_known_queries": qe_cos, "final_loss": qe_curve[-1]})


def encoder_image_size(teacher_cfg: dict[str, Any]) -> int:
    """Pixels per side the product encoder reads (1 for a text-only teacher: its image input is unused)."""
    return int(teacher_cfg.get("image_size", 1)) if teacher_cfg.get("vision") == "cnn" else 1


HELDOUT_SHARE = 0.1  # products the product encoder's projection never sees: its quality check


def export_product_encoder_and_check(minilm: MiniLM, tables: FeatureTables, ds: Dataset, teacher: TeacherRun,
                                     rows: dict[str, dict[str, Any]], test: list[dict[str, Any]],
                                     seed: int, work: Path) -> dict[str, Any]:
    """The product encoder (new products without retraining), fitted without a held-out tenth of the
    catalogue; then the student on the test queries whose candidates include held-out products, with
    their encoded features and with the offline ones."""
    spec = tables.spec
    cnn = load_vision_tower(teacher.dir, teacher.config)
    module = ProductEncoderModule(minilm.model, spec.text_dim, cnn, spec.image_dim, spec.sel_dim)
    rng = np.random.default_rng(seed + 17)
    heldout = np.zeros(len(tables.product_ids), dtype=bool)
    heldout[rng.permutation(len(heldout))[: max(1, int(HELDOUT_SHARE * len(heldout)))]] = True
    rest = tables.products[:, : spec.content_dim - spec.sel_dim]
    curve = fit_projection(module, rest[~heldout], tables.products[~heldout][:, spec.product_sel], seed=seed)
    image_size = encoder_image_size(teacher.config)
    export_product_encoder(module, minilm.tokenizer, image_size, work / "product_encoder.onnx")
    encoder = OnnxProductEncoder(work / "product_encoder.onnx", minilm_dir() / "tokenizer.json", image_size)
    encoded = encoder.encode([(record_text(ds.products[p]), ds.image_path(p)) for p in tables.product_ids])
    cos = (unit(encoded[:, spec.product_sel]) * tables.products[:, spec.product_sel]).sum(1)
    report: dict[str, Any] = {
        "text_max_abs_diff": float(np.abs(encoded[:, : spec.text_dim] - tables.products[:, : spec.text_dim]).max()),
        "image_max_abs_diff": float(np.abs(encoded[:, spec.text_dim: spec.content_dim - spec.sel_dim]
                                           - rest[:, spec.text_dim:]).max()),
        "sel_cosine_fitted": float(cos[~heldout].mean()), "sel_cosine_heldout": float(cos[heldout].mean()),
        "final_loss": curve[-1], "image_size": image_size if cnn is not None else 0,
        "heldout_products": int(heldout.sum()),
    }
    held = {p for p, h in zip(tables.product_ids, heldout, strict=True) if h}
    touched = [s for s in test if held & set(_candidate_ids(s))]
    if touched:
        swapped = tables.products.copy()
        # the encoder computes the content parts; popularity and co-purchase stay as learned offline
        swapped[np.ix_(heldout, np.arange(spec.content_dim))] = encoded[heldout]
        enc_tables = FeatureTables(spec, tables.product_ids, swapped, tables.queries, tables.query_features)
        ranked = {}
        for name, t in (("offline", tables), ("encoded", enc_tables)):
            inputs = concat_inputs([_request_arrays(t, ds, rows[s["query_id"]], s) for s in touched])
            scores = _split_scores(yes_probability(onnx_logits(work / "student.onnx", inputs)), touched)
            ranked[name] = [rerank(_candidate_ids(s), list(sc)) for s, sc in zip(touched, scores, strict=True)]
        targets = [s["target"] for s in touched]
        report["heldout_queries"] = {
            "queries": len(touched), "metrics": {k: paper_metrics(r, targets) for k, r in ranked.items()},
            "encoded_minus_offline": paired_bootstrap(ranked["encoded"], ranked["offline"], targets)}
    return report


def evaluate(test: list[dict[str, Any]], n_test: int, torch_logits: np.ndarray, exported: Exported) -> dict[str, Any]:
    """The paper's metrics of each form of the student, over every test query."""
    forms = {"student": torch_logits, "student_onnx": exported.logits_fp32, "student_int8": exported.logits_int8,
             "student_tail_queries": exported.logits_tail}
    return {name: _rerank_metrics(test, _split_scores(yes_probability(logits), test), n_test)
            for name, logits in forms.items()}


def bundle_manifest_fields(ds: Dataset, tables: FeatureTables, teacher: TeacherRun, cfg: StudentConfig,
                           metrics: dict[str, Any]) -> dict[str, Any]:
    tcfg = teacher.config
    return {
        "models": {STUDENT: "student.onnx", STUDENT_INT8: "student.int8.onnx",
                   QUERY_ENCODER: "query_encoder.onnx", PRODUCT_ENCODER: "product_encoder.onnx",
                   TOKENIZER: "tokenizer/tokenizer.json"},
        "features": {"products": "features/products.npy", "queries": "features/queries.npy",
                     "index": "features/index.json", "summaries": "features/summaries.jsonl",
                     "histories": "features/histories.jsonl", "history_cap": HISTORY_CAP,
                     "image_size": encoder_image_size(tcfg)},
        "extra": {
            "teacher": {"lm": tcfg["lm"], "vision": tcfg["vision"], "k_s1": tcfg["k_s1"], "k_s2": tcfg["k_s2"]},
            "student_config": cfg.to_dict(),
            "metrics": {"first_stage": teacher.first_stage_metrics, "teacher": teacher.metrics} | metrics,
        },
    }


@dataclass
class StudentData:
    """What every student trained on one teacher run shares: the dataset, the teacher's lists, the
    content features and the training lists (``run_distill`` and ``hmpps ablate-student`` read it)."""

    ds: Dataset
    teacher: TeacherRun
    train: list[dict[str, Any]]  # the teacher-scored train lists
    test: list[dict[str, Any]]  # the teacher-scored test lists
    rows: dict[str, dict[str, Any]]  # query id -> purchase row
    minilm: MiniLM
    content: FeatureTables  # content parts only, no signal slices
    lists: list[dict[str, Any]]  # what the student trains on (``student_lists``)
    lists_source: str

    def tables(self, signals: tuple[str, ...], cf_dim: int) -> tuple[dict[int | None, FeatureTables], FeatureTables]:
        """Per-fold training tables, and the tables for serving and the test queries (every train purchase)."""
        return (training_tables(self.content, signals, self.ds, self.lists, cf_dim),
                with_signals(self.content, signals, train_baskets(self.ds, set()), cf_dim))


def load_student_data(data: Dataset | Path, teacher_dir: Path) -> StudentData:
    ds = as_dataset(data)
    teacher = TeacherRun.load(teacher_dir, ds)
    ds = with_summaries(ds, teacher.summaries_dir)  # a no-op when the pipeline already applied them
    scored = teacher.scores()
    train = [s for s in scored if s["split"] == "train"]
    test = [s for s in scored if s["split"] == "test"]
    if not train:
        raise InputError(f"{teacher_dir}/scores.jsonl has no scored train queries; raise score_train_fraction")
    minilm = MiniLM()
    content = build_features(ds, teacher.embeddings(), teacher_dir, teacher.config, minilm, int(teacher.config["k_s2"]))
    lists, source = student_lists(teacher, train)
    return StudentData(ds, teacher, train, test, {r["query_id"]: r for r in ds.queries()}, minilm, content, lists,
                       source)


def run_distill(data: Dataset | Path, teacher_dir: Path, out: Path, cfg: StudentConfig | None = None,
                bundle_dir: Path | None = None) -> DistillResult:
    """Distill; the bundle lands in ``bundle_dir`` (default OUT/bundle), each directory renamed into place whole."""
    cfg = cfg or StudentConfig()
    t0 = time.time()
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    out, teacher_dir = Path(out), Path(teacher_dir)
    timings: dict[str, float] = {}
    t = time.time()
    sd = load_student_data(data, teacher_dir)
    ds, teacher, test, rows, minilm = sd.ds, sd.teacher, sd.test, sd.rows, sd.minilm
    lists, lists_source = sd.lists, sd.lists_source
    train_tables, tables = sd.tables(tuple(cfg.signals), cfg.cf_dim)
    timings["features"] = time.time() - t

    t = time.time()
    rng = np.random.default_rng(cfg.seed)
    model, curve = train_student(tables.spec, cfg, training_arrays(train_tables, ds, rows, lists, cfg, rng))
    timings["train"] = time.time() - t

    test_inputs = concat_inputs([_request_arrays(tables, ds, rows[s["query_id"]], s) for s in test])
    torch_logits = student_logits(model, test_inputs)

    with atomic_dir(out) as tmp:
        t = time.time()
        work = tmp / "work"
        work.mkdir()
        exported = export_and_check(model, minilm, tables, ds, rows, test, test_inputs, torch_logits, cfg.seed, work)
        product_encoder = export_product_encoder_and_check(minilm, tables, ds, teacher, rows, test, cfg.seed, work)
        timings["export"] = time.time() - t

        metrics = evaluate(test, teacher.n_test, torch_logits, exported)
        fs_metrics = teacher.first_stage_metrics
        version = write_bundle(tmp / "bundle", ds, tables, {
            "student.onnx": work / "student.onnx", "student.int8.onnx": work / "student.int8.onnx",
            "query_encoder.onnx": work / "query_encoder.onnx", "product_encoder.onnx": work / "product_encoder.onnx",
            "tokenizer/tokenizer.json": minilm_dir() / "tokenizer.json",
        }, bundle_manifest_fields(ds, tables, teacher, cfg, metrics))
        torch.save({"config": cfg.to_dict(), "spec": asdict(tables.spec), "state_dict": model.state_dict()},
                   tmp / "student.pt")
        shutil.rmtree(work)
        detail = {
            "stage": "distill", "dataset": ds.name, "dataset_fingerprint": ds.fingerprint, "bundle_version": version,
            "teacher_dir": str(teacher_dir), "config": cfg.to_dict(), "spec": tables.spec.to_dict(),
            "train_rows": int(sum(len(s["candidates"]) for s in lists)), "train_queries": len(lists),
            "train_source": lists_source, "teacher_scored_pairs": int(sum(
                c.get("teacher_logit") is not None for s in lists for c in s["candidates"])),
            "test_queries_scored": len(test), "test_queries_total": teacher.n_test,
            "parity_max_abs_diff": exported.parity, "query_encoder": exported.query_encoder,
            "product_encoder": product_encoder,
            "int8_max_abs_diff": float(np.abs(exported.logits_int8 - exported.logits_fp32).max()),
            "curve": curve, "seconds": {k: round(v, 1) for k, v in timings.items()} | {"total": round(time.time() - t0, 1)},
            "kept_gain": {k: _round(kept_gain(m, teacher.metrics, fs_metrics)) for k, m in metrics.items()},
            "relative_gain_vs_first_stage": {k: _round(relative_gain(m, fs_metrics)) for k, m in metrics.items()}
            | {"teacher": _round(relative_gain(teacher.metrics, fs_metrics))},
        }
        write_json(tmp / "metrics.json", metrics)
        write_json(tmp / "distill.json", detail)
        # per-query rankings of the shipped (ONNX fp32) student: paired comparisons read them
        write_jsonl(tmp / "test_rankings.jsonl", (
            {"query_id": s["query_id"], "ranked": rerank(_candidate_ids(s), list(sc)), "candidates": _candidate_ids(s),
             "scores": [round(float(x), 6) for x in sc]}
            for s, sc in zip(test, _split_scores(yes_probability(exported.logits_fp32), test), strict=True)))
        (tmp / "report.md").write_text(_report(ds.name, fs_metrics, teacher.metrics, metrics, detail))
    final_bundle = out / "bundle"
    if bundle_dir is not None and Path(bundle_dir).resolve() != final_bundle.resolve():
        with atomic_dir(bundle_dir) as dst:
            dst.rmdir()
            final_bundle.rename(dst)
        detail["bundle_dir"] = str(bundle_dir)
        write_json(out / "distill.json", detail)
        final_bundle = Path(bundle_dir)
    return DistillResult(metrics, detail, final_bundle)


def _candidate_ids(scored_query: dict[str, Any]) -> list[str]:
    return [c["product_id"] for c in scored_query["candidates"]]


def _product_encoder_lines(pe: dict[str, Any]) -> list[str]:
    lines = [f"- product encoder (new products without retraining): text part vs offline max abs diff "
             f"{pe['text_max_abs_diff']:.1e}, image part {pe['image_max_abs_diff']:.1e}; cosine of its stage-1 "
             f"projection to the teacher's: {pe['sel_cosine_fitted']:.3f} on the products it was fitted on, "
             f"{pe['sel_cosine_heldout']:.3f} on {pe['heldout_products']} held-out products"]
    if h := pe.get("heldout_queries"):
        d = h["encoded_minus_offline"]
        lines.append(f"- the student on the {h['queries']} test queries whose candidates include held-out products: "
                     f"NDCG@4 {h['metrics']['encoded']['NDCG@4']:.4f} with their encoded features, "
                     f"{h['metrics']['offline']['NDCG@4']:.4f} with the offline ones (difference {d['diff']:+.4f}, "
                     f"95% interval [{d['ci95'][0]:+.4f}, {d['ci95'][1]:+.4f}])")
    return lines


def _round(x: float) -> float | None:
    return None if np.isnan(x) else round(float(x), 4)


def _tail_query_features(path: Path, queries: list[str]) -> np.ndarray:
    enc = OnnxQueryEncoder(path, minilm_dir() / "tokenizer.json")
    return np.stack([enc.encode(q) for q in queries]).astype(np.float32)


def _report(name: str, fs: dict[str, Any], teacher: dict[str, Any], metrics: dict[str, Any], d: dict[str, Any]) -> str:
    rows = [("first stage", fs), ("teacher", teacher)] + list(metrics.items())
    teacher_gain = teacher["NDCG@4"] - fs["NDCG@4"]

    def kept(label: str) -> str:
        share = d["kept_gain"].get(label) if teacher_gain > 0 else None  # a share of a loss means nothing
        return "" if share is None else f"{share:.1%}"
    lines = [f"# Distillation on {name}", "", f"Bundle version `{d['bundle_version']}`.", "",
             markdown_table(["model", *PAPER_KEYS, "n", "kept share of teacher gain (NDCG@4)"],
                            [[label, *(f"{m[k]:.4f}" for k in PAPER_KEYS), m["n"], kept(label)] for label, m in rows])]
    unused = "" if d["config"].get("use_teacher", True) else ", unused: use_teacher false"
    lines += ["", f"- trained on {d['train_queries']} lists ({d['train_rows']} pairs, {d.get('teacher_scored_pairs', 0)} "
              f"of them with a teacher logit{unused}) from {d.get('train_source', 'teacher-scored train lists')}, plus "
              f"{d['config']['extra_negatives']} random negatives each (hard label only)",
              f"- signals: {', '.join(d['spec'].get('signals') or []) or 'none'}",
              *([f"- epochs: {len(d['curve'])} run, the best validation NDCG@4 "
                 f"({max(c['val_NDCG@4'] for c in d['curve']):.4f}) kept"] if d["curve"] and "val_NDCG@4" in d["curve"][0]
                else []),
              f"- ONNX fp32 vs PyTorch max abs diff on {d['test_queries_scored']} test queries: {d['parity_max_abs_diff']:.2e}",
              f"- int8 vs fp32 max abs logit diff: {d['int8_max_abs_diff']:.3f}",
              f"- query encoder: mean cosine to stage-1 query embeddings {d['query_encoder']['sel_cosine_known_queries']:.3f}; "
              "`student_tail_queries` scores every test query through it, as if none were known",
              *_product_encoder_lines(d["product_encoder"]),
              "- wall time (s): " + ", ".join(f"{k} {v}" for k, v in d["seconds"].items()), ""]
    return "\n".join(lines)
