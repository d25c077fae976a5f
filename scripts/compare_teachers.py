"""Compare teacher runs on the same test queries: paired NDCG@4, with and without the repeats rule, and which
of the user's preferences each follows.

    .venv/bin/python scripts/compare_teachers.py --data runs/results/synth150/data \\
        runs/results/synth150/smol_lr1e-3_text runs/results/synth150/smol_lr1e-3_tower ...

Each RUN is a pipeline output directory (its ``teacher/`` holds ``teacher.json``
and ``scores.jsonl``), or one ``hmpps ablate`` row's ``OUT/scores/ROW.jsonl``
(which has no embeddings, so the readings of its prompts are skipped). The
first run is the reference: every other run's NDCG@4 minus the reference's,
paired bootstrap over the same test queries. Then the same after the
"already bought last" rule (``hmpps headroom``) is applied on top of every
ranking, the first stage's included: what a teacher adds beyond spotting
repeats, and how often a repeat's own history item is in its prompt. On
synthetic data (``users_truth.jsonl`` beside the data) each run's preference
for candidates matching the user's brands, colour and style is printed too,
split by text vs picture only, after what the test data itself rewards; and
what the headroom's preference rule scores reading only the run's prompts
(``training/teacher/compare.py``).
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from contract.errors import InputError
from training.dataset import load_dataset
from training.teacher.compare import (
    Truth,
    bought_before,
    bought_last,
    load_scored,
    preferences,
    prompt_readers,
    repeats_in_prompt,
    synthetic_truth,
    versus,
)
from training.teacher.run import reranked_metrics


def _diff(d: dict[str, Any]) -> str:
    return f"{d['diff']:+.4f} [{d['ci95'][0]:+.4f}, {d['ci95'][1]:+.4f}], {d['wins']} wins / {d['losses']} losses"


def _ndcg(rows: list[dict[str, Any]], n: int, key: str = "teacher_score") -> float:
    return reranked_metrics(rows, n, key)["NDCG@4"]


def print_preferences(rows: list[dict[str, Any]], truth: Truth, bought: dict[str, set[str]], reward: bool = False
                      ) -> None:
    pref = preferences(rows, truth, bought, reward=reward)
    controls = pref.pop("controls")
    for name, by_where in pref.items():
        print(f"    {name:7s}" + ";".join(
            f" {where.replace('_', ' ')}: mean {v['mean']:+.4f}, others fixed {v['coef']:+.4f} ({v['candidates']})"
            for where, v in by_where.items() if v["mean"] is not None))
    print("    held fixed: " + ", ".join(f"{k} {v:+.4f}" for k, v in controls.items()))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, required=True, help="the dataset the runs were trained on")
    ap.add_argument("runs", type=Path, nargs="+",
                    help="pipeline output directories or ablation rows' scores/ROW.jsonl; the first is the reference")
    args = ap.parse_args()
    try:
        runs = [(run, *load_scored(run)) for run in args.runs]
        ds = load_dataset(args.data)
        truth, bought = synthetic_truth(ds), bought_before(ds)
        ref, ref_rows, ref_n = runs[0]
        ref_last = bought_last(ref_rows, bought)
        fs_last = bought_last(ref_rows, bought, key="first_stage_score")
        print(f"reference: {ref}, over {ref_n} test queries")
        print(f"first stage: NDCG@4 {_ndcg(ref_rows, ref_n, 'first_stage_score'):.4f};"
              f" already-bought candidates last {_ndcg(fs_last, ref_n, 'first_stage_score'):.4f}")
        if truth:  # the same regression with "is it the target" as the logit: what the data rewards
            print("what the test data rewards (the target in place of the logit):")
            print_preferences(ref_rows, truth, bought, reward=True)
        for run, rows, n in runs:
            last = bought_last(rows, bought)
            print(f"{run}: NDCG@4 {_ndcg(rows, n):.4f}" + ("" if run is ref else
                  f"; minus the reference {_diff(versus(rows, n, ref_rows, ref_n))}"))
            print(f"  already-bought last: NDCG@4 {_ndcg(last, n):.4f};"
                  f" minus the first stage so reordered {_diff(versus(last, n, fs_last, ref_n, 'first_stage_score'))}"
                  + ("" if run is ref else f"; minus the reference so reordered {_diff(versus(last, n, ref_last, ref_n))}"))
            seen = repeats_in_prompt(run, ds, rows, bought)
            if seen and seen["repeats"]:
                print(f"  {seen['repeats']} already-bought candidates; {seen['same_item_in_prompt']}"
                      f" ({seen['same_item_in_prompt'] / seen['repeats']:.1%}) have that same item among their"
                      f" {seen['k_s2']} selected history items")
            if truth:
                print_preferences(rows, truth, bought)
                read = prompt_readers(run, ds, rows, n)
                if read:
                    print(f"  the history-preferences rule reading only these prompts' {read['k_s2']} history items:"
                          f" NDCG@4 {read['text']:.4f} from text, {read['text_image']:.4f} from text + image;"
                          f" the pictures add {_diff(read['image_minus_text'])}")
    except InputError as e:
        raise SystemExit(f"error: {e}") from None


if __name__ == "__main__":
    main()
