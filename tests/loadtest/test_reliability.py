"""The reliability suite against a real redis-server (without redis-server it skips; under CI it fails)."""

from __future__ import annotations

import pytest

from tests.needs import need_tool

pytestmark = pytest.mark.slow


def test_redis_kill_and_reload_under_load_lose_nothing(bundle_dir):
    need_tool("redis-server", "apt-get install redis-server; make tools installs it as root")
    from loadtest.reliability import run_suite

    rep = run_suite(bundle_dir, ("redis_kill", "reload"), rps=50)
    kill = rep["redis_kill"]
    assert kill["server_errors_5xx"] == 0 and not kill["errors"]
    assert kill["fail_open_answers"] > 0  # Redis really was gone, and answers failed open
    assert kill["recovery_s"] is not None and kill["readyz_false_from_s"] is not None
    assert rep["reload"]["failed_or_fallback"] == 0 and rep["reload"]["reload_status"] == [200]
    # /events beside the reranks: while Redis was down some batches were refused (503, the caller retries),
    # and every batch the service accepted is in the events stream afterwards
    for name in ("redis_kill", "reload"):
        ev = rep[name]["events"]
        assert ev["accepted"] > 0 and ev["accepted_but_lost"] == 0 and ev["in_stream"] == ev["accepted"], (name, ev)
    assert set(kill["events"]["batch_status"]) - {"200"}  # Redis really was gone for /events too
