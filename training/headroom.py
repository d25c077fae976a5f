"""How much a personalised reranker could gain over a first stage: model-free reference rerankers.

A teacher that misses its target leaves one question: is the signal not in
the data, or did the model fail to learn it? These rerankers answer it
without training anything. Each reorders the first stage's top-K_p with one
rule (a stable sort, so ties keep the first stage's order) and is scored by
the same HMPPS protocol on the same test queries as the teacher.

Any dataset:
- ``random order (expected)``: each list shuffled at random, in expectation.
  The chance level; a first stage near it has little order to improve on.
- ``already bought last``: candidates the user bought before the query go to
  the end. Shows how much a reranker gains just by reading the history for
  repeats (and how much it loses where people do buy again).
- ``popularity within the candidates``: the most bought products (train
  purchases) first, already-bought ones last.

Synthetic data only, from the generator's ground truth (``extra.truth``,
``users_truth.jsonl``):
- ``history preferences (text)``: the user's brand, colour and style guessed
  as the most frequent value among their history items where the text states
  it; candidates scored by the generator's utility weights on matches. The
  ceiling of a reranker that reads only text.
- ``history preferences (text + image)``: the same with every attribute,
  including the brands shown only in the picture: what vision can add.
- ``true preferences``: the user's real preferences (an upper bound no model
  can reach from the history alone).
The three preference rows also put already-bought candidates last.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from contract.reports import markdown_table
from training.artifacts import atomic_dir, read_jsonl, write_json
from training.candidates import FirstStage, load_first_stage, scored_test_rows
from training.dataset import Dataset, load_dataset
from training.metrics import PAPER_KEYS, paired_bootstrap, paper_metrics, random_order, relative_gain, rerank
from training.slices import slice_report, slice_table
from training.synthetic import SyntheticConfig

ATTRIBUTES = ("brand", "colour", "style")

Scorer = Callable[[dict[str, Any], list[str], list[str]], list[float]]  # (row, history, candidates) -> scores


def _truth(ds: Dataset, pid: str) -> dict[str, Any] | None:
    truth = (ds.products.get(pid, {}).get("extra") or {}).get("truth")
    return truth if isinstance(truth, dict) else None


def _weights() -> dict[str, float]:
    cfg = SyntheticConfig()
    return {"brand": cfg.w_brand, "colour": cfg.w_colour, "style": cfg.w_style}


def _bought_last(history: list[str], candidates: list[str]) -> list[float]:
    seen = set(history)
    return [-100.0 if p in seen else 0.0 for p in candidates]


def popularity_scorer(ds: Dataset) -> Scorer:
    counts = Counter(r["product_id"] for r in ds.interactions if r["split"] == "train")

    def score(row: dict[str, Any], hist: list[str], cands: list[str]) -> list[float]:
        seen = set(hist)
        return [float(counts.get(p, 0)) - (1e9 if p in seen else 0.0) for p in cands]
    return score


def model_free_rules(ds: Dataset) -> dict[str, Scorer]:
    """The rules any dataset has."""
    return {
        "already bought last": lambda row, hist, cands: _bought_last(hist, cands),
        "popularity within the candidates": popularity_scorer(ds),
    }


def rule_scorers(ds: Dataset, fs: FirstStage) -> dict[str, Scorer | None]:
    """The rules any dataset has, after the first stage's own order (None)."""
    return {f"first stage ({fs.model})": None, **model_free_rules(ds)}


def reranked_lists(ds: Dataset, fs: FirstStage, rows: list[dict[str, Any]], scorer: Scorer | None) -> list[list[str]]:
    lists = []
    for row in rows:
        cands = fs.ids(row["query_id"])
        # rerank is stable: ties keep the first stage's order
        lists.append(cands if scorer is None else rerank(cands, scorer(row, ds.history(row), cands)))
    return lists


def reference_lists(ds: Dataset, fs: FirstStage, rows: list[dict[str, Any]]) -> dict[str, list[list[str]]]:
    """The model-free rules' reranked lists over ``rows`` (the first stage's own order first)."""
    return {name: reranked_lists(ds, fs, rows, scorer) for name, scorer in rule_scorers(ds, fs).items()}


def _guessed_preferences(ds: Dataset, history: list[str], text_only: bool) -> dict[str, str]:
    prefs = {}
    for k in ATTRIBUTES:
        truths = [t for t in (_truth(ds, h) for h in history) if t is not None]
        values = [t[k] for t in truths if not text_only or t.get(f"{k}_in_text")]
        if values:
            prefs[k] = Counter(values).most_common(1)[0][0]
    return prefs


def reader_scores(ds: Dataset, histories: Sequence[list[str]], candidates: list[str], text_only: bool) -> list[float]:
    """The history-preferences rule, reading for each candidate only the history given for it.

    The user's brand, colour and style are guessed as the most frequent value among those items (with
    ``text_only``, among the items whose text states it); a candidate scores the generator's utility weight
    for each match it shows (in its text, with ``text_only``), and goes last if it is itself one of those
    items. Given the full history it is the headroom row; given a prompt's history, it says how much of the
    preference signal that prompt carries.
    """
    w = _weights()
    guessed: dict[tuple[str, ...], dict[str, str]] = {}
    out = []
    for pid, hist in zip(candidates, histories, strict=True):
        key = tuple(hist)
        if key not in guessed:  # candidates sharing one history guess once
            guessed[key] = _guessed_preferences(ds, hist, text_only)
        prefs = guessed[key]
        t = _truth(ds, pid) or {}
        visible = [k for k in ATTRIBUTES if not text_only or t.get(f"{k}_in_text")]
        out.append(_bought_last(hist, [pid])[0] + sum(w[k] for k in visible if k in prefs and t.get(k) == prefs[k]))
    return out


def _preference_scorer(ds: Dataset, text_only: bool) -> Scorer:
    return lambda row, history, candidates: reader_scores(ds, [history] * len(candidates), candidates, text_only)


def _true_scorer(ds: Dataset, users: dict[str, dict[str, Any]]) -> Scorer:
    cfg = SyntheticConfig()

    def score(row: dict[str, Any], history: list[str], candidates: list[str]) -> list[float]:
        u = users.get(row["user_id"], {})
        out = []
        for p, base in zip(candidates, _bought_last(history, candidates), strict=True):
            t = _truth(ds, p) or {}
            out.append(base + cfg.w_brand * (t.get("brand") == u.get("brand"))
                       + cfg.w_brand2 * (t.get("brand") == u.get("brand2"))
                       + cfg.w_colour * (t.get("colour") == u.get("colour"))
                       + cfg.w_style * (t.get("style") == u.get("style")))
        return out

    return score


HISTORY_LENGTHS = (2, 3, 5, 7, None)  # latest k items; None: all of them. The paper's K_s2 is 2-3, K_s1 5-7.


def vision_by_history(ds: Dataset, fs: FirstStage, rows: list[dict[str, Any]],
                      lengths: Sequence[int | None] = HISTORY_LENGTHS) -> list[dict[str, Any]]:
    """What reading the pictures adds to the history-preferences rule when it sees only the user's latest k
    purchases, as a teacher's prompt does: NDCG@4 reading text only and text + image, and the paired
    bootstrap of the difference. Whether a test set can show vision beating text at all: if this rule's
    interval holds zero, a teacher's will too."""
    targets = [r["product_id"] for r in rows]
    out = []
    for k in lengths:
        lists = {}
        for text_only in (True, False):
            ranked = []
            for r in rows:
                cands, hist = fs.ids(r["query_id"]), ds.history(r)
                hist = hist if k is None else hist[-k:]
                ranked.append(rerank(cands, reader_scores(ds, [hist] * len(cands), cands, text_only)))
            lists[text_only] = ranked
        diff = paired_bootstrap(lists[False], lists[True], targets)
        out.append({"history": "all" if k is None else k,
                    "text": paper_metrics(lists[True], targets)["NDCG@4"],
                    "text_image": paper_metrics(lists[False], targets)["NDCG@4"],
                    "image_minus_text": diff})
    return out


def headroom(data: Path, first_stage: Path, test_fraction: float = 1.0, seed: int = 0) -> dict[str, Any]:
    """Reference rerankers over one first stage's candidates; the same test sample as a teacher with this
    ``test_fraction`` and ``seed``."""
    ds = load_dataset(data)
    fs = load_first_stage(first_stage, ds)
    rows = scored_test_rows(ds, fs, test_fraction, seed)
    scorers = rule_scorers(ds, fs)
    users_path = Path(data) / "users_truth.jsonl"
    synthetic = users_path.exists() and any(_truth(ds, p) for p in list(ds.products)[:20])
    if synthetic:
        users = {u["user_id"]: u for u in read_jsonl(users_path)}
        scorers["history preferences (text)"] = _preference_scorer(ds, text_only=True)
        scorers["history preferences (text + image)"] = _preference_scorer(ds, text_only=False)
        scorers["true preferences"] = _true_scorer(ds, users)
    targets = [r["product_id"] for r in rows]
    histories = [ds.history(r) for r in rows]
    results: dict[str, dict[str, Any]] = {}
    for name, scorer in scorers.items():
        lists = reranked_lists(ds, fs, rows, scorer)
        results[name] = paper_metrics(lists, targets)
        if scorer is None:  # chance level, right under the first stage it shuffles
            results["random order (expected)"] = random_order(lists, targets, rounds=0)["expected"]
    n_cands = sum(len(fs.ids(r["query_id"])) for r in rows)
    bought = sum(p in set(h) for r, h in zip(rows, histories, strict=True) for p in fs.ids(r["query_id"]))
    stats = {
        "test_queries": len(rows),
        "candidates_already_bought": bought / max(1, n_cands),
        "targets_already_bought": sum(t in set(h) for t, h in zip(targets, histories, strict=True)) / max(1, len(rows)),
        "synthetic_truth": synthetic,
    }
    out = {"dataset": ds.name, "first_stage": str(first_stage), "test_fraction": test_fraction, "seed": seed,
           "stats": stats, "metrics": results}
    if synthetic:
        out["vision_by_history"] = vision_by_history(ds, fs, rows)
    return out


def headroom_table(result: dict[str, Any]) -> str:
    metrics = result["metrics"]
    base = next(iter(metrics.values()))
    lines = [markdown_table(["reranker", *PAPER_KEYS, "Rel.Impr NDCG@4"],
                            [[name, *(f"{m[k]:.4f}" for k in PAPER_KEYS), f"{100 * relative_gain(m, base):+.1f}%"]
                             for name, m in metrics.items()])]
    s = result["stats"]
    lines += ["", f"{s['test_queries']} test queries; {100 * s['candidates_already_bought']:.1f}% of the candidates "
              f"and {100 * s['targets_already_bought']:.1f}% of the targets were bought before the query."]
    if result.get("vision_by_history"):
        lines += ["", "The history-preferences rule seeing only the latest k purchases (NDCG@4; 95% paired bootstrap "
                  "interval of text + image minus text):", "",
                  markdown_table(["history", "text", "text + image", "difference", "95% interval", "wins / losses"],
                                 [[v["history"], f"{v['text']:.4f}", f"{v['text_image']:.4f}",
                                   f"{v['image_minus_text']['diff']:+.4f}",
                                   "[{:+.4f}, {:+.4f}]".format(*v["image_minus_text"]["ci95"]),
                                   f"{v['image_minus_text']['wins']} / {v['image_minus_text']['losses']}"]
                                  for v in result["vision_by_history"]], align="lrrrlr")]
    return "\n".join(lines)


def write_headroom(result: dict[str, Any], out: Path) -> None:
    with atomic_dir(out) as tmp:
        write_json(tmp / "headroom.json", result)
        (tmp / "report.md").write_text(
            f"# Headroom over the first stage: {result['dataset']}\n\n"
            f"Model-free reference rerankers (see `training/headroom.py`) over `{result['first_stage']}`, "
            f"test_fraction {result['test_fraction']}, seed {result['seed']}.\n\n{headroom_table(result)}\n")


def versus_rules(ds: Dataset, fs: FirstStage, rows: list[dict[str, Any]],
                 models: dict[str, dict[str, list[str]]]) -> dict[str, Any]:
    """Chance, the model-free rules and the given models' rerankings over the same test ``rows``, each with
    a paired 95% bootstrap interval of its NDCG@4 minus the first stage's.

    ``models`` maps a name to {query_id: reranked ids}; a query it did not rerank (its target is not in
    the top K, a miss for every reranker) keeps the first stage's order.
    """
    from training.metrics import chance_per_query, paired_values_bootstrap, per_query

    targets = [r["product_id"] for r in rows]
    lists = reference_lists(ds, fs, rows)
    base_name = next(iter(lists))
    base = lists[base_name]
    for name, ranked in models.items():
        lists[name] = [ranked.get(r["query_id"], b) for r, b in zip(rows, base, strict=True)]
    base_vals = per_query(base, targets)
    out: dict[str, Any] = {"queries": len(rows), "first_stage": base_name, "rows": {}}
    chance = chance_per_query(base, targets)
    out["rows"]["chance (random order, expected)"] = {
        "metrics": random_order(base, targets, rounds=0)["expected"],
        "versus_first_stage": paired_values_bootstrap(chance, base_vals)}
    for name, ranked in lists.items():
        out["rows"][name] = {"metrics": paper_metrics(ranked, targets),
                             "versus_first_stage": paired_values_bootstrap(per_query(ranked, targets), base_vals)}
    rules = [n for n in out["rows"] if n not in models and n != base_name]
    out["best_rule"] = max(rules, key=lambda n: out["rows"][n]["metrics"]["NDCG@4"])
    best_vals = per_query(lists[out["best_rule"]], targets) if out["best_rule"] in lists else chance
    out["versus_best_rule"] = {name: paired_values_bootstrap(per_query(lists[name], targets), best_vals)
                               for name in models}
    if models and rules:
        values = {name: per_query(ranked, targets) for name, ranked in lists.items()}
        out["slices"] = slice_report(ds, rows, values, list(models), [r for r in rules if r in lists], base_name)
    return out


def versus_rules_table(result: dict[str, Any]) -> str:
    def ci(d: dict[str, Any]) -> str:
        return f"{d['diff']:+.4f} [{d['ci95'][0]:+.4f}, {d['ci95'][1]:+.4f}]"
    base = result["rows"][result["first_stage"]]["metrics"]["NDCG@4"]
    table = markdown_table(
        ["reranker", *PAPER_KEYS, "vs first stage", "NDCG@4 − first stage [95% CI]", f"vs {result['best_rule']}"],
        [[name, *(f"{r['metrics'][k]:.4f}" for k in PAPER_KEYS),
          f"{100 * (r['metrics']['NDCG@4'] / base - 1):+.1f}%" if base > 0 else "n/a", ci(r["versus_first_stage"]),
          ci(result["versus_best_rule"][name]) if name in result["versus_best_rule"] else ""]
         for name, r in result["rows"].items()])
    table += (f"\n\n{result['queries']} test queries; intervals are paired bootstraps (10,000 resamples) of "
              "the per-query NDCG@4 difference; the last column compares with the best model-free rule.")
    if result.get("slices"):
        table += "\n\n### By slice\n\n" + slice_table(result["slices"], result["first_stage"])
    return table
