"""Sec. 4.3 selection on crafted embeddings."""

import numpy as np
import pytest

from contract.history import select_history, select_latest, select_random


def test_two_step_selection_first_filters_by_query_then_picks_by_candidate():
    # d=3 axes: x = query topic, y = candidate A's topic, z = unrelated
    history = np.array([
        [1.0, 0.0, 0.0],   # 0: on-query, neutral to candidates
        [0.0, 0.0, 1.0],   # 1: off-query, off-candidate
        [0.7, 0.7, 0.0],   # 2: on-query and like candidate A
        [0.0, 1.0, 0.0],   # 3: like candidate A but off-query: must be filtered out in step 1
        [0.8, 0.0, 0.6],   # 4: on-query, a bit like candidate B
    ])
    query = np.array([1.0, 0.0, 0.0])
    cands = np.array([[0.0, 1.0, 0.0], [0.0, 0.0, 1.0]])
    sel = select_history(history, query, cands, k=1)  # 2*k = 2 closest to query: items 0 and 4
    assert sel.shape == (2, 1)
    # step 1 keeps {0, 4} (cos 1.0 and 0.8), drops 2 (0.707) and 3 (0.0)
    # candidate A is orthogonal to both 0 and 4: the tie goes to the more recent, 4
    assert sel.tolist() == [[4], [4]]
    # k=2: pool = 4 most query-like = 0 (1.0), 4 (0.8), 2 (0.71), then 1 and 3 tie at 0 -> recent 3
    sel2 = select_history(history, query, cands, k=2)
    assert sel2[0].tolist() == [2, 3], "candidate A: 3 (cos 1.0) and 2 (0.71), chronological"
    assert sel2[1].tolist() == [3, 4], "candidate B: 4 (0.6), then 0, 2 and 3 tie at 0 -> the most recent, 3"


def test_query_filter_excludes_candidate_similar_but_query_irrelevant_items():
    history = np.array([[0.0, 1.0], [1.0, 0.1], [0.9, 0.2], [0.95, 0.0]])
    sel = select_history(history, np.array([1.0, 0.0]), np.array([[0.0, 1.0]]), k=1)
    # query cosines: 0 -> 0.0, 1 -> 0.995, 2 -> 0.976, 3 -> 1.0; pool = {3, 1}
    # candidate cosines inside the pool: 3 -> 0.0, 1 -> 0.0995
    assert sel.tolist() == [[1]], "item 0 equals the candidate but is dropped by the query step"


def test_scale_invariance_short_histories_and_ties():
    rng = np.random.default_rng(0)
    h, q, c = rng.normal(size=(6, 4)), rng.normal(size=4), rng.normal(size=(3, 4))
    assert np.array_equal(select_history(h, q, c, 2), select_history(h * 5, q * 0.1, c * 3, 2))
    assert select_history(h[:1], q, c, 3).shape == (3, 1)
    assert select_history(np.zeros((0, 4)), q, c, 3).shape == (3, 0)
    tied = np.ones((4, 2))
    assert list(select_history(tied, np.ones(2), np.ones((1, 2)), 2)[0]) == [2, 3], "ties prefer recent"


def test_latest_and_random():
    assert list(select_latest(5, 2)) == [3, 4]
    assert list(select_latest(1, 3)) == [0]
    r = select_random(10, 4, np.random.default_rng(1))
    assert len(r) == 4 and list(r) == sorted(r) and len(set(r)) == 4
    with pytest.raises(ValueError):
        select_history(np.ones((2, 2)), np.ones(2), np.ones(2), 1)
