"""The reliability suite against a real redis-server (skipped where Debian's redis-server is absent)."""

from __future__ import annotations

import shutil

import pytest

pytestmark = pytest.mark.slow


@pytest.mark.skipif(shutil.which("redis-server") is None, reason="needs redis-server (apt-get install redis-server)")
def test_redis_kill_and_reload_under_load_lose_nothing(bundle_dir):
    from loadtest.reliability import run_suite

    rep = run_suite(bundle_dir, ("redis_kill", "reload"), rps=50)
    kill = rep["redis_kill"]
    assert kill["server_errors_5xx"] == 0 and not kill["errors"]
    assert kill["fail_open_answers"] > 0  # Redis really was gone, and answers failed open
    assert kill["recovery_s"] is not None and kill["readyz_false_from_s"] is not None
    assert rep["reload"]["failed_or_fallback"] == 0 and rep["reload"]["reload_status"] == [200]
