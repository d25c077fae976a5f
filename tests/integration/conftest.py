"""Fixtures of the integration tests: requests are drawn from the trained tiny pipeline's bundle."""

from __future__ import annotations

import json

import pytest


@pytest.fixture(scope="module")
def catalog(bundle_dir):
    index = json.loads((bundle_dir / "features" / "index.json").read_text())
    hist = [json.loads(x) for x in (bundle_dir / "features" / "histories.jsonl").read_text().splitlines()]
    user = next(h for h in hist if len(h["history"]) >= 3)
    return {"products": index["products"], "queries": index["queries"], "user": user["user_id"],
            "history": user["history"]}
