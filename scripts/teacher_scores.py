"""Per-query teacher and student scores behind the Office teacher figures, and the figures from them.

    .venv/bin/python scripts/teacher_scores.py export --data runs/office/data --teacher runs/office/t1000 \\
        --student with_teacher=runs/office/t1000_student --student without_teacher=runs/office/t1000_student_nt \\
        --out docs/results/office_teacher_scores.jsonl.gz
    .venv/bin/python scripts/teacher_scores.py figures docs/results/office_teacher_scores.jsonl.gz
    .venv/bin/python scripts/teacher_scores.py figures FILE --models teacher_100q,teacher_300q,teacher

``--teacher-run NAME=DIR`` (repeatable) adds other teacher runs on the same test sample under NAME (a
learning curve); a run cut before it scored every list is read from its ``scores.partial.jsonl`` and has
no score on the lines it did not reach. ``figures --models`` compares the models named on the lines
where each of them has scores (and on the unscored lines, misses for all), and says how many it left out.

``export`` writes one JSON line per test query of the teacher's test sample:
``{"query_id", "user_id", "target", "candidates": [first-stage order], "scores": {"teacher": [...],
"student": [...], ...}}``, one score per candidate (P(yes)). A query whose target is outside the first
stage's top 10 was not scored (every reranker misses it): its ``scores`` is null. ``figures``
recomputes NDCG@4 and the other metrics of every model over all lines, with paired bootstrap
intervals against the first stage and between the students, without rerunning any model.
"""

from __future__ import annotations

import argparse
import gzip
import json
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from training.metrics import PAPER_KEYS, paired_bootstrap, paper_metrics, rerank  # noqa: E402
from training.teacher.scored import partial_files  # noqa: E402


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    with path.open() as f:
        return [json.loads(line) for line in f if line.strip()]


def _teacher_scores(teacher: Path) -> dict[str, dict[str, Any]]:
    """A teacher run's scored test lists by query id: scores.jsonl, or a cut run's partial files
    (scores.partial.jsonl, or one per scoring process; each starts with the resume key)."""
    paths = [teacher / "scores.jsonl"] if (teacher / "scores.jsonl").is_file() else partial_files(teacher)
    if not paths:
        raise SystemExit(f"{teacher} has neither scores.jsonl nor scores.partial*.jsonl")
    return {s["query_id"]: s for p in paths for s in _read_jsonl(p) if s.get("split") == "test"}


def export(data: Path, teacher: Path, students: list[str], out: Path, teacher_runs: list[str] | None = None) -> None:
    info = json.loads((teacher / "teacher.json").read_text())
    scored = _teacher_scores(teacher)
    others: dict[str, dict[str, dict[str, Any]]] = {}
    for spec in teacher_runs or []:
        name, _, path = spec.partition("=")
        if not path:
            raise SystemExit(f"--teacher-run {spec!r}: write NAME=TEACHER_DIR")
        others[name] = _teacher_scores(Path(path))
    from training.candidates import load_first_stage, scored_test_rows
    from training.dataset import load_dataset

    fs = load_first_stage(Path(info["first_stage"]["dir"]), load_dataset(data))
    # the teacher's test sample, drawn as the teacher drew it
    sample = [fs.rows[r["query_id"]] for r in scored_test_rows(load_dataset(data), fs, float(info["config"]["test_fraction"]),
                                                                int(info["config"]["seed"]))]
    by_student: dict[str, dict[str, list[float]]] = {}
    for spec in students:
        name, _, path = spec.partition("=")
        if not path:
            raise SystemExit(f"--student {spec!r}: write NAME=DISTILL_DIR")
        ranks = _read_jsonl(Path(path) / "test_rankings.jsonl")
        if ranks and "scores" not in ranks[0]:
            raise SystemExit(f"{path}/test_rankings.jsonl has no per-candidate scores: rerun hmpps distill")
        by_student[name] = {r["query_id"]: r for r in ranks}
    if len(sample) != info["scored_queries"]["test_total"]:
        raise SystemExit(f"the test sample has {len(sample)} queries, the teacher reports "
                         f"{info['scored_queries']['test_total']}: another first stage or dataset?")
    lines = []
    for row in sample:
        qid = row["query_id"]
        cands = [c["product_id"] for c in row["candidates"]]
        line: dict[str, Any] = {"query_id": qid, "user_id": row["user_id"], "target": row["target"], "candidates": cands,
                                "scores": None}
        if qid in scored:
            t = scored[qid]
            assert [c["product_id"] for c in t["candidates"]] == cands, qid
            line["scores"] = {"teacher": [c["teacher_score"] for c in t["candidates"]]}
            for name, run in others.items():
                if qid in run:
                    assert [c["product_id"] for c in run[qid]["candidates"]] == cands, (name, qid)
                    line["scores"][name] = [c["teacher_score"] for c in run[qid]["candidates"]]
            for name, ranks in by_student.items():
                r = ranks[qid]
                assert r["candidates"] == cands, (name, qid)
                line["scores"][name] = r["scores"]
        lines.append(line)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    with gzip.open(tmp, "wt") as f:
        for line in lines:
            f.write(json.dumps(line, separators=(",", ":")) + "\n")
    tmp.replace(out)
    print(f"{out}: {len(lines)} test queries, {sum(x['scores'] is not None for x in lines)} scored, "
          f"{out.stat().st_size / 1024:.0f} KB")


def figures(path: Path, data: Path | None = None, candidates: Path | None = None, baseline: str = "first stage",
            models: list[str] | None = None, pairs: list[str] | None = None) -> str:
    with gzip.open(path, "rt") as f:
        lines = [json.loads(x) for x in f if x.strip()]
    every = sorted({k for x in lines if x["scores"] for k in x["scores"]})
    names = models or [n for n in every if all(n in x["scores"] for x in lines if x["scores"])]
    paired = [tuple(p.split(":", 1)) for p in pairs or []]
    if any(len(p) != 2 for p in paired):
        raise SystemExit("--pair expects A:B, two model names")
    if paired and data is not None and candidates is not None:
        raise SystemExit("--pair is for the plain table: leave out --data and --candidates")
    unknown = sorted((set(names) | {n for p in paired for n in p}) - set(every))
    if unknown:
        raise SystemExit(f"{path} has no scores named {', '.join(unknown)} (it has: {', '.join(every)})")
    kept = [x for x in lines if not x["scores"] or all(n in x["scores"] for n in names)]
    note = f"; {len(lines) - len(kept)} scored lines without every model's scores left out" if len(kept) < len(lines) else ""
    lines = [{**x, "scores": x["scores"] and {n: x["scores"][n] for n in names}} for x in kept]
    if data is not None and candidates is not None:
        return rules_table(lines, data, candidates)
    targets = [x["target"] for x in lines]
    ranked = {"first stage": [x["candidates"] for x in lines]}
    for name in names:
        ranked[name] = [rerank(x["candidates"], x["scores"][name]) if x["scores"] else x["candidates"] for x in lines]
    rows = [f"{len(lines)} test queries ({sum(x['scores'] is not None for x in lines)} with the target in the list{note})", "",
            "| model | " + " | ".join(PAPER_KEYS) + " | NDCG@4 − first stage [95% CI] |",
            "|---|" + "---:|" * (len(PAPER_KEYS) + 1)]
    for name, lists in ranked.items():
        m = paper_metrics(lists, targets)
        vs = "" if name == baseline else _ci(paired_bootstrap(lists, ranked[baseline], targets))
        rows.append(f"| {name} | " + " | ".join(f"{m[k]:.4f}" for k in PAPER_KEYS) + f" | {vs} |")
    students = [n for n in names if not n.startswith("teacher")]
    compared = [(a, b) for a in students for b in students if a < b] + [p for p in paired if p[0] != p[1]]
    for a, b in compared:
        if a not in ranked or b not in ranked:
            raise SystemExit(f"--pair {a}:{b}: give both to --models too (or leave --models out)")
        rows.append(f"\n{a} − {b}, NDCG@4: " + _ci(paired_bootstrap(ranked[a], ranked[b], targets)))
    return "\n".join(rows)


def rules_table(lines: list[dict[str, Any]], data: Path, candidates: Path) -> str:
    """Every model of the file beside chance and the model-free rules (``hmpps pipeline``'s table), which
    read the users' histories from the dataset."""
    from training.candidates import load_first_stage
    from training.dataset import load_dataset
    from training.headroom import versus_rules, versus_rules_table

    ds = load_dataset(data)
    fs = load_first_stage(candidates, ds)
    by_id = {r["query_id"]: r for r in ds.queries("test")}
    rows = [by_id[x["query_id"]] for x in lines]
    names = sorted({k for x in lines if x["scores"] for k in x["scores"]})
    models = {name: {x["query_id"]: rerank(x["candidates"], x["scores"][name]) for x in lines if x["scores"]}
              for name in names}
    return versus_rules_table(versus_rules(ds, fs, rows, models))


def _ci(v: dict[str, Any]) -> str:
    return f"{v['diff']:+.4f} [{v['ci95'][0]:+.4f}, {v['ci95'][1]:+.4f}] (wins {v['wins']}, losses {v['losses']})"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    e = sub.add_parser("export", help="write the per-query scores file")
    e.add_argument("--data", type=Path, required=True, help="the dataset directory the teacher ran on")
    e.add_argument("--teacher", type=Path, required=True)
    e.add_argument("--student", action="append", default=[], help="NAME=DISTILL_DIR (repeatable)")
    e.add_argument("--teacher-run", action="append", default=[],
                   help="NAME=TEACHER_DIR: another teacher run on the same test sample (repeatable)")
    e.add_argument("--out", type=Path, required=True)
    f = sub.add_parser("figures", help="recompute the figures from a scores file")
    f.add_argument("path", type=Path)
    f.add_argument("--data", type=Path, help="with --candidates: the models beside chance and the model-free rules")
    f.add_argument("--candidates", type=Path, help="the first stage's directory")
    f.add_argument("--models", help="comma-separated names to compare (default: those scored on every line)")
    f.add_argument("--pair", action="append", default=[], help="A:B, the paired NDCG@4 difference A − B (repeatable; "
                   "students are paired with each other anyway)")
    a = ap.parse_args()
    if a.cmd == "export":
        export(a.data, a.teacher, a.student, a.out, a.teacher_run)
    else:
        print(figures(a.path, a.data, a.candidates, models=a.models.split(",") if a.models else None, pairs=a.pair))


if __name__ == "__main__":
    main()
