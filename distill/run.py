"""``hmpps distill``: teacher scores -> student -> ONNX -> bundle.

Reads the pipeline's dataset, first-stage candidates and teacher outputs
(scores.jsonl, stage-1 embeddings, trained vision tower) and writes:

    OUT/metrics.json   student quality (torch, ONNX fp32, int8, tail-query encoder)
    OUT/distill.json   config, parity, timings, kept share of the teacher's gain
    OUT/report.md      the comparison table and the training curve
    OUT/bundle/        what the service loads (format: contract/bundle.py)
"""

from __future__ import annotations

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
from contract.spec import INPUT_NAMES, build_inputs, concat_inputs, yes_probability
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
from distill.features import FeatureTables, MiniLM, build_features, load_vision_tower, unit
from distill.student import Student, StudentConfig, distill_loss
from service.bundle import OnnxProductEncoder, OnnxQueryEncoder, OnnxScorer
from training.artifacts import atomic_dir, write_json, write_jsonl
from training.dataset import Dataset, as_dataset, with_summaries
from training.metrics import PAPER_KEYS, kept_gain, paired_bootstrap, paper_metrics, relative_gain, rerank
from training.pretrained import minilm_dir
from training.teacher.run import TeacherRun

PARITY_TOL = 1e-4


def _request_arrays(tables: FeatureTables, ds: Dataset, row: dict[str, Any], pids: list[str],
                    query_features: np.ndarray | None = None) -> dict[str, np.ndarray]:
    hist = [p for p in ds.history(row) if tables.has_product(p)]
    q = tables.query(row["query"]) if query_features is None else query_features
    hist_feats = tables.product(hist) if hist else np.zeros((0, tables.spec.product_dim), np.float32)
    return build_inputs(tables.spec, q, tables.product(pids), hist_feats)


def training_arrays(tables: FeatureTables, ds: Dataset, rows: dict[str, dict[str, Any]], scored: list[dict[str, Any]],
                    cfg: StudentConfig, rng: np.random.Generator) -> tuple[dict[str, np.ndarray], np.ndarray, np.ndarray, np.ndarray]:
    """Inputs, teacher logits (N, 2), has-teacher mask and hard labels for every scored train query.

    Each query adds ``extra_negatives`` random catalog products with a hard label only:
    the teacher never scored them, so they carry no soft target.
    """
    parts, t_logits, has_t, labels = [], [], [], []
    catalog = np.array(tables.product_ids)
    for s in scored:
        pids = [c["product_id"] for c in s["candidates"]]
        taken = set(pids)
        extra = [p for p in rng.choice(catalog, size=min(len(catalog), cfg.extra_negatives + len(pids)), replace=False)
                 if p not in taken][: cfg.extra_negatives]
        parts.append(_request_arrays(tables, ds, rows[s["query_id"]], pids + extra))
        t_logits += [[c["teacher_logit"], 0.0] for c in s["candidates"]] + [[0.0, 0.0]] * len(extra)
        has_t += [1.0] * len(pids) + [0.0] * len(extra)
        labels += [c["label"] for c in s["candidates"]] + [0] * len(extra)
    return (concat_inputs(parts), np.asarray(t_logits, np.float32), np.asarray(has_t, np.float32),
            np.asarray(labels, np.float32))


def train_student(spec: Any, cfg: StudentConfig, data: tuple[dict[str, np.ndarray], np.ndarray, np.ndarray, np.ndarray]
                  ) -> tuple[Student, list[dict[str, float]]]:
    torch.manual_seed(cfg.seed)
    inputs, t_logits, has_t, labels = data
    tensors = [torch.from_numpy(inputs[n]) for n in INPUT_NAMES]
    tl, ht, lab = torch.from_numpy(t_logits), torch.from_numpy(has_t), torch.from_numpy(labels)
    model = Student(spec, cfg)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(1, cfg.epochs))
    n = lab.shape[0]
    curve = []
    bar = tqdm(range(cfg.epochs), desc="student epochs", unit="ep")
    for epoch in bar:
        model.train()
        perm = torch.randperm(n)
        total = 0.0
        for i in range(0, n, cfg.batch):
            idx = perm[i:i + cfg.batch]
            logits = model(*(t[idx] for t in tensors))
            loss = distill_loss(logits, tl[idx], ht[idx], lab[idx], cfg)
            opt.zero_grad()
            loss.backward()
            opt.step()
            total += float(loss) * len(idx)
        sched.step()
        curve.append({"epoch": epoch + 1, "loss": round(total / n, 5)})
        bar.set_postfix(loss=curve[-1]["loss"])
    model.eval()
    return model, curve


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
    test_parts = [_request_arrays(tables, ds, rows[s["query_id"]], _candidate_ids(s)) for s in test]
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
    tail_inputs = concat_inputs([_request_arrays(tail_tables, ds, rows[s["query_id"]], _candidate_ids(s)) for s in test])
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
    rest = tables.products[:, : spec.product_dim - spec.sel_dim]
    curve = fit_projection(module, rest[~heldout], tables.products[~heldout][:, spec.product_sel], seed=seed)
    image_size = encoder_image_size(teacher.config)
    export_product_encoder(module, minilm.tokenizer, image_size, work / "product_encoder.onnx")
    encoder = OnnxProductEncoder(work / "product_encoder.onnx", minilm_dir() / "tokenizer.json", image_size)
    encoded = encoder.encode([(record_text(ds.products[p]), ds.image_path(p)) for p in tables.product_ids])
    cos = (unit(encoded[:, spec.product_sel]) * tables.products[:, spec.product_sel]).sum(1)
    report: dict[str, Any] = {
        "text_max_abs_diff": float(np.abs(encoded[:, : spec.text_dim] - tables.products[:, : spec.text_dim]).max()),
        "image_max_abs_diff": float(np.abs(encoded[:, spec.text_dim: spec.product_dim - spec.sel_dim]
                                           - rest[:, spec.text_dim:]).max()),
        "sel_cosine_fitted": float(cos[~heldout].mean()), "sel_cosine_heldout": float(cos[heldout].mean()),
        "final_loss": curve[-1], "image_size": image_size if cnn is not None else 0,
        "heldout_products": int(heldout.sum()),
    }
    held = {p for p, h in zip(tables.product_ids, heldout, strict=True) if h}
    touched = [s for s in test if held & set(_candidate_ids(s))]
    if touched:
        swapped = tables.products.copy()
        swapped[heldout] = encoded[heldout]
        enc_tables = FeatureTables(spec, tables.product_ids, swapped, tables.queries, tables.query_features)
        ranked = {}
        for name, t in (("offline", tables), ("encoded", enc_tables)):
            inputs = concat_inputs([_request_arrays(t, ds, rows[s["query_id"]], _candidate_ids(s)) for s in touched])
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


def run_distill(data: Dataset | Path, teacher_dir: Path, out: Path, cfg: StudentConfig | None = None,
                bundle_dir: Path | None = None) -> DistillResult:
    """Distill; the bundle lands in ``bundle_dir`` (default OUT/bundle), each directory renamed into place whole."""
    cfg = cfg or StudentConfig()
    t0 = time.time()
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    out, teacher_dir = Path(out), Path(teacher_dir)
    ds = as_dataset(data)
    teacher = TeacherRun.load(teacher_dir, ds)
    ds = with_summaries(ds, teacher.summaries_dir)  # a no-op when the pipeline already applied them
    scored = teacher.scores()
    train = [s for s in scored if s["split"] == "train"]
    test = [s for s in scored if s["split"] == "test"]
    if not train:
        raise InputError(f"{teacher_dir}/scores.jsonl has no scored train queries; raise score_train_fraction")
    rows = {r["query_id"]: r for r in ds.queries()}
    timings: dict[str, float] = {}

    t = time.time()
    minilm = MiniLM()
    tables = build_features(ds, teacher.embeddings(), teacher_dir, teacher.config, minilm, int(teacher.config["k_s2"]))
    timings["features"] = time.time() - t

    t = time.time()
    rng = np.random.default_rng(cfg.seed)
    model, curve = train_student(tables.spec, cfg, training_arrays(tables, ds, rows, train, cfg, rng))
    timings["train"] = time.time() - t

    test_inputs = concat_inputs([_request_arrays(tables, ds, rows[s["query_id"]], _candidate_ids(s)) for s in test])
    with torch.no_grad():
        torch_logits = model(*(torch.from_numpy(test_inputs[n]) for n in INPUT_NAMES)).numpy()

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
            "train_rows": int(sum(len(s["candidates"]) for s in train)), "train_queries": len(train),
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
    lines += ["", f"- trained on {d['train_queries']} teacher-scored train queries ({d['train_rows']} scored pairs) "
              f"plus {d['config']['extra_negatives']} random negatives each (hard label only)",
              f"- ONNX fp32 vs PyTorch max abs diff on {d['test_queries_scored']} test queries: {d['parity_max_abs_diff']:.2e}",
              f"- int8 vs fp32 max abs logit diff: {d['int8_max_abs_diff']:.3f}",
              f"- query encoder: mean cosine to stage-1 query embeddings {d['query_encoder']['sel_cosine_known_queries']:.3f}; "
              "`student_tail_queries` scores every test query through it, as if none were known",
              *_product_encoder_lines(d["product_encoder"]),
              "- wall time (s): " + ", ".join(f"{k} {v}" for k, v in d["seconds"].items()), ""]
    return "\n".join(lines)
