"""``hmpps ope``: a candidate bundle's clicks per request, estimated from traffic logged under exploration.

The logs are rankings an exploring arm served (``contract.exploration``), each
item with its display probability ``p0(i, k)`` at its position and the whole
ranking's probability; clicks are joined by request id
(``training.clicklog.labels``). The candidate is a deterministic ranker: its
ranking ``pi(x)`` of each logged request's candidates is rebuilt from the logs
exactly as the service would have built its inputs (``distill.retrain``).
The value estimated is the expected number of clicks per request.

- IPS: the whole shown ranking is reweighted, ``1{pi(x) = shown} / P0(shown)``
  times the request's clicks. Unbiased under any click model, but a candidate
  rarely agrees with a random ranking on every position, so its variance is large.
- SNIPS: the same, divided by the mean weight.
- PBM-IPS (item-position IPS): each shown item's clicks, weighted
  ``1{pi puts i at k} / p0(i, k)``. Unbiased when a click depends only on the
  item and its position (the position-based model), which is what makes it usable.
- SN-PBM-IPS: each position's sum divided by that position's mean weight.
- DR: a click model ``q(i, k)`` fitted on the logs (logistic on the position,
  the logging student's and the candidate's log-odds; cross-fitted over two
  halves of the users) gives the direct estimate ``sum_k q(pi_k, k)``, and the
  PBM-IPS weights correct its error on what was shown.

Intervals are bootstraps over users (a user's requests are resampled together).
Open Bandit Pipeline has slate estimators of the same names (``SlateStandardIPS``,
``SlateIndependentIPS``) but pins numpy 1.23, pandas 1.5 and scikit-learn 1.1
(its latest release, 0.5.5); these estimators are written here, and their test
checks them against their definitions on a log with a known answer.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from contract.errors import InputError
from contract.exploration import log_odds
from contract.reports import markdown_table
from training.clicklog.labels import LabelledRanking

ESTIMATORS = ("IPS", "SNIPS", "PBM-IPS", "SN-PBM-IPS", "DR")
# In the simulator's runs every DR estimate more than 20% off the truth had an effective sample size (of the
# item-position weights) below this, though not every one below it was off (docs/results.md, issue 38)
MIN_EFFECTIVE_N = 500


@dataclass
class OpeData:
    """Logged requests as arrays: ``n`` requests, ``m`` positions (shorter lists padded, ``valid`` False)."""

    user: np.ndarray  # (n,) user index
    clicks: np.ndarray  # (n, m) 0/1, by shown position
    propensity: np.ndarray  # (n, m) p0(shown item at its position)
    slate: np.ndarray  # (n,) P0(the shown ranking)
    match: np.ndarray  # (n, m) the candidate puts the shown item at the same position
    same_slate: np.ndarray  # (n,) the candidate's ranking is the shown one
    valid: np.ndarray  # (n, m)
    features: np.ndarray  # (n, m, f) click-model features of the shown item at its position
    target_features: np.ndarray  # (n, m, f) ... of the candidate's item at each position


Ranker = Callable[[LabelledRanking], "list[int] | None"]  # a ranking's items (served order indices), candidate's order


def _logit(p: float | None) -> float:
    """A logged or rebuilt P(yes) as a click-model feature; 0 where there is none."""
    return 0.0 if p is None or not math.isfinite(p) else float(log_odds(p))


def _feat(k: int, m: int, logging: float, target: float) -> list[float]:
    onehot = [0.0] * m
    onehot[k] = 1.0
    return onehot + [logging, target]


def build(rankings: Sequence[LabelledRanking], ranker: Ranker, target_logits: Callable[[LabelledRanking], list[float]]
          ) -> tuple[OpeData, dict[str, int]]:
    """The arrays of every usable logged ranking, and how many were left out and why."""
    skipped: dict[str, int] = {}

    def skip(why: str) -> None:
        skipped[why] = skipped.get(why, 0) + 1

    rows = []
    for r in rankings:
        if r.policy is None or any(i.propensity is None for i in r.items):
            skip("not from an exploring arm")
        elif r.fallback is not None:
            skip("served a fallback")
        elif not r.shown:
            skip("no impression joined")
        elif r.listed != len(r.items):
            skip("trimmed by top_n")
        else:
            order = ranker(r)
            if order is None:
                skip("no candidate had features in the bundle")
            else:
                rows.append((r, order, target_logits(r)))
    if not rows:
        raise InputError("no logged ranking to evaluate on: OPE needs rankings served by an exploring arm "
                         f"(arms file 'explore:'), shown and untrimmed; left out: {skipped or 'none logged'}")
    m = max(len(r.items) for r, _, _ in rows)
    n = len(rows)
    users = {u: k for k, u in enumerate(dict.fromkeys(r.user_id for r, _, _ in rows))}
    d = OpeData(np.array([users[r.user_id] for r, _, _ in rows]), np.zeros((n, m)), np.ones((n, m)), np.zeros(n),
                np.zeros((n, m), bool), np.zeros(n, bool), np.zeros((n, m), bool), np.zeros((n, m, m + 2)),
                np.zeros((n, m, m + 2)))
    for a, (r, order, tl) in enumerate(rows):
        at = {item: k for k, item in enumerate(order)}  # served index -> the candidate's position
        lg = [_logit(i.served_score) for i in r.items]
        for k, item in enumerate(r.items):
            d.clicks[a, k] = float(item.clicked)
            d.propensity[a, k] = item.propensity  # type: ignore[assignment]
            d.match[a, k] = at[k] == k
            d.valid[a, k] = True
            d.features[a, k] = _feat(k, m, lg[k], tl[k])
            j = order[k]
            d.target_features[a, k] = _feat(k, m, lg[j], tl[j])
        d.slate[a] = r.slate_propensity or 0.0
        d.same_slate[a] = order == list(range(len(order)))
    return d, skipped


def fit_click_model(x: np.ndarray, y: np.ndarray, ridge: float = 1e-2, iters: int = 30) -> np.ndarray:
    """Logistic regression by Newton's method (with an intercept): the DR estimator's click model."""
    x1 = np.hstack([x, np.ones((len(x), 1))])
    w = np.zeros(x1.shape[1])
    for _ in range(iters):
        p = 1 / (1 + np.exp(-(x1 @ w)))
        g = x1.T @ (p - y) + ridge * w
        h = (x1 * (p * (1 - p))[:, None]).T @ x1 + ridge * np.eye(len(w))
        step = np.linalg.solve(h, g)
        w -= step
        if np.abs(step).max() < 1e-8:
            break
    return w


def _predict(w: np.ndarray, x: np.ndarray) -> np.ndarray:
    return 1 / (1 + np.exp(-(x @ w[:-1] + w[-1])))


def click_model_predictions(d: OpeData, folds: int = 2) -> tuple[np.ndarray, np.ndarray]:
    """q for the shown items and for the candidate's items, each request predicted by a model fitted on the
    other users (cross-fitting keeps the model's own fit out of the DR correction)."""
    fold = d.user % folds
    q_shown, q_target = np.zeros(d.clicks.shape), np.zeros(d.clicks.shape)
    for f in range(folds):
        train = (fold != f)[:, None] & d.valid
        if not train.any() or train.sum() == d.valid.sum():
            train = d.valid  # a single fold's users: fit on everything
        w = fit_click_model(d.features[train], d.clicks[train])
        rows = fold == f
        q_shown[rows] = _predict(w, d.features[rows])
        q_target[rows] = _predict(w, d.target_features[rows])
    return q_shown * d.valid, q_target * d.valid


def per_request_terms(d: OpeData) -> dict[str, tuple[np.ndarray, np.ndarray | None]]:
    """Each estimator as (numerator, denominator or None) per request (for a ratio: per position summed)."""
    w_item = np.where(d.match & d.valid, 1.0 / d.propensity, 0.0)
    clicks = d.clicks.sum(1)
    w_slate = np.where(d.same_slate, 1.0 / np.maximum(d.slate, 1e-300), 0.0)
    q_shown, q_target = click_model_predictions(d)
    return {"IPS": (w_slate * clicks, None), "SNIPS": (w_slate * clicks, w_slate),
            "PBM-IPS": ((w_item * d.clicks).sum(1), None),
            "SN-PBM-IPS": (w_item * d.clicks, w_item),  # per position: (n, m) each
            "DR": (q_target.sum(1) + (w_item * (d.clicks - q_shown)).sum(1), None),
            "logging policy (on-policy)": (clicks, None)}


def _value(num: np.ndarray, den: np.ndarray | None, weights: np.ndarray) -> np.ndarray:
    """The estimate under each row of ``weights`` (resamples x requests)."""
    if den is None:
        return (weights @ num) / weights.sum(1)
    if num.ndim == 1:
        dd = weights @ den
        return np.divide(weights @ num, dd, out=np.full(len(dd), np.nan), where=dd > 0)
    nums, dens = weights @ num, weights @ den
    return np.nansum(np.divide(nums, dens, out=np.full(nums.shape, np.nan), where=dens > 0), axis=1)


def _user_weights(user: np.ndarray, resamples: int, seed: int) -> np.ndarray:
    """Poisson(1) bootstrap weights per user, spread to that user's requests (resamples x requests)."""
    rng = np.random.default_rng(seed)
    return rng.poisson(1.0, size=(resamples, int(user.max()) + 1)).astype(np.float64)[:, user]


def _interval(boot: np.ndarray) -> list[float]:
    lo, hi = np.nanquantile(boot, [0.025, 0.975]) if np.isfinite(boot).any() else (float("nan"),) * 2
    return [float(lo), float(hi)]


Terms = dict[str, tuple[np.ndarray, "np.ndarray | None"]]


def estimate(d: OpeData, resamples: int = 2000, seed: int = 0, terms: Terms | None = None) -> dict[str, dict[str, Any]]:
    """Each estimator's value, its bootstrap 95% interval over users, and the effective sample size."""
    terms = terms or per_request_terms(d)
    weights = _user_weights(d.user, resamples, seed)
    ones = np.ones((1, len(d.user)))
    out: dict[str, dict[str, Any]] = {name: {"value": float(_value(num, den, ones)[0]),
                                             "ci95": _interval(_value(num, den, weights))}
                                      for name, (num, den) in terms.items()}
    w_item = np.where(d.match & d.valid, 1.0 / d.propensity, 0.0)
    ess = float(w_item.sum() ** 2 / max((w_item ** 2).sum(), 1e-300))
    for name in ("PBM-IPS", "SN-PBM-IPS", "DR"):  # the same item-position weights
        out[name]["effective_n"] = ess
    out["IPS"]["matched_rankings"] = out["SNIPS"]["matched_rankings"] = int(d.same_slate.sum())  # SNIPS on 1 is 1
    return out


def bundle_ranker(bundle: Path, logs_history: dict[str, list[list[Any]]]
                  ) -> tuple[Ranker, Callable[[LabelledRanking], list[float]]]:
    """The candidate bundle's ranking of a logged request, rebuilt as the service builds its inputs."""
    from contract.bundle import read_manifest
    from contract.spec import yes_probability
    from distill.retrain import ranking_inputs
    from distill.tables import BundleTables
    from service.core.bundle import OnnxScorer
    from service.core.scoring import order

    tables = BundleTables(bundle)
    scorer = OnnxScorer(bundle / read_manifest(bundle).models["student"])
    cache: dict[str, tuple[list[int] | None, list[float]]] = {}

    def run(r: LabelledRanking) -> tuple[list[int] | None, list[float]]:
        if r.request_id not in cache:
            built = ranking_inputs(tables, r, logs_history)
            if built is None:
                cache[r.request_id] = (None, [0.0] * len(r.items))
            else:
                inputs, known = built
                probs = yes_probability(scorer.logits(inputs))
                caller = sorted(range(len(r.items)), key=lambda k: r.items[k].original_position)
                by_item = {k: float(p) for k, p in zip(known, probs, strict=True)}
                scores = [by_item.get(k) for k in caller]  # in the caller's order, None without features
                ranked = [caller[i] for i in order(scores)]
                cache[r.request_id] = (ranked, [_logit(by_item.get(k)) for k in range(len(r.items))])
        return cache[r.request_id]

    return (lambda r: run(r)[0]), (lambda r: run(r)[1])


def ope(rankings: Sequence[LabelledRanking], history: dict[str, list[list[Any]]], bundles: dict[str, Path],
        resamples: int = 2000, seed: int = 0, pair: tuple[str, str] | None = None) -> dict[str, Any]:
    """Every candidate's estimates on the same logs; for ``pair`` (by default the two candidates, when there
    are two) on the same requests, also each estimator's paired difference, second minus first."""
    built = {}
    for name, path in bundles.items():
        ranker, logits = bundle_ranker(Path(path), history)
        d, skipped = build(rankings, ranker, logits)
        built[name] = (d, skipped, per_request_terms(d))  # the click model is fitted once per candidate
    d, skipped, _ = next(iter(built.values()))
    out: dict[str, Any] = {"requests": int(len(d.user)), "users": int(d.user.max()) + 1, "skipped": skipped,
                           "positions": int(d.valid.shape[1]), "estimand": "expected clicks per request",
                           "resamples": resamples,
                           "candidates": {n: {"bundle": str(bundles[n]), "requests": int(len(b[0].user)),
                                              "estimates": estimate(b[0], resamples, seed, b[2])}
                                          for n, b in built.items()}}
    pair = pair or (tuple(built) if len(built) == 2 else None)  # type: ignore[assignment]
    if pair is not None and len(built[pair[0]][0].user) == len(built[pair[1]][0].user):
        (a, _, ta), (_, _, tb) = built[pair[0]], built[pair[1]]
        out["paired"] = {"pair": f"{pair[1]} - {pair[0]}", "estimates": _paired_terms(ta, tb, a.user, resamples, seed)}
    return out


def paired(a: OpeData, b: OpeData, resamples: int = 2000, seed: int = 0) -> dict[str, dict[str, Any]]:
    """Each estimator's ``b - a`` on the same logged requests, resampling users once for both."""
    return _paired_terms(per_request_terms(a), per_request_terms(b), a.user, resamples, seed)


def _paired_terms(ta: Terms, tb: Terms, user: np.ndarray, resamples: int, seed: int) -> dict[str, dict[str, Any]]:
    weights = _user_weights(user, resamples, seed)
    ones = np.ones((1, len(user)))
    out = {}
    for name in ESTIMATORS:
        point = float(_value(*tb[name], ones)[0] - _value(*ta[name], ones)[0])
        out[name] = {"diff": point, "ci95": _interval(_value(*tb[name], weights) - _value(*ta[name], weights))}
    return out


def read_logs(path: Path) -> tuple[list[LabelledRanking], dict[str, list[list[Any]]]]:
    """A ``hmpps data from-logs`` directory, or a JSONL export of the streams (joined and labelled here)."""
    from training.clicklog.from_logs import read_labelled
    from training.clicklog.labels import history_events, join_and_label
    from training.clicklog.logs import read_logs_jsonl

    path = Path(path)
    if path.is_dir():
        rankings, history, _ = read_labelled(path)
        return rankings, history
    if path.is_file():
        logs = read_logs_jsonl(path)
        return join_and_label(logs)[0], history_events(logs)
    raise InputError(f"{path}: not a from-logs directory or a JSONL export")


def _estimate_rows(estimates: dict[str, Any]) -> list[list[Any]]:
    rows = []
    for name, e in estimates.items():
        extra = (f"{e['matched_rankings']} rankings identical to the candidate's" if "matched_rankings" in e else
                 f"effective sample size {e['effective_n']:.0f}" if "effective_n" in e else "")
        rows.append([name, f"{e['value']:.4f}", f"[{e['ci95'][0]:.4f}, {e['ci95'][1]:.4f}]", extra])
    return rows


def report_markdown(rep: dict[str, Any], title: str = "Off-policy evaluation") -> str:
    skipped = ", ".join(f"{v} {k}" for k, v in rep["skipped"].items()) or "none"
    lines = [f"# {title}", "", f"{rep['requests']} logged requests of {rep['users']} users (left out: {skipped}); "
             f"the value is the {rep['estimand']}; 95% intervals from {rep['resamples']} bootstrap resamples of "
             "users. The last row of each table is what the logging (exploring) policy itself got on these "
             "requests.", ""]
    for name, c in rep["candidates"].items():
        lines += [f"## Candidate `{name}` ({c['bundle']})", "",
                  markdown_table(["estimator", "value", "95% CI", "note"], _estimate_rows(c["estimates"])), ""]
        ess = c["estimates"]["PBM-IPS"]["effective_n"]
        if ess < MIN_EFFECTIVE_N:
            lines += [f"**Warning:** the effective sample size is {ess:.0f} (below {MIN_EFFECTIVE_N}): this "
                      "candidate ranks far from what the exploring arm showed, a few logged rankings carry most of "
                      "the weight, and the estimate may be far off with an interval that misses it. Explore at a "
                      "higher temperature, or compare it online (interleaving).", ""]
    if "paired" in rep:
        p = rep["paired"]
        lines += [f"## Paired difference: {p['pair']}", "", markdown_table(
            ["estimator", "difference", "95% CI"],
            [[k, f"{v['diff']:+.4f}", f"[{v['ci95'][0]:+.4f}, {v['ci95'][1]:+.4f}]"]
             for k, v in p["estimates"].items()]), ""]
    return "\n".join(lines)
