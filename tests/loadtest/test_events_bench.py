"""``hmpps bench-events`` against the real service: every event it posts is recorded."""

from __future__ import annotations

import pytest

from contract import keys
from contract.errors import InputError
from loadtest.events_bench import markdown, run_events_bench


def test_events_bench_records_every_event_it_counts(tmp_path, bundle_dir):
    from service.api.app import create_app
    from service.infra.settings import Settings
    from tests.live_server import live_server

    app = create_app(Settings(redis_url=None, embedded_redis_path=tmp_path / "r.db", bundle=bundle_dir))
    with live_server(app) as url:
        rep = run_events_bench(url, bundle_dir, seconds=1.5, batch=20, concurrency=2)
        stream = app.state.hmpps.redis.client.xlen(keys.EVENTS_STREAM)
    assert rep["events"] > 0 and rep["status"] == {"200": rep["batches"]} and rep["events"] == 20 * rep["batches"]
    assert stream == rep["events"] and rep["events_per_s"] > 0
    assert "events/s" in markdown(rep, "hmpps bench-events ...")


def test_events_bench_refuses_remote_targets_and_bad_sizes(bundle_dir):
    with pytest.raises(InputError, match="loopback"):
        run_events_bench("http://10.1.2.3:8000", bundle_dir, 1, 10, 1)
    with pytest.raises(InputError, match="--batch"):
        run_events_bench("http://127.0.0.1:9", bundle_dir, 1, 0, 1)
