"""Team-draft interleaving (Radlinski, Kurup and Joachims, 2008): one list from two rankers' lists.

The two teams pick in rounds, like captains choosing players: in each round a
coin decides which team picks first, and each team adds its highest-ranked item
not yet taken. Every item appears once; after each round both teams have the
same number of picks (one more for one team when the list is odd). A click is
credited to the team that placed the item, and a request is won by the team
with more credited clicks. The coins are seeded from the request id, so a
retried request gets the same merged list and the same teams.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

from contract.errors import InputError


def _coins(salt: str, request_id: str) -> bytes:
    return hashlib.sha256(f"interleave\x00{salt}\x00{request_id}".encode()).digest()


def team_draft(a: Sequence[str], b: Sequence[str], salt: str, request_id: str) -> list[tuple[str, int]]:
    """The merged list as ``(item, team)`` pairs, team 0 for ``a`` and 1 for ``b``.

    ``a`` and ``b`` must order the same set of distinct items.
    """
    if len(set(a)) != len(a) or set(a) != set(b):
        raise InputError("team draft: both rankers must order the same distinct items")
    coins = _coins(salt, request_id)
    taken: set[str] = set()
    out: list[tuple[str, int]] = []
    ia = ib = 0
    rounds = 0
    while len(out) < len(a):
        first = (coins[(rounds // 8) % len(coins)] >> (rounds % 8)) & 1
        rounds += 1
        for team in (first, 1 - first):
            ranked = a if team == 0 else b
            i = ia if team == 0 else ib
            while i < len(ranked) and ranked[i] in taken:
                i += 1
            if i < len(ranked):
                taken.add(ranked[i])
                out.append((ranked[i], team))
                i += 1
            if team == 0:
                ia = i
            else:
                ib = i
    return out


def credit(teams: Sequence[int], clicked: Sequence[bool]) -> int:
    """Who won one request: 0 or 1, or -1 for a tie (no clicks, or as many for each team)."""
    score = [0, 0]
    for t, c in zip(teams, clicked, strict=True):
        if c:
            score[t] += 1
    return -1 if score[0] == score[1] else (0 if score[0] > score[1] else 1)
