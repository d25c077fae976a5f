"""``hmpps retrain``: fine-tune a bundle's student on logged clicks, with position-bias correction.

Input: a bundle, its training checkpoint (``student.pt``), and a ``hmpps data
from-logs`` directory. Each labelled ranking is rebuilt as the service saw it:
the caller's order, scores and list length from the served record, the query
and product features from the bundle, and the user's history as of the
request (the logged history events before it, newest first, then the
bundle's seeded history), through the same ``contract.spec.build_inputs``.

Position bias: inverse propensity weighting. A click at served position k is
weighted by 1 / P(examined at k) (clipped), with the propensities that
``from-logs`` estimated from the logs. Chosen over a position feature because
the student's input contract stays as it is: the retrained model is a drop-in
bundle for the same service, and the student already reads the caller's
position as a signal, which a served-position feature would be confounded
with. Skipped items above the last click were examined under the cascade
model and keep weight 1.

The loss is the softmax of each list's clicks over the whole shown list, each
click weighted by its grade (purchase > efficient click > click) and inverse
propensity (``click_loss``); ``correction=none`` trains on the cascade labels
at face value instead, for comparison. Every logged item (labelled or not)
adds a KL term to the serving student's own outputs (``anchor_weight``): a few thousand clicks should move the model where
they say something, not everywhere. The epoch with the lowest held-out click
loss is kept, which may be the serving student itself (epoch 0).
"""

from __future__ import annotations

import copy
import os
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from contract.arms import write_experiment
from contract.bundle import write_manifest
from contract.errors import InputError
from contract.reports import markdown_table, write_json
from contract.signals import Listing
from contract.spec import FeatureSpec, build_inputs, concat_inputs, yes_probability
from distill.bundle_files import slug
from distill.checks import PARITY_TOL
from distill.export import export_student, onnx_logits, quantize_int8
from distill.student import Student, StudentConfig
from distill.tables import BundleTables, held_out_lists
from distill.train import student_logits
from training.artifacts import atomic_dir, write_jsonl
from training.clicklog.from_logs import read_labelled
from training.clicklog.labels import LabelledRanking
from training.clicklog.propensities import Propensities

CORRECTIONS = ("ipw", "none")


@dataclass
class RetrainConfig:
    # "ipw": clicks weighted by 1 / propensity, softmax over the whole shown list;
    # "none": the naive baseline, cascade labels taken at face value
    correction: str = "ipw"
    ipw_clip: float = 10.0  # the largest inverse propensity a click can get
    anchor_weight: float = 1.0  # KL to the serving student on every logged item
    listwise_weight: float = 1.0  # "none" only: the listwise term beside the pointwise one
    lr: float = 3e-4
    weight_decay: float = 1e-4
    epochs: int = 20
    patience: int = 4
    lists_per_batch: int = 32
    val_fraction: float = 0.15
    seed: int = 0
    threads: int = 0

    def __post_init__(self) -> None:
        if self.correction not in CORRECTIONS:
            raise InputError(f"correction={self.correction!r}: expected one of {CORRECTIONS}")
        for name in ("ipw_clip", "lr"):
            if not getattr(self, name) > 0:
                raise InputError(f"{name}={getattr(self, name)}: must be positive")
        if self.ipw_clip < 1:
            raise InputError(f"ipw_clip={self.ipw_clip}: must be at least 1 (an inverse propensity is >= 1)")
        if self.anchor_weight < 0 or self.listwise_weight < 0:
            raise InputError("anchor_weight and listwise_weight must be >= 0")
        if not 0 < self.val_fraction < 0.5:
            raise InputError(f"val_fraction={self.val_fraction}: must be in (0, 0.5)")
        if self.epochs < 1 or self.patience < 1 or self.lists_per_batch < 1:
            raise InputError("epochs, patience and lists_per_batch must be at least 1")


def history_at(tables: BundleTables, user: str, ts: float, live: dict[str, list[list[Any]]]) -> list[str]:
    """The user's history the service read at ``ts``, oldest first: logged events before it (newest
    first), then the bundle's seeded history, capped, keeping products with features."""
    newest = [pid for t, pid in reversed(live.get(user, [])) if t < ts] + tables.seeded.get(user, [])
    return [p for p in newest[: tables.history_cap] if tables.has(p)][::-1]


def ranking_inputs(tables: BundleTables, r: LabelledRanking, live: dict[str, list[list[Any]]]
                   ) -> tuple[dict[str, np.ndarray], list[int]] | None:
    """The student's inputs for one logged ranking (caller's order), and which items they cover."""
    caller = sorted(range(len(r.items)), key=lambda k: r.items[k].original_position)
    known = [k for k in caller if tables.has(r.items[k].product_id)]
    if not known:
        return None
    pids = [r.items[k].product_id for k in known]
    hist = history_at(tables, r.user_id, r.ts, live)
    listing = None
    if tables.spec.signals:
        scores = [r.items[k].caller_score for k in known]
        listing = Listing(np.array([r.items[k].original_position for k in known]), r.listed,
                          np.array([np.nan if s is None else s for s in scores], float), pids, hist)
    inputs = build_inputs(tables.spec, tables.query(r.query), tables.product(pids), tables.product(hist),
                          listing=listing)
    return inputs, known


@dataclass
class ClickArrays:
    inputs: dict[str, np.ndarray]
    labels: np.ndarray  # (N,) 1, 0, or -1 unobserved
    weights: np.ndarray  # (N,) the loss weight of a labelled item (IPW applied to clicks)
    starts: np.ndarray  # (L + 1,)
    positions: np.ndarray  # (N,) served positions


def click_arrays(tables: BundleTables, rankings: list[LabelledRanking], live: dict[str, list[list[Any]]],
                 props: Propensities | None, cfg: RetrainConfig) -> tuple[ClickArrays, dict[str, int]]:
    parts, labels, weights, positions, starts = [], [], [], [], [0]
    skipped = {"no_label": 0, "no_features": 0}
    for r in tqdm(rankings, desc="logged rankings -> inputs", unit="list"):
        if not any(i.label is not None for i in r.items):
            skipped["no_label"] += 1
            continue
        built = ranking_inputs(tables, r, live)
        if built is None:
            skipped["no_features"] += 1
            continue
        inputs, known = built
        parts.append(inputs)
        for k in known:
            it = r.items[k]
            w = it.weight
            if it.label == 1 and cfg.correction == "ipw" and props is not None:
                w *= props.weight(it.served_position, cfg.ipw_clip)
            labels.append(-1 if it.label is None else it.label)
            weights.append(w if it.label is not None else 0.0)
            positions.append(it.served_position)
        starts.append(starts[-1] + len(known))
    if not parts:
        raise InputError("no logged ranking has a label and known products: nothing to learn from "
                         f"({skipped['no_label']} without a click, {skipped['no_features']} without features)")
    return ClickArrays(concat_inputs(parts), np.asarray(labels, np.int64), np.asarray(weights, np.float32),
                       np.asarray(starts, np.int64), np.asarray(positions, np.int64)), skipped


def click_loss(logits: torch.Tensor, labels: torch.Tensor, weights: torch.Tensor, valid: torch.Tensor,
               listwise_weight: float, whole_list: bool = False) -> torch.Tensor:
    """The click objective over (L, width) lists; ``logits`` are the rows of ``valid``'s True cells, row-major.

    ``whole_list`` (inverse propensity weighting): the softmax of each list's clicks over every item
    shown, each click weighted by its grade / propensity. Under the position-based model this is an
    unbiased estimate of the listwise loss on true relevance (Joachims et al. 2017; Ai et al. 2018);
    skipped items need no label of their own, which matters because "skipped above the last click"
    is only a negative if the user really examined top-down (the cascade model).

    Otherwise (the naive baseline): weighted yes/no cross-entropy on the cascade labels plus the
    softmax of the clicks over the labelled items only.
    """
    margin = logits[:, 0] - logits[:, 1]
    pos_w = torch.zeros(valid.shape, dtype=margin.dtype)
    pos_w[valid] = torch.where(labels == 1, weights, torch.zeros_like(weights))
    grid = torch.full(valid.shape, -1e4, dtype=margin.dtype)
    lab = labels >= 0
    grid[valid] = margin if whole_list else torch.where(lab, margin, torch.full_like(margin, -1e4))
    listwise = -(pos_w * torch.log_softmax(grid, dim=1)).sum() / pos_w.sum().clamp(min=1e-6)
    if whole_list:
        return listwise
    w = weights * lab
    ce = torch.nn.functional.cross_entropy(logits, (1 - labels.clamp(min=0)).long(), reduction="none")
    return (ce * w).sum() / w.sum().clamp(min=1e-6) + listwise_weight * listwise


def _kl(logits: torch.Tensor, anchor: torch.Tensor) -> torch.Tensor:
    p = torch.softmax(anchor, -1)
    return (p * (torch.log(p.clamp(min=1e-9)) - torch.log_softmax(logits, -1))).sum(-1).mean()


def load_student(path: Path, spec: FeatureSpec) -> tuple[Student, StudentConfig]:
    if not Path(path).is_file():
        raise InputError(f"{path}: no student checkpoint (hmpps distill writes OUT/student.pt)")
    ck = torch.load(path, map_location="cpu", weights_only=False)
    cfg = StudentConfig.from_checkpoint(ck["config"])
    if FeatureSpec.from_dict(ck["spec"]).to_dict() != spec.to_dict():
        raise InputError(f"{path} was trained for another feature spec than this bundle's: pass the bundle's own "
                         "student.pt with --student")
    model = Student(spec, cfg)
    model.load_state_dict(ck["state_dict"])
    model.eval()
    return model, cfg


def default_checkpoint(bundle: Path) -> Path:
    """``student.pt`` beside the bundle (hmpps retrain's layout) or in the pipeline's ``distill/``."""
    for p in (Path(bundle).parent / "student.pt", Path(bundle).parent / "distill" / "student.pt"):
        if p.is_file():
            return p
    raise InputError(f"no student.pt found beside {bundle} or in {Path(bundle).parent / 'distill'}; "
                     "pass --student PATH")


def fine_tune(model: Student, data: ClickArrays, cfg: RetrainConfig) -> tuple[Student, list[dict[str, float]]]:
    torch.manual_seed(cfg.seed)
    names = model.spec.input_names
    tensors = [torch.from_numpy(data.inputs[n]) for n in names]
    anchor = torch.from_numpy(student_logits(model, data.inputs))
    lab, w = torch.from_numpy(data.labels), torch.from_numpy(data.weights)
    starts = data.starts
    n_lists = len(starts) - 1
    width = int(np.diff(starts).max())
    pad = np.full((n_lists, width), -1, np.int64)
    for i in range(n_lists):
        pad[i, : starts[i + 1] - starts[i]] = np.arange(starts[i], starts[i + 1])
    whole = cfg.correction == "ipw"
    perm = np.random.default_rng(cfg.seed).permutation(n_lists)
    n_val = max(1, int(round(cfg.val_fraction * n_lists))) if n_lists >= 10 else 0
    val, fit = perm[:n_val], perm[n_val:] if n_val else perm

    def held_out_loss() -> float:
        if not n_val:
            return float("nan")
        model.eval()
        grid = torch.from_numpy(pad[val])
        valid = grid >= 0
        idx = grid[valid]
        with torch.no_grad():
            return float(click_loss(model(*(t[idx] for t in tensors)), lab[idx], w[idx], valid, cfg.listwise_weight,
                                    whole))

    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    best = held_out_loss()
    curve = [{"epoch": 0, "val_click_loss": round(best, 5)}]
    best_state, bad = copy.deepcopy(model.state_dict()), 0
    bar = tqdm(range(cfg.epochs), desc="fine-tune on clicks", unit="ep")
    for epoch in bar:
        model.train()
        order = fit[np.random.default_rng(cfg.seed + epoch + 1).permutation(len(fit))]
        total, seen = 0.0, 0
        for i in range(0, len(order), cfg.lists_per_batch):
            grid = torch.from_numpy(pad[order[i:i + cfg.lists_per_batch]])
            valid = grid >= 0
            idx = grid[valid]
            logits = model(*(t[idx] for t in tensors))
            loss = click_loss(logits, lab[idx], w[idx], valid, cfg.listwise_weight, whole)
            if cfg.anchor_weight > 0:
                loss = loss + cfg.anchor_weight * _kl(logits, anchor[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            total += float(loss) * len(idx)
            seen += len(idx)
        point = {"epoch": epoch + 1, "loss": round(total / max(1, seen), 5),
                 "val_click_loss": round(held_out_loss(), 5)}
        curve.append(point)
        bar.set_postfix(point)
        if not n_val:
            best_state = copy.deepcopy(model.state_dict())
            continue
        if point["val_click_loss"] < best - 1e-5:
            best, best_state, bad = point["val_click_loss"], copy.deepcopy(model.state_dict()), 0
        else:
            bad += 1
            if bad >= cfg.patience:
                break
    model.load_state_dict(best_state)
    model.eval()
    return model, curve


def offline_eval(tables: BundleTables, data: Path, first_stage: Path, students: dict[str, Path]) -> dict[str, Any]:
    """NDCG@4 on the dataset's held-out test queries for each student (ONNX fp32) and the first stage,
    inputs built from the bundle as the service builds them, with paired intervals against the first."""
    from training.metrics import paired_values_bootstrap, per_query

    tests = held_out_lists(tables, data, first_stage)
    per: dict[str, np.ndarray] = {"first stage": per_query(tests.lists, tests.targets)}
    for name, path in students.items():
        per[name] = tests.per_query(yes_probability(onnx_logits(path, tests.inputs)))
    names = list(students)
    out: dict[str, Any] = {"queries": len(tests.lists), "NDCG@4": {k: float(v.mean()) for k, v in per.items()}}
    if len(names) == 2:
        out["paired"] = paired_values_bootstrap(per[names[1]], per[names[0]])
        out["paired"]["pair"] = f"{names[1]} - {names[0]}"
    return out


@dataclass
class RetrainResult:
    out: Path
    bundle: Path
    version: str
    info: dict[str, Any]


def retrain(bundle: Path, logs: Path, out: Path, cfg: RetrainConfig | None = None, student: Path | None = None,
            data: Path | None = None, first_stage: Path | None = None) -> RetrainResult:
    """Fine-tune, export (parity-checked), write OUT/bundle, OUT/student.pt, OUT/arms.yaml, OUT/report.md."""
    cfg = cfg or RetrainConfig()
    if (data is None) != (first_stage is None):
        raise InputError("offline evaluation needs both --data and --candidates")
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    t0 = time.time()
    tables = BundleTables(bundle)
    model, student_cfg = load_student(student or default_checkpoint(bundle), tables.spec)
    rankings, live, props = read_labelled(logs)
    if cfg.correction == "ipw" and props is None:
        raise InputError(f"{logs}: no propensities (no shown ranking); use --set correction=none")
    arrays, skipped = click_arrays(tables, rankings, live, props, cfg)
    # the checkpoint must be the bundle's student: its logits match the bundle's ONNX on logged inputs
    sample = np.arange(min(256, len(arrays.labels)))
    sampled = {k: v[sample] for k, v in arrays.inputs.items()}
    drift = float(np.abs(onnx_logits(tables.dir / tables.manifest.models["student"], sampled)
                         - student_logits(model, sampled)).max())
    if drift > PARITY_TOL * 10:
        raise InputError(f"the checkpoint is not this bundle's student (logits differ by {drift:.2e}); "
                         "pass the bundle's own student.pt with --student")
    model, curve = fine_tune(model, arrays, cfg)
    with atomic_dir(out) as tmp:
        work = tmp / "work"
        work.mkdir()
        export_student(model, sampled, work / "student.onnx")
        parity = float(np.abs(onnx_logits(work / "student.onnx", arrays.inputs)
                              - student_logits(model, arrays.inputs)).max())
        if parity > PARITY_TOL:
            raise RuntimeError(f"ONNX/PyTorch parity failed: max abs diff {parity:.2e} > {PARITY_TOL}")
        quantize_int8(work / "student.onnx", work / "student.int8.onnx")
        dst = tmp / "bundle"
        shutil.copytree(tables.dir, dst)
        (dst / "manifest.json").unlink()
        old = tables.manifest
        for key in ("student", "student_int8"):
            if key in old.models:
                shutil.copyfile(work / ("student.onnx" if key == "student" else "student.int8.onnx"),
                                dst / old.models[key])
        info: dict[str, Any] = {
            "stage": "retrain", "from_bundle": old.version, "logs": str(logs), "config": asdict(cfg),
            "rankings": len(rankings), "trained_lists": len(arrays.starts) - 1, "skipped": skipped,
            "labelled_items": int((arrays.labels >= 0).sum()), "clicks": int((arrays.labels == 1).sum()),
            "propensities": props.by_position if props else None, "curve": curve,
            "parity_max_abs_diff": parity,
        }
        extra = dict(old.extra) | {"retrained_from": old.version,
                                   "retrain": {k: info[k] for k in ("config", "trained_lists", "clicks")}}
        manifest = write_manifest(dst, slug(old.dataset), old.dataset, old.dataset_fingerprint, old.spec,
                                  old.models, old.features, extra)
        info["bundle_version"] = manifest.version
        if data is not None and first_stage is not None:
            info["offline"] = offline_eval(tables, data, first_stage, {
                "current": tables.dir / old.models["student"], "retrained": work / "student.onnx"})
        torch.save({"config": student_cfg.to_dict(), "spec": tables.spec.to_dict(), "state_dict": model.state_dict(),
                    "retrain": asdict(cfg)}, tmp / "student.pt")
        shutil.rmtree(work)
        info["seconds"] = round(time.time() - t0, 1)
        write_json(tmp / "retrain.json", info)
        (tmp / "report.md").write_text(_report(info))
        write_jsonl(tmp / "curve.jsonl", curve)
    # the serving bundle and the retrained one side by side, 50/50, paths relative to the file
    base = Path(out).resolve()
    write_experiment(Path(out) / "arms.yaml", f"retrained-vs-current-{manifest.version}", f"retrain-{manifest.version}",
                     [("current", 50, os.path.relpath(Path(bundle).resolve(), base)), ("retrained", 50, "bundle")])
    return RetrainResult(Path(out), Path(out) / "bundle", manifest.version, info)


def _report(info: dict[str, Any]) -> str:
    c = info["config"]
    lines = [f"# Retrained on logged clicks: {info['from_bundle']} -> {info['bundle_version']}", "",
             f"Position-bias correction: **{c['correction']}** (clip {c['ipw_clip']}); anchor to the serving student "
             f"{c['anchor_weight']}; {info['trained_lists']} labelled lists ({info['clicks']} clicks, "
             f"{info['labelled_items']} labelled items) of {info['rankings']} logged rankings; skipped {info['skipped']}.",
             "", markdown_table(["epoch", "train loss", "held-out click loss"],
                                [[p["epoch"], p.get("loss", "-"), p["val_click_loss"]] for p in info["curve"]])]
    if info.get("propensities"):
        lines += ["", "Propensities (relative to the top): "
                  + ", ".join(f"{i + 1}: {p:.3f}" for i, p in enumerate(info["propensities"]))]
    off = info.get("offline")
    if off:
        lines += ["", f"## Offline NDCG@4 on {off['queries']} held-out test queries", "",
                  markdown_table(["model", "NDCG@4"], [[k, f"{v:.4f}"] for k, v in off["NDCG@4"].items()])]
        if "paired" in off:
            p = off["paired"]
            lines += ["", f"{p['pair']}: {p['diff']:+.4f}, 95% paired bootstrap interval "
                          f"[{p['ci95'][0]:+.4f}, {p['ci95'][1]:+.4f}] ({p['wins']} wins, {p['losses']} losses)"]
    lines += ["", f"ONNX/PyTorch parity: {info['parity_max_abs_diff']:.2e}; {info['seconds']} s."]
    return "\n".join(lines) + "\n"
