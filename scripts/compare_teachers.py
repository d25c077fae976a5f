"""Compare teacher runs on the same test queries: paired NDCG@4, and whether each favours the user's brand.

    .venv/bin/python scripts/compare_teachers.py --data runs/results/synth150/data \\
        runs/results/synth150/smol_lr1e-3_text runs/results/synth150/smol_lr1e-3_tower ...

Each RUN is a pipeline output directory (its ``teacher/`` holds ``teacher.json``
and ``scores.jsonl``). The first run is the reference: every other run's NDCG@4
minus the reference's, paired bootstrap over the same test queries. On
synthetic data (``users_truth.jsonl`` beside the data) each run's
favourite-brand preference is printed too (``training/teacher/compare.py``).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from training.errors import InputError
from training.teacher.compare import brand_preference, load_scored, synthetic_truth, versus


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, required=True, help="the dataset the runs were trained on")
    ap.add_argument("runs", type=Path, nargs="+", help="pipeline output directories; the first is the reference")
    args = ap.parse_args()
    try:
        runs = [(run, *load_scored(run)) for run in args.runs]
        truth = synthetic_truth(args.data)
        ref, ref_rows, ref_n = runs[0]
        print(f"reference: {ref}")
        for run, rows, n in runs:
            line = f"{run}:"
            if run is not ref:
                d = versus(rows, n, ref_rows, ref_n)
                line += (f" NDCG@4 minus the reference {d['diff']:+.4f} [{d['ci95'][0]:+.4f}, {d['ci95'][1]:+.4f}],"
                         f" {d['wins']} wins / {d['losses']} losses over {d['n']} queries;")
            if truth:
                pref = brand_preference(rows, truth[1], truth[0])
                line += " favourite brand " + ", ".join(f"{k.replace('_', ' ')} {v['mean']:+.4f} ({v['candidates']})"
                                                        for k, v in pref.items() if v["mean"] is not None)
            print(line)
    except InputError as e:
        raise SystemExit(f"error: {e}") from None


if __name__ == "__main__":
    main()
