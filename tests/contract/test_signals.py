"""Ranking signals (contract/signals.py) on hand-made requests whose answers are known."""

import numpy as np
import pytest

from contract.signals import GROUPS, Listing, check_groups, compute_signals, signal_dim
from contract.spec import FeatureSpec, build_inputs

# product rows: [text (2) | sel (2) | pop (1) | cf (2)]
TEXT, SEL, POP, CF = slice(0, 2), slice(2, 4), slice(4, 5), slice(5, 7)


def _row(text, sel, pop, cf):
    return np.array([*text, *sel, pop, *cf], np.float32)


A = _row((1, 0), (1, 0), 1.0, (1, 0))
A_TWIN = _row((0.95, 0.312), (0, 1), 0.2, (0, 1))  # another id, nearly the same text as A
B = _row((0, 1), (0, 1), 0.5, (0, 1))
C = _row((0.6, 0.8), (0.6, 0.8), 0.0, (0, 0))  # nobody bought it: no co-purchase vector


def _signals(groups, cands, cand_ids, hist, hist_ids, scores=None, positions=None, listed=None):
    listing = Listing(np.arange(len(cand_ids)) if positions is None else np.asarray(positions),
                      listed or len(cand_ids),
                      np.full(len(cand_ids), np.nan) if scores is None else np.asarray(scores, float),
                      cand_ids, hist_ids)
    return compute_signals(groups, np.stack(cands), np.stack(hist) if hist else np.zeros((0, 7), np.float32),
                           listing, TEXT, SEL, POP, CF)


def test_groups_are_checked_and_ordered():
    assert check_groups(["copurchase", "position"]) == ("position", "copurchase")
    with pytest.raises(ValueError, match="unknown signal group"):
        check_groups(["position", "clicks"])
    assert signal_dim(tuple(GROUPS)) == 22


def test_position_counts_unknown_candidates_and_score_is_z_scored():
    s = _signals(("position", "score"), [A, B], ["a", "b"], [], [], scores=[3.0, 1.0], positions=[0, 4], listed=5)
    np.testing.assert_allclose(s[:, 0], [0.0, 1.0])
    np.testing.assert_allclose(s[:, 1], [1.0, 1 / np.log2(6)], rtol=1e-6)
    np.testing.assert_allclose(s[:, 2:4], [[1, 1], [1, -1]])
    none = _signals(("score",), [A, B], ["a", "b"], [], [])
    assert not none.any()  # no score sent: "given" 0 and z 0


def test_repeat_finds_the_same_id_and_near_duplicates_with_their_recency():
    # history oldest first: a (3 purchases ago), b, x, y (the newest)
    hist, ids = [A, B, C, C], ["a", "b", "x", "y"]
    s = _signals(("repeat",), [A, A_TWIN, C], ["a", "twin", "c"], hist, ids)
    np.testing.assert_allclose(s[0], [1, 1 / 4, 0, 0])  # bought 3 purchases ago; no other id that close
    np.testing.assert_allclose(s[1], [0, 0, 1, 1 / 4])  # not bought, but its near-twin "a" was
    np.testing.assert_allclose(s[2], [0, 0, 1, 1.0])  # the same text as x and y (other ids): near-duplicate


def test_whole_history_and_copurchase_leave_the_candidate_itself_out():
    s = _signals(("whole_history", "copurchase"), [A], ["a"], [A, B], ["a", "b"])
    # only b counts: text cos(a, b) = 0, sel 0; cf: max/mean 0, the most recent other item is b: 0
    np.testing.assert_allclose(s[0, :4], [0, 0, 0, 0], atol=1e-7)
    np.testing.assert_allclose(s[0, 4], np.log1p(2) / np.log1p(50))
    np.testing.assert_allclose(s[0, 5:], [0, 0, 0], atol=1e-7)
    s = _signals(("copurchase",), [A_TWIN], ["twin"], [A, B], ["a", "b"])
    np.testing.assert_allclose(s[0], [1.0, 0.5, 1.0], atol=1e-6)  # cf equals b's, not a's
    empty = _signals(("whole_history", "copurchase", "repeat"), [A], ["a"], [], [])
    assert not empty.any()


def test_build_inputs_adds_signals_only_when_the_spec_names_them():
    base = FeatureSpec(2, 0, 1, 2)
    assert "signals" not in build_inputs(base, np.ones(3, np.float32), np.ones((2, 4), np.float32),
                                         np.ones((1, 4), np.float32))
    spec = FeatureSpec(2, 0, 1, 2, pop_dim=1, cf_dim=2, signals=("position", "popularity", "copurchase"))
    assert spec.product_dim == 7 and spec.signal_dim == 7 and spec.input_names[-1] == "signals"
    cands = np.zeros((2, 7), np.float32)
    with pytest.raises(ValueError, match="need the request's listing"):
        build_inputs(spec, np.ones(3, np.float32), cands, np.zeros((0, 7), np.float32))
    out = build_inputs(spec, np.ones(3, np.float32), cands, np.zeros((0, 7), np.float32),
                       listing=Listing.in_order(["p", "q"], []))
    assert out["signals"].shape == (2, 7) and out["signals"].dtype == np.float32
    with pytest.raises(ValueError, match="copurchase signal needs"):
        FeatureSpec(2, 0, 1, 2, signals=("copurchase",))
    assert FeatureSpec.from_dict(spec.to_dict()) == spec
    # a bundle from before the signals reads as a spec without them
    old = {k: v for k, v in base.to_dict().items() if k not in ("pop_dim", "cf_dim", "signals", "signal_dim")}
    assert FeatureSpec.from_dict(old) == base


def test_every_column_has_a_name():
    from contract.signals import COLUMNS, column_names

    assert {g: len(c) for g, c in COLUMNS.items()} == GROUPS
    names = column_names(tuple(GROUPS))
    assert len(names) == len(set(names)) == signal_dim(tuple(GROUPS))


def test_sequence_reads_what_follows_the_newest_purchases_with_recency_weights():
    """The sequence group: transition score <from(history item), to(candidate)> from the newest other
    purchase and recency-weighted over the last ones (0.5 ** rank, normalised), and the recency-weighted
    text and stage-1 cosines; the candidate's own purchase is not an "other" item."""
    from contract.signals import RECENCY_DECAY

    def row(text, sel, frm, to):  # [text (2) | sel (2) | seq: from (2), to (2)]
        return np.array([*text, *sel, *frm, *to], np.float32)

    printer = row((1, 0), (1, 0), (2, 0), (0, 0))  # things tend to follow a printer along axis 0
    paper = row((0, 1), (0, 1), (0, 1), (0, 0))
    ink = row((0.6, 0.8), (0.6, 0.8), (0, 0), (1, 0))  # ink is what follows a printer
    desk = row((0, 1), (1, 0), (0, 0), (0, 3))  # a desk follows paper
    seq, text, sel = slice(4, 8), slice(0, 2), slice(2, 4)

    def sig(cands, ids, hist, hist_ids):
        listing = Listing(np.arange(len(ids)), len(ids), np.full(len(ids), np.nan), ids, hist_ids)
        return compute_signals(("sequence",), np.stack(cands), np.stack(hist) if hist else np.zeros((0, 8), np.float32),
                               listing, text, sel, slice(0, 0), slice(0, 0), seq)

    # history oldest first: printer, then paper (the newest)
    s = sig([ink, desk, paper], ["ink", "desk", "paper"], [printer, paper], ["printer", "paper"])
    w_paper, w_printer = 1 / (1 + RECENCY_DECAY), RECENCY_DECAY / (1 + RECENCY_DECAY)
    # ink: nothing after paper (newest), 2.0 after the printer
    np.testing.assert_allclose(s[0], [0.0, w_printer * 2.0, w_paper * 0.8 + w_printer * 0.6,
                                      w_paper * 0.8 + w_printer * 0.6], rtol=1e-6)
    # desk: 3.0 after paper (newest)
    np.testing.assert_allclose(s[1, :2], [3.0, w_paper * 3.0], rtol=1e-6)
    # paper itself: its own purchase is excluded, so the newest other item is the printer
    np.testing.assert_allclose(s[2], [0.0, 0.0, 0.0, 0.0], atol=1e-7)
    assert sig([ink], ["ink"], [], []).tolist() == [[0.0, 0.0, 0.0, 0.0]]  # no history: zeros
    # the window keeps the last SEQUENCE_WINDOW other purchases only
    from contract.signals import SEQUENCE_WINDOW

    long = sig([ink], ["ink"], [printer] + [paper] * SEQUENCE_WINDOW, ["printer"] + [f"p{i}" for i in range(SEQUENCE_WINDOW)])
    assert long[0, 1] == 0.0  # the printer fell out of the window


def test_a_spec_with_the_sequence_group_needs_an_even_transition_slice():
    with pytest.raises(ValueError, match="transition vectors"):
        FeatureSpec(2, 0, 2, 3, signals=("sequence",))
    with pytest.raises(ValueError, match="even"):
        FeatureSpec(2, 0, 2, 3, seq_dim=3)
    spec = FeatureSpec(2, 0, 2, 3, signals=("sequence",), seq_dim=4)
    assert spec.product_dim == 2 + 0 + 1 + 2 + 4 and spec.product_seq == slice(5, 9)
    assert FeatureSpec.from_dict(spec.to_dict()) == spec
