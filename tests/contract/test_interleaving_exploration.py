"""Team-draft merging, Plackett-Luce exploration with its display probabilities, and the arms that use them."""

from __future__ import annotations

import itertools
from collections import Counter

import numpy as np
import pytest

from contract.arms import parse_experiment, slot_name, write_experiment
from contract.errors import InputError
from contract.exploration import Exploration, draw, marginals, request_rng
from contract.interleaving import credit, team_draft
from contract.served import ServedItem, ServedRanking

ITEMS = [f"p{i}" for i in range(9)]


@pytest.mark.parametrize("rid", [f"req-{i}" for i in range(40)])
def test_team_draft_shows_every_item_once_with_balanced_teams(rid):
    b = ITEMS[::-1]
    merged = team_draft(ITEMS, b, "salt", rid)
    assert sorted(p for p, _ in merged) == sorted(ITEMS)
    for k in range(1, len(merged) + 1):  # after every prefix, the teams differ by at most one pick
        picks = Counter(t for _, t in merged[:k])
        assert abs(picks[0] - picks[1]) <= 1
    # each team's picks keep that team's own order
    for team, ranked in ((0, ITEMS), (1, b)):
        mine = [p for p, t in merged if t == team]
        assert mine == sorted(mine, key=ranked.index)


def test_team_draft_is_deterministic_per_request_and_varies_across_requests():
    a, b = ITEMS, ITEMS[3:] + ITEMS[:3]
    assert team_draft(a, b, "s", "r1") == team_draft(a, b, "s", "r1")
    firsts = Counter(team_draft(a, b, "s", f"r{i}")[0][1] for i in range(400))
    assert 150 < firsts[0] < 250  # a fair coin decides who picks first
    assert team_draft(a, a, "s", "r1")[0][0] == "p0"  # identical rankers: the merge is their list
    assert [p for p, _ in team_draft(a, a, "s", "r9")] == a


def test_team_draft_refuses_lists_of_different_items():
    with pytest.raises(InputError, match="same distinct items"):
        team_draft(["a", "b"], ["a", "c"], "s", "r")
    with pytest.raises(InputError):
        team_draft(["a", "a"], ["a", "a"], "s", "r")


def test_credit_goes_to_the_team_with_more_clicks():
    assert credit([0, 1, 0, 1], [True, False, False, False]) == 0
    assert credit([0, 1, 0, 1], [False, True, False, True]) == 1
    assert credit([0, 1, 0, 1], [True, True, False, False]) == -1
    assert credit([0, 1], [False, False]) == -1


def _brute_force(logits, t):
    w = np.exp(np.asarray(logits) / t)
    n = len(w)
    out, slates = np.zeros((n, n)), {}
    for perm in itertools.permutations(range(n)):
        p, left = 1.0, w.sum()
        for j in perm:
            p *= w[j] / left
            left -= w[j]
        slates[perm] = p
        for k, j in enumerate(perm):
            out[j, k] += p
    return out, slates


@pytest.mark.parametrize("t", [0.2, 1.0, 5.0])
def test_marginals_equal_the_sum_over_every_permutation(t):
    logits = np.array([1.5, 0.2, -0.7, 0.9, 0.0])
    exact, _ = _brute_force(logits, t)
    got = marginals(logits, t)
    assert np.allclose(got, exact, atol=1e-12)
    assert np.allclose(got.sum(0), 1) and np.allclose(got.sum(1), 1)


def test_a_draw_logs_the_probabilities_its_sampler_has():
    logits = np.array([1.0, 0.4, 0.1, -0.5, 2.0])
    policy = Exploration(0.8, depth=5)
    exact, slates = _brute_force(logits, 0.8)
    seen: Counter[tuple[int, ...]] = Counter()
    for i in range(20_000):
        d = draw(logits, policy, request_rng("arm", f"r{i}"))
        seen[tuple(d.order)] += 1
        if i < 50:  # the logged numbers are the exact ones for the drawn order
            assert d.propensity == pytest.approx([exact[j, k] for k, j in enumerate(d.order)], abs=1e-12)
            assert d.slate() == pytest.approx(slates[tuple(d.order)], rel=1e-9)
    # the sampler's frequencies match the logged slate probabilities (the most likely orders)
    for order, n in seen.most_common(5):
        assert n / 20_000 == pytest.approx(slates[order], abs=0.012)
    at0 = Counter(o[0] for o, n in seen.items() for _ in range(n))
    for j in range(5):  # and the marginal of each item at the top
        assert at0[j] / 20_000 == pytest.approx(exact[j, 0], abs=0.012)


def test_only_the_top_depth_are_redrawn_and_a_cold_policy_is_the_student():
    logits = np.array([5.0, 4.0, 3.0, 2.0, 1.0, 0.0])
    d = draw(logits, Exploration(100.0, depth=3), request_rng("a", "r"))
    assert sorted(d.order[:3]) == [0, 1, 2] and d.order[3:] == [3, 4, 5]
    assert d.propensity[3:] == [1.0, 1.0, 1.0] and d.steps[3:] == [1.0, 1.0, 1.0]
    assert d.slate() == pytest.approx(1 / 6, rel=0.03)  # nearly uniform over the 3! orders
    cold = draw(logits, Exploration(0.01), request_rng("a", "r"))
    assert cold.order == list(range(6)) and min(cold.propensity) > 0.999
    assert draw(logits, Exploration(1.0), request_rng("a", "r")) == draw(logits, Exploration(1.0),
                                                                             request_rng("a", "r"))


@pytest.mark.parametrize("doc,match", [
    ({"temperature": 0}, "temperature"), ({"temperature": 1, "depth": 11}, "depth"),
    ({"temperature": 1, "depth": 1}, "depth"), ({"depth": 3}, "temperature"),
    ({"temperature": 1, "policy": "swaps"}, "plackett-luce"), ({"temperature": 1, "x": 1}, "unknown"), (3, "mapping"),
])
def test_an_exploration_setting_is_checked(doc, match):
    with pytest.raises(ValueError, match=match):
        Exploration.from_dict(doc)


def test_arms_file_declares_interleaved_and_exploring_arms(tmp_path):
    exp = parse_experiment({"experiment": "e", "salt": "s", "arms": [
        {"name": "control", "weight": 60, "bundle": "passthrough"},
        {"name": "explore", "weight": 20, "bundle": "b1", "explore": {"temperature": 0.5, "depth": 6}},
        {"name": "il", "weight": 20, "interleave": {"new": "b2", "old": "passthrough"}}]}, tmp_path)
    control, explore, il = exp.arms
    assert explore.explore == Exploration(0.5, 6) and explore.bundle == tmp_path / "b1"
    assert il.interleaved and il.bundle is None and il.teams == (("new", tmp_path / "b2"), ("old", None))
    assert il.slots() == [(slot_name("il", "new"), tmp_path / "b2"), ("il:old", None)]
    assert control.slots() == [("control", None)] and not control.interleaved
    assert exp.expected_shares() == {"control": 0.6, "explore": 0.2, "il": 0.2}
    write_experiment(tmp_path / "arms.yaml", "e", "s", [("il", 1, {"interleave": {"a": "x", "b": "passthrough"}})])


@pytest.mark.parametrize("arm,match", [
    ({"name": "a", "bundle": "b", "interleave": {"x": "b", "y": "c"}}, "exactly one of"),
    ({"name": "a"}, "exactly one of"),
    ({"name": "a", "interleave": {"x": "b"}}, "exactly two"),
    ({"name": "a", "interleave": {"x": "b", "y": "b"}}, "same ranker"),
    ({"name": "a", "interleave": {"x": "b", "y:z": "c"}}, "without ':'"),
    ({"name": "a:b", "bundle": "b"}, "must not contain"),
    ({"name": "a", "bundle": "passthrough", "explore": {"temperature": 1}}, "needs a bundle"),
    ({"name": "a", "interleave": {"x": "b", "y": "c"}, "explore": {"temperature": 1}}, "bundle arm"),
    ({"name": "a", "bundle": "b", "explore": {"temperature": -1}}, "arms\\[0\\].explore: temperature"),
    ({"name": "a", "bundle": "b", "exploration": {}}, "unknown keys"),
])
def test_a_bad_experiment_arm_is_named(tmp_path, arm, match):
    with pytest.raises(InputError, match=match):
        parse_experiment({"arms": [arm]}, tmp_path)


def test_served_records_carry_propensities_and_teams_and_old_records_still_parse():
    rec = ServedRanking("r", "u", "q", "explore", "v1", None, 1.5,
                        (ServedItem("a", 1, 0.9, 2.0, 0.7), ServedItem("b", 0, 0.1, 3.0, 0.3)), 2,
                        "plackett-luce(T=0.5, depth=10)", 0.21)
    assert ServedRanking.from_json(rec.to_json()) == rec
    il = ServedRanking("r", "u", "q", "il", "v1|passthrough", None, 1.5,
                       (ServedItem("a", 1, 0.9, 2.0, None, "new"), ServedItem("b", 0, 3.0, 3.0, None, "old")), 2,
                       teams=("new", "old"))
    assert ServedRanking.from_json(il.to_json()) == il
    old = ServedRanking.from_json('{"id":"r","u":"u","q":"q","a":"s","v":"v","ts":1,"c":[["a",0,0.5]]}')
    assert old.items[0].propensity is None and old.items[0].team is None and old.teams is None
    for bad in ('"tm":["x"]', '"ps":0'):
        with pytest.raises(ValueError):
            ServedRanking.from_json('{"id":"r","u":"u","q":"q","a":"s","v":"v","ts":1,"c":[],' + bad + "}")
