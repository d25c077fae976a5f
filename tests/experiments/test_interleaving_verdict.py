"""The interleaving verdict on logged rankings whose preferred team is known."""

from __future__ import annotations

import numpy as np

from contract.interleaving import team_draft
from experiments.interleaving import interleaving_report, outcomes, report_markdown
from training.clicklog.labels import LabelledItem, LabelledRanking

GOOD = [f"p{i}" for i in range(8)]  # the relevant items first
BAD = GOOD[::-1]


def _log(n: int, seed: int = 0, p_good: float = 0.5) -> list[LabelledRanking]:
    rng = np.random.default_rng(seed)
    relevant = set(GOOD[:3])
    out = []
    for i in range(n):
        merged = team_draft(GOOD, BAD, "il", f"r{i}")
        items = []
        for k, (p, t) in enumerate(merged):
            click = rng.random() < (1 / (k + 1)) * (p_good if p in relevant else 0.05)
            items.append(LabelledItem(p, k, GOOD.index(p), None, None, clicked=bool(click), team=("good", "bad")[t]))
        out.append(LabelledRanking(f"r{i}", f"u{i % 60}", "q", "il", "v|w", None, float(i), 8, True, items,
                                   teams=("good", "bad")))
    return out


def test_the_ranker_with_the_relevant_items_wins_and_the_verdict_is_reached():
    rep = interleaving_report(_log(3000), resamples=2000)
    v = rep["il"]
    assert v["teams"] == ["good", "bad"] and v["requests"] == 3000 and v["users"] == 60
    assert v["wins"]["good"] > v["wins"]["bad"] and v["decided"] + v["ties"] == 3000
    assert v["winner"] == "good" and v["ci95"]["good"][0] > 0.5
    assert v["requests_to_verdict"] is not None and v["requests_to_verdict"] <= 3000
    assert "good vs bad" in report_markdown(rep)


def test_two_equal_rankers_get_no_verdict():
    log = _log(2000, seed=3)
    for r in log:  # both teams the same ranker: credit is a coin
        for it in r.items:
            it.clicked = False
        r.items[0].clicked = True
    v = interleaving_report(log, resamples=2000)["il"]
    assert v["winner"] is None and 0.45 < v["share_won"]["good"] < 0.55
    assert v["ci95"]["good"][0] < 0.5 < v["ci95"]["good"][1]


def test_fallbacks_unshown_and_non_interleaved_rankings_are_not_counted():
    log = _log(10)
    log[0].fallback = "timeout"
    log[1].shown = False
    log[2].teams = None
    assert len(outcomes(log)["il\x00good\x00bad"]) == 7
