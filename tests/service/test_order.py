"""``order()``: known candidates sorted by score fill the known slots; unknown ones stay where the caller put them."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from service.core.scoring import order


def test_known_candidates_are_sorted_and_unknown_ones_keep_their_slot():
    assert order([0.1, None, 0.9, 0.5]) == [2, 1, 3, 0]
    assert order([None, None]) == [0, 1]
    assert order([]) == []


def test_ties_keep_the_callers_order():
    assert order([0.5, 0.5, 0.7, 0.5]) == [2, 0, 1, 3]


@given(st.lists(st.one_of(st.none(), st.floats(0, 1, allow_nan=False)), max_size=30))
def test_order_is_a_permutation_with_these_properties(scores):
    out = order(scores)
    assert sorted(out) == list(range(len(scores)))
    for slot, i in enumerate(out):
        if scores[slot] is None:
            assert i == slot  # unknown: exactly where it was
        else:
            assert scores[i] is not None  # a known slot gets a known candidate
    known = [scores[i] for i in out if scores[i] is not None]
    assert known == sorted(known, reverse=True)
