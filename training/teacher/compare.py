"""Comparing finished teacher runs: paired NDCG@4, and which of the user's preferences a teacher follows.

The second needs the synthetic generator's truth (``users_truth.jsonl`` and
``extra.truth`` on products): for each of the user's preferences (favourite
and second brand, colour, style), how much the teacher's logit rises for a
candidate that matches it, split by whether the candidate's text states the
attribute or only its picture shows it. Positive means the teacher ranks the
match up; the picture-only column is what a vision teacher must learn before
it can beat a text-only one (docs/results.md).
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from contract.errors import InputError
from contract.history import select_history
from training.artifacts import read_json, read_jsonl
from training.dataset import Dataset
from training.headroom import reader_scores
from training.metrics import paired_bootstrap, paper_metrics
from training.teacher.ablate import row_slug
from training.teacher.examples import load_embeddings
from training.teacher.run import ranked_test_lists


def load_scored(run: Path) -> tuple[list[dict[str, Any]], int]:
    """A pipeline output's scored queries and how many test queries its sample had; or one ``hmpps ablate``
    row's, given its ``scores/ROW.jsonl``."""
    if run.suffix == ".jsonl":
        info_path = run.parent.parent / "ablate.json"
        if not (run.is_file() and info_path.is_file()):
            raise InputError(f"{run}: not an `hmpps ablate` row's scores (expected OUT/scores/ROW.jsonl beside OUT/ablate.json)")
        rows = {row_slug(name): row for name, row in read_json(info_path).items()}
        if "versus_first_stage" not in rows.get(run.stem, {}):
            raise InputError(f"{run}: {info_path} has no such row with its test-query count; rerun hmpps ablate")
        return read_jsonl(run), int(rows[run.stem]["versus_first_stage"]["n"])
    teacher = run / "teacher"
    for name in ("teacher.json", "scores.jsonl"):
        if not (teacher / name).is_file():
            raise InputError(f"{run}: no teacher/{name}; pass a finished `hmpps pipeline` output directory")
    info = read_json(teacher / "teacher.json")
    return read_jsonl(teacher / "scores.jsonl"), int(info["scored_queries"]["test_total"])


def bought_before(ds: Dataset) -> dict[str, set[str]]:
    """Per test query, what its user had bought before it (never the target, in Amazon's data or the generator's)."""
    return {r["query_id"]: set(ds.history(r)) for r in ds.queries("test")}


def bought_last(scored: list[dict[str, Any]], bought: dict[str, set[str]], key: str = "teacher_score"
                ) -> list[dict[str, Any]]:
    """A copy in which, per query, the candidates its user bought before score below all others, each group
    keeping its order: the headroom's "already bought last" rule applied on top of a model's ranking."""
    out = []
    for s in scored:
        scores = [c[key] for c in s["candidates"]]
        drop = max(scores) - min(scores) + 1.0
        seen = bought.get(s["query_id"], set())
        out.append(s | {"candidates": [c | {key: c[key] - drop * (c["product_id"] in seen)} for c in s["candidates"]]})
    return out


def prompt_histories(run: Path, ds: Dataset, scored: list[dict[str, Any]]
                     ) -> tuple[dict[str, list[list[str]]], int] | None:
    """Per scored test query, the history each candidate's stage-2 prompt held: the Eq. 6 selection by the
    run's own stage-1 embeddings and K_s2. With that K_s2; None when the run kept no embeddings."""
    emb_dir = run / "teacher" / "embeddings"
    if not (emb_dir / "index.json").is_file():
        return None
    emb = load_embeddings(emb_dir)
    k = int(read_json(run / "teacher" / "teacher.json")["config"]["k_s2"])
    rows = {r["query_id"]: r for r in ds.queries("test")}
    out = {}
    for s in scored:
        if s["split"] != "test" or s["query_id"] not in rows:
            continue
        history = ds.history(rows[s["query_id"]])
        cands = [c["product_id"] for c in s["candidates"]]
        if not history:
            out[s["query_id"]] = [[] for _ in cands]
            continue
        picked = select_history(emb.product(history), emb.query(s["query"]), emb.product(cands), k)
        out[s["query_id"]] = [[history[i] for i in idx] for idx in picked]
    return out, k


def repeats_in_prompt(run: Path, ds: Dataset, scored: list[dict[str, Any]], bought: dict[str, set[str]]
                      ) -> dict[str, Any] | None:
    """Of the test candidates the user bought before, how many had that very item in their Eq. 6-selected
    history: a repeat the teacher can spot by matching the candidate against its own prompt. None when the
    run kept no embeddings."""
    found = prompt_histories(run, ds, scored)
    if found is None:
        return None
    prompts, k = found
    repeats = in_prompt = 0
    for s in (s for s in scored if s["query_id"] in prompts):
        for c, hist in zip(s["candidates"], prompts[s["query_id"]], strict=True):
            if c["product_id"] in bought.get(s["query_id"], set()):
                repeats += 1
                in_prompt += c["product_id"] in hist
    return {"repeats": repeats, "same_item_in_prompt": in_prompt, "k_s2": k}


def prompt_readers(run: Path, ds: Dataset, scored: list[dict[str, Any]], n_test: int) -> dict[str, Any] | None:
    """The history-preferences rule (``training.headroom.reader_scores``) reading, for each candidate, only
    the history its prompt held: NDCG@4 from text alone and from text + image over the run's test queries, and
    the paired difference. How much of the preference signal the teacher's prompts carry, and how much of it
    only the pictures do. Synthetic data only; None without the run's embeddings."""
    found = prompt_histories(run, ds, scored)
    if found is None:
        return None
    prompts, k = found
    read: dict[str, list[dict[str, Any]]] = {}
    for view, text_only in (("text", True), ("text_image", False)):
        read[view] = []
        for s in (s for s in scored if s["query_id"] in prompts):
            cands = [c["product_id"] for c in s["candidates"]]
            scores = reader_scores(ds, prompts[s["query_id"]], cands, text_only)
            read[view].append(s | {"candidates": [c | {"teacher_score": v}
                                                  for c, v in zip(s["candidates"], scores, strict=True)]})
    text, image = (ranked_test_lists(read[v], n_test, "teacher_score") for v in ("text", "text_image"))
    return {"k_s2": k, "text": paper_metrics(text[0], text[2])["NDCG@4"],
            "text_image": paper_metrics(image[0], image[2])["NDCG@4"],
            "image_minus_text": paired_bootstrap(image[0], text[0], text[2])}


class Truth(NamedTuple):
    """The synthetic generator's records, and how often each product was bought in the train split."""

    users: dict[str, Any]
    products: dict[str, Any]
    train_purchases: dict[str, int]


def synthetic_truth(ds: Dataset) -> Truth | None:
    """The generator's records of a synthetic dataset; None on real data."""
    users_path = ds.root / "users_truth.jsonl"
    if not users_path.exists():
        return None
    return Truth({u["user_id"]: u for u in read_jsonl(users_path)}, ds.products,
                 dict(Counter(r["product_id"] for r in ds.queries("train"))))


def versus(rows: list[dict[str, Any]], n: int, ref_rows: list[dict[str, Any]], ref_n: int,
           ref_key: str = "teacher_score") -> dict[str, Any]:
    """Paired bootstrap of NDCG@4, one run minus a reference (its teacher, or ``first_stage_score``), over the
    test queries both scored."""
    ranked, _, targets = ranked_test_lists(rows, n, "teacher_score")
    ref_ranked, _, ref_targets = ranked_test_lists(ref_rows, ref_n, ref_key)
    if targets != ref_targets:
        raise InputError("the runs were scored on different test queries; compare runs of one test sample")
    return paired_bootstrap(ranked, ref_ranked, targets)


# What a user prefers, read from the generator's records: (user field, product truth field, "is it in the text" flag).
# Weights in the choice model: brand 2.5, colour 1.5, second brand 1.2, style 1.0 (training/synthetic.py).
PREFERENCES = {
    "brand": ("brand", "brand", "brand_in_text"),
    "colour": ("colour", "colour", "colour_in_text"),
    "brand2": ("brand2", "brand", "brand_in_text"),
    "style": ("style", "style", "style_in_text"),
}
WHERE = ("named_in_text", "picture_only")


# What else could move a teacher's logit, held fixed beside the matches: the user bought the candidate before
# (never the target: the generator sells a product once per user, and such a candidate matches the user's
# preferences by construction), what its text states, and how popular it is.
CONTROLS = ("already_bought", "brand_in_text", "colour_in_text", "style_in_text", "log_train_purchases")


def _controls(truth: dict[str, Any], purchases: int, bought: bool) -> list[float]:
    return [float(bought), float(truth["brand_in_text"]), float(truth["colour_in_text"]),
            float(truth["style_in_text"]), float(np.log1p(purchases))]


def preferences(scored: list[dict[str, Any]], truth: Truth, bought: dict[str, set[str]], reward: bool = False
                ) -> dict[str, Any]:
    """How much a teacher ranks up candidates that match each of the user's preferences, by where it shows.

    Two readings per (preference, where): ``mean``, the matching candidates' logit minus their query's mean
    logit; and ``coef``, the same effect from least squares on within-query centred logits, with the other
    matches and the ``CONTROLS`` held fixed (one candidate can match several preferences; one the user already
    bought (``bought``, from ``bought_before``) matches them all and is never the target). ``controls`` holds
    their coefficients.
    With ``reward`` the logit is replaced by "is it the target": what the test data itself rewards, the
    reference a teacher's figures are read against.
    """
    names = [(k, w) for k in PREFERENCES for w in WHERE]
    xs, ys = [], []
    for s in scored:
        if s["split"] != "test" or s["user_id"] not in truth.users:
            continue
        user, seen = truth.users[s["user_id"]], bought.get(s["query_id"], set())
        rows = []
        for c in s["candidates"]:
            t = truth.products[c["product_id"]]["extra"]["truth"]
            rows.append([float(t[pf] == user[uf] and (t[flag] == (w == WHERE[0])))
                         for uf, pf, flag in PREFERENCES.values() for w in WHERE]
                        + _controls(t, truth.train_purchases.get(c["product_id"], 0), c["product_id"] in seen))
        y = np.asarray([c["product_id"] == s["target"] if reward else c["teacher_logit"] for c in s["candidates"]],
                       dtype=float)
        x = np.asarray(rows)
        xs.append(x)
        ys.append(y - y.mean())
    if not xs:
        return {}
    x, y = np.concatenate(xs), np.concatenate(ys)
    coef = np.linalg.lstsq(np.concatenate([q - q.mean(axis=0) for q in xs]), y, rcond=None)[0]
    out: dict[str, Any] = {}
    for j, (k, w) in enumerate(names):
        hit = x[:, j] > 0
        out.setdefault(k, {})[w] = {"candidates": int(hit.sum()),
                                    "mean": round(float(y[hit].mean()), 4) if hit.any() else None,
                                    "coef": round(float(coef[j]), 4) if hit.any() else None}
    out["controls"] = {name: round(float(coef[len(names) + i]), 4) for i, name in enumerate(CONTROLS)}
    return out
