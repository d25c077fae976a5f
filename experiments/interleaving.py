"""The interleaving verdict: which team's items users clicked more, per interleaved arm.

Each interleaved request (teams logged, no fallback, shown) is won by the team
whose items got more clicks (``contract.interleaving.credit``); ties, including
requests without a click, decide nothing. The statistic is the share of decided
requests won by the first team; users, not requests, are the independent unit,
so its interval is a bootstrap over users (each resample redraws users with
Poisson(1) weights and keeps all of a user's requests together).

``requests_to_verdict`` replays the requests in serving order and checks the
interval every ``step`` requests: the verdict is reached at the first check
from which the interval excludes 0.5 at every later check (a verdict that
flips back does not count).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from contract.interleaving import credit
from contract.reports import markdown_table
from training.clicklog.labels import LabelledRanking


def settled(checks: Sequence[tuple[int, bool]]) -> int | None:
    """The first check (requests so far) from which every later check was significant; None if the last was not."""
    took = None
    for n, significant in reversed(checks):
        if not significant:
            break
        took = n
    return took


def outcomes(rankings: Sequence[LabelledRanking]) -> dict[str, list[tuple[float, str, int]]]:
    """Per interleaved arm, each counted request's (time, user, winner): winner 0, 1 or -1 for a tie."""
    out: dict[str, list[tuple[float, str, int]]] = {}
    for r in rankings:
        if r.teams is None or r.fallback is not None or not r.shown:
            continue
        if any(i.team not in r.teams for i in r.items):
            continue  # a malformed record: a team the arm does not have
        won = credit([r.teams.index(i.team) for i in r.items], [i.clicked for i in r.items])  # type: ignore[arg-type]
        out.setdefault(f"{r.arm}\x00{r.teams[0]}\x00{r.teams[1]}", []).append((r.ts, r.user_id, won))
    return {k: sorted(v) for k, v in out.items()}


def _user_counts(rows: Sequence[tuple[float, str, int]], users: dict[str, int]) -> np.ndarray:
    c = np.zeros((len(users), 2))
    for _, u, w in rows:
        if w >= 0:
            c[users[u], w] += 1
    return c


def _share_interval(counts: np.ndarray, weights: np.ndarray) -> tuple[float, float, float]:
    """(share of decided requests won by team 0, 2.5% and 97.5% bootstrap quantiles)."""
    decided = counts.sum()
    if decided == 0:
        return float("nan"), float("nan"), float("nan")
    share = counts[:, 0].sum() / decided
    den = weights @ counts.sum(1)
    boot = np.divide(weights @ counts[:, 0], den, out=np.full(len(den), np.nan), where=den > 0)
    lo, hi = np.nanquantile(boot, [0.025, 0.975])
    return float(share), float(lo), float(hi)


def verdict(rows: Sequence[tuple[float, str, int]], teams: tuple[str, str], resamples: int = 10_000,
            step: int = 50, seed: int = 0) -> dict[str, Any]:
    """One arm's verdict from its ``outcomes`` rows (in serving order)."""
    users = {u: k for k, u in enumerate(dict.fromkeys(u for _, u, _ in rows))}
    rng = np.random.default_rng(seed)
    weights = rng.poisson(1.0, size=(resamples, len(users))).astype(np.float64)
    counts = _user_counts(rows, users)
    share, lo, hi = _share_interval(counts, weights)
    wins = counts.sum(0)
    seq_w = weights[: min(resamples, 2000)]  # the sequential checks: fewer resamples, the same users' weights
    checks = []
    for n in range(step, len(rows) + 1, step):
        _, a, b = _share_interval(_user_counts(rows[:n], users), seq_w)
        checks.append((n, bool(a > 0.5 or b < 0.5)))
    took = settled(checks)
    winner = teams[0] if lo > 0.5 else teams[1] if hi < 0.5 else None
    return {"teams": list(teams), "requests": len(rows), "users": len(users), "decided": int(wins.sum()),
            "ties": len(rows) - int(wins.sum()), "wins": {teams[0]: int(wins[0]), teams[1]: int(wins[1])},
            "share_won": {teams[0]: share, teams[1]: 1 - share if share == share else share},
            "ci95": {teams[0]: [lo, hi], teams[1]: [1 - hi, 1 - lo]}, "winner": winner,
            "requests_to_verdict": took, "step": step, "resamples": resamples}


def interleaving_report(rankings: Sequence[LabelledRanking], resamples: int = 10_000, step: int = 50,
                        seed: int = 0) -> dict[str, Any]:
    """Every interleaved arm's verdict, keyed by arm name."""
    out = {}
    for key, rows in outcomes(rankings).items():
        arm, a, b = key.split("\x00")
        out[arm] = verdict(rows, (a, b), resamples, step, seed)
    return out


def report_markdown(rep: dict[str, Any]) -> str:
    if not rep:
        return ""
    rows = []
    for arm, v in rep.items():
        a, b = v["teams"]
        lo, hi = v["ci95"][a]
        took = v["requests_to_verdict"]
        rows.append([arm, f"{a} vs {b}", v["users"], v["requests"], v["decided"], f"{v['share_won'][a]:.3f}",
                     f"[{lo:.3f}, {hi:.3f}]", v["winner"] or "none yet",
                     "-" if took is None else f"{took} (checked every {v['step']})"])
    return "\n".join(["## Interleaved arms (team draft)", "", markdown_table(
        ["arm", "teams", "users", "requests", "decided", "share won by the first", "95% CI (users bootstrapped)",
         "winner", "requests to a settled verdict"], rows), "",
        "A request is decided when one team's items got more clicks; the interval excludes 0.5 when the "
        "preference is significant at 95%.", ""])
