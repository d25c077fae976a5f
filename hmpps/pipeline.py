"""``hmpps pipeline``: first stage -> teacher (with summaries) -> student bundle, with one report.

It sits above the stages (``training``, ``distill``), which never import it.

Each stage writes its own directory under OUT; a stage whose complete output
already exists for the same dataset is reused, so a rerun resumes.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from contract.reports import markdown_table
from distill.run import DistillResult, run_distill
from distill.student import StudentConfig
from training.artifacts import read_json, read_jsonl, write_json
from training.candidates import load_first_stage, scored_test_rows
from training.dataset import Dataset, load_dataset, with_summaries
from training.first_stage.run import NEURAL, run_retrieval
from training.headroom import versus_rules, versus_rules_table
from training.metrics import PAPER_KEYS, rerank
from training.teacher.config import TeacherConfig
from training.teacher.run import TeacherRun, run_teacher


def table1(rows: list[tuple[str, dict[str, Any]]], base_name: str, new_name: str) -> str:
    """The paper's Table 1 layout: base, + HMPPS, relative improvement."""
    base, new = dict(rows)[base_name], dict(rows)[new_name]
    rel = [f"{(new[k] / base[k] - 1) * 100:+.2f}%" if base[k] > 0 else "n/a" for k in PAPER_KEYS]
    return markdown_table(["model", *PAPER_KEYS, "n"],
                          [[name, *(f"{m[k]:.4f}" for k in PAPER_KEYS), m["n"]] for name, m in rows]
                          + [[f"Rel.Impr ({new_name} vs {base_name})", *rel, ""]])


def _align_line(log: dict[str, Any]) -> str:
    curve = log.get("loss_curve") or []
    line = (f"- vision alignment (captioning, LM frozen): {log['products']} product images, {log.get('epochs', 0)} epochs, "
            f"caption loss {curve[0]['loss']:.3f} -> {curve[-1]['loss']:.3f}" if curve
            else f"- vision alignment: {log.get('note', 'no captioning')}")
    if tower := log.get("tower"):
        line += (f"; tower first trained on {tower['trained_on']} catalog brand labels ({tower['steps']} steps, "
                 f"loss {tower['final_loss']:.3f}"
                 + (f", its head names {tower['head_picture_only']['accuracy']:.1%} of the picture-only brands"
                    if "head_picture_only" in tower else "") + "), then frozen"
                 if "steps" in tower else f"; {tower['note']}")
    before, after = log.get("probe_before"), log.get("probe_after")
    if before and after and after["calibrated"]["picture_only"] is not None:
        line += (f"; brand read from the picture alone (calibrated), on the {after['products']['picture_only']} "
                 f"products whose text has none: {after['calibrated']['picture_only']:.1%} "
                 f"(before alignment {before['calibrated']['picture_only']:.1%}, chance {after['chance']:.1%}), "
                 f"on those whose text names it: {after['calibrated']['brand_in_text']:.1%}")
    return line


def _pct(x: float | None, teacher_gain: float) -> str:
    # a share of a loss is not a share kept: only meaningful when the teacher beats the first stage
    if x is None or teacher_gain <= 0:
        return "n/a (the teacher does not beat the first stage)"
    return f"{x:.1%}"


def teacher_label(config: dict[str, Any]) -> str:
    """The teacher's row name. The tiny profile's LM is a randomly initialised 2-layer model that checks
    the plumbing in minutes and knows no language: the table says so, and where the real teacher is."""
    if config.get("lm") == "tiny":
        return "HMPPS teacher (tiny profile: random 2-layer LM, a plumbing stand-in; the real one: docs/results.md)"
    return f"HMPPS teacher ({config.get('lm')})"


def model_free_comparison(ds: Dataset, fs_dir: Path, teacher: TeacherRun, distill_dir: Path) -> dict[str, Any]:
    """Chance, the model-free rules, the teacher and the student over the teacher's test sample."""
    fs = load_first_stage(fs_dir, ds)
    rows = scored_test_rows(ds, fs, float(teacher.config["test_fraction"]), int(teacher.config["seed"]))
    models = {
        "HMPPS teacher": {s["query_id"]: rerank([c["product_id"] for c in s["candidates"]],
                                                [c["teacher_score"] for c in s["candidates"]])
                          for s in teacher.scores() if s["split"] == "test"},
        "ONNX student": {r["query_id"]: r["ranked"] for r in read_jsonl(distill_dir / "test_rankings.jsonl")},
    }
    return versus_rules(ds, fs, rows, models)


def _complete_teacher(ds: Dataset, fs_dir: Path, teacher_dir: Path, cfg: TeacherConfig) -> TeacherRun | None:
    """A finished teacher run of this dataset, config and first stage (a rerun resumes after it);
    candidates newer than its scores mean it is stale."""
    info_path = teacher_dir / "teacher.json"
    if not info_path.is_file():
        return None
    info = read_json(info_path)
    same = (info.get("complete") and info.get("dataset_fingerprint") == ds.fingerprint
            and info.get("config") == json.loads(json.dumps(asdict(cfg)))
            and Path(info["first_stage"]["dir"]).resolve() == fs_dir.resolve()
            and (fs_dir / "candidates.jsonl").stat().st_mtime <= (teacher_dir / "scores.jsonl").stat().st_mtime)
    return TeacherRun.load(teacher_dir, ds) if same else None


@dataclass(frozen=True)
class PipelineResult:
    metrics: dict[str, Any]  # {"first_stage", "teacher", "student"}: what metrics.json holds
    teacher: TeacherRun
    distilled: DistillResult


def run_pipeline(data: Path, first_stage_model: str, out: Path, cfg: TeacherConfig,
                 summaries: Path | None = None, student: StudentConfig | None = None) -> PipelineResult:
    """First stage -> teacher -> student; the student bundle goes to OUT/bundle.

    The dataset is loaded once; the summaries are applied once, for the teacher and the student
    (the first stage reads the catalogue as it is).
    """
    t0 = time.time()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    ds = load_dataset(data)
    fs_dir = out / "first_stage"
    prev = read_json(fs_dir / "retrieve.json") if (fs_dir / "retrieve.json").exists() else {}
    # a learned first stage from before cross-fitting has no holdout lists for the student: refit it
    fresh = not (first_stage_model in NEURAL and not (fs_dir / "holdout.jsonl").exists())
    if not (prev.get("dataset_fingerprint") == ds.fingerprint and prev.get("model") == first_stage_model and fresh):
        run_retrieval(ds, first_stage_model, fs_dir)
    summarized = with_summaries(ds, summaries)
    teacher = _complete_teacher(summarized, fs_dir, out / "teacher", cfg) or run_teacher(summarized, fs_dir,
                                                                                       out / "teacher", cfg)
    # the teacher's first-stage figures: the same (possibly sampled) test queries as every other row
    fs_metrics = teacher.first_stage_metrics
    distilled = run_distill(summarized, teacher.dir, out / "distill", student, bundle_dir=out / "bundle")
    metrics = {"first_stage": fs_metrics, "teacher": teacher.metrics, "student": distilled.metrics["student_onnx"]}
    rules = model_free_comparison(ds, fs_dir, teacher, out / "distill")
    metrics["versus_rules"] = rules
    write_json(out / "metrics.json", metrics)
    (out / "report.md").write_text(pipeline_report(ds.name, ds.fingerprint, first_stage_model, out, teacher, distilled,
                                                   metrics, time.time() - t0))
    return PipelineResult(metrics, teacher, distilled)


def pipeline_report(name: str, fingerprint: str, first_stage_model: str, out: Path, teacher: TeacherRun,
                    distilled: DistillResult, metrics: dict[str, Any], seconds: float) -> str:
    d = distilled.info
    fs_metrics = metrics["first_stage"]
    tg = teacher.metrics["NDCG@4"] - fs_metrics["NDCG@4"]
    info = teacher.info
    fs_name = first_stage_model.upper()
    # absent in runs from older versions
    vs, auc, chance = info.get("versus_first_stage"), info.get("within_query_auc"), info.get("versus_random_order")
    lines = [
        f"# HMPPS pipeline on {name}", "",
        f"First stage `{first_stage_model}`, teacher backbone `{info['config']['lm']}` (vision: {info['config']['vision']}), "
        f"dataset fingerprint `{fingerprint}`.", "",
        "## Reranking the first stage's top 10 (paper Table 1 layout)", "",
        *([f"Every row is over a seeded sample of {info['scored_queries']['test_total']} test queries "
           f"(test_fraction {info['config']['test_fraction']}); {fs_name} over all test queries: "
           f"NDCG@4 {info['first_stage']['metrics_all_test']['NDCG@4']:.4f}.", ""]
          if "metrics_all_test" in info["first_stage"] else []),
        table1([(fs_name, fs_metrics), ("+ " + teacher_label(info["config"]), teacher.metrics),
                ("+ ONNX student", metrics["student"])], fs_name, "+ " + teacher_label(info["config"])), "",
        f"The student keeps {_pct(d['kept_gain']['student_onnx'], tg)} of the teacher's NDCG@4 gain over {fs_name} "
        f"(int8: {_pct(d['kept_gain']['student_int8'], tg)}; every query through the tail-query encoder: "
        f"{_pct(d['kept_gain']['student_tail_queries'], tg)}). Bundle `{d['bundle_version']}` in `{out / 'bundle'}`; "
        "details in `distill/report.md`.", "",
        "## Against chance and the model-free rules", "",
        versus_rules_table(metrics["versus_rules"]), "",
        *([f"The \"HMPPS teacher\" row is the {teacher_label(info['config'])}.", ""]
          if info["config"].get("lm") == "tiny" else []),
        "## Teacher", "",
        f"- trained on {info['train_queries']} train queries (fraction {info['config']['train_fraction']}), "
        f"K_s1={info['config']['k_s1']}, K_s2={info['config']['k_s2']}, "
        f"{info['config']['random_negatives']} random + {info['config']['hard_negatives']} hard negatives",
        f"- prompt tokens: mean {info['prompt_tokens']['mean']}, max {info['prompt_tokens']['max']}",
        *([f"- NDCG@4, teacher minus {fs_name}, per query: {vs['diff']:+.4f} (paired bootstrap 95% interval "
           f"[{vs['ci95'][0]:+.4f}, {vs['ci95'][1]:+.4f}]); the teacher ranks the target higher on {vs['wins']} "
           f"queries and lower on {vs['losses']}"] if vs else []),
        *([f"- within-query AUC on the scored test queries (target vs the other candidates): {fs_name} "
           f"{auc['first_stage']:.4f}, teacher {auc['teacher']:.4f}"] if auc else []),
        *([f"- chance level: shuffling each top 10 at random scores NDCG@4 {chance['expected']['NDCG@4']:.4f} on "
           f"average (95th percentile of {chance['rounds']} shuffles {chance['p95']:.4f}); the teacher's "
           f"{chance['observed']:.4f} is reached by {100 * chance['p_value']:.1f}% of the shuffles"] if chance else []),
        *([_align_line(info["align"])] if info.get("align") else []),
        f"- summaries: {info['summaries']['mode'] if info['summaries'] else 'none (raw descriptions)'}",
        "- wall time (s): " + ", ".join(f"{k} {v}" for k, v in info["seconds"].items()),
        f"- pipeline total: {seconds:.1f} s", "",
    ]
    logs = [(stage, info["logs"][stage]) for stage in ("stage1", "stage2")]
    lines.append(markdown_table(["stage", "groups", "steps", "final loss", "seconds"], [
        [stage, log["groups"], log["steps"], log["loss_curve"][-1]["loss"] if log["loss_curve"] else float("nan"),
         log["seconds"]] for stage, log in logs]))
    return "\n".join(lines) + "\n"
