"""The two experiment arms beyond A/B: an exploring arm and an interleaved arm.

An exploring arm serves the student's ranking redrawn by Plackett-Luce
(``contract.exploration``) and logs each shown item's display probability; an
interleaved arm ranks with both of its teams' rankers and serves their
team-draft merge (``contract.interleaving``), logging each item's team. What the
served log needs beyond the response travels in ``Shown``.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from contract.exploration import Exploration, draw, log_odds, request_rng
from contract.interleaving import team_draft
from service.api.schemas import RerankRequest, RerankResponse


@dataclass
class Shown:
    """How the served order was drawn, by product id; empty for a deterministic ranker."""

    propensity: dict[str, float] = field(default_factory=dict)
    team: dict[str, str] = field(default_factory=dict)
    policy: str | None = None
    steps: list[float] | None = None  # each position's conditional draw probability, in served order
    teams: tuple[str, str] | None = None

    def slate(self, shown: int) -> float | None:
        return None if self.steps is None else float(np.prod(self.steps[:shown]))


def explore_order(scores: Sequence[float | None], ranked: list[int], ids: Sequence[str], policy: Exploration,
                  arm: str, request_id: str) -> tuple[list[int], Shown]:
    """Redraw the scored candidates' slots of ``ranked`` (the deterministic order) by the policy.

    Candidates without features keep their slots (``scoring.order``) and are shown with probability 1.
    """
    slots = [k for k, i in enumerate(ranked) if scores[i] is not None]
    known = [ranked[k] for k in slots]
    d = draw(log_odds([scores[i] for i in known]), policy, request_rng(arm, request_id))
    out = list(ranked)
    for slot, j in zip(slots, d.order, strict=True):
        out[slot] = known[j]
    prop = {ids[i]: 1.0 for i in ranked}
    step_at = [1.0] * len(ranked)
    for slot, j, p, st in zip(slots, d.order, d.propensity, d.steps, strict=True):
        prop[ids[known[j]]] = p
        step_at[slot] = st
    return out, Shown(propensity=prop, policy=policy.describe(), steps=step_at)


Handle = Callable[[RerankRequest, Any], Awaitable[tuple[RerankResponse, Shown]]]


async def interleave(req: RerankRequest, sides: Sequence[Any], teams: Sequence[str],
                     handle: Handle) -> tuple[RerankResponse, Shown]:
    """Both teams rank the full list (concurrently); the team-draft merge is served.

    If either side fell back, that side's response (the caller's order, with its fallback) is
    served and logged without teams, so a failing ranker never scores wins for the other.
    """
    t0 = time.perf_counter()
    full = req.model_copy(update={"top_n": None})
    (ra, _), (rb, _) = await asyncio.gather(handle(full, sides[0]), handle(full, sides[1]))
    for r in (ra, rb):
        if r.fallback is not None:
            return r.model_copy(update={"results": r.results[: req.top_n]}), Shown()
    by_team = [{r.product_id: r for r in ra.results}, {r.product_id: r for r in rb.results}]
    merged = team_draft([r.product_id for r in ra.results], [r.product_id for r in rb.results],
                        sides[0].arm.name, sides[0].request_id)
    results = [by_team[t][pid].model_copy(update={"rank": k + 1}) for k, (pid, t) in enumerate(merged)]
    timings = {f"{teams[0]}.total": ra.timings_ms.get("total", 0.0), f"{teams[1]}.total": rb.timings_ms.get("total", 0.0),
               "total": round((time.perf_counter() - t0) * 1000, 3)}
    resp = RerankResponse(request_id=ra.request_id, arm=ra.arm, model_version=f"{ra.model_version}|{rb.model_version}",
                          fallback=None, results=results[: req.top_n], timings_ms=timings, explain=ra.explain)
    return resp, Shown(team={pid: teams[t] for pid, t in merged}, teams=(teams[0], teams[1]))
