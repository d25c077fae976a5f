"""How later stages read a first stage's lists: compactly, and exactly as they were written."""

import json

from training.candidates import Lines


def test_lines_give_back_each_line_as_parsed_and_share_product_ids(tmp_path):
    written = [{"query_id": f"q{i}", "user_id": f"u{i % 3}", "query": "desk lamp", "split": "test", "target": "p1",
                "candidates": [{"product_id": f"p{j}", "score": round(1.0 / (1 + i + j), 6)} for j in range(10)],
                "fit": False} | ({"fold": i % 2} if i % 2 else {}) for i in range(50)]
    path = tmp_path / "candidates.jsonl"
    path.write_text("".join(json.dumps(x) + "\n" for x in written))
    lines = Lines(json.loads(x) for x in path.read_text().splitlines())
    assert len(lines) == 50 and list(lines) == [x["query_id"] for x in written]
    assert all(lines[x["query_id"]] == x for x in written), "a line reads back as it was written, fold included"
    assert "q7" in lines and "q50" not in lines and lines.get("q50") is None
    assert lines.ids("q3") == [f"p{j}" for j in range(10)]
    # one string per product id across lines, not one per occurrence
    assert lines.ids("q1")[4] is lines.ids("q2")[4]
    lines["q0"]["candidates"].clear()  # a caller changing what it read changes nothing held
    assert len(lines["q0"]["candidates"]) == 10
