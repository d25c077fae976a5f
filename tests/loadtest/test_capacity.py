"""The capacity benchmark's pieces: wrk's report parsed, the scaled bundle valid and servable."""

from __future__ import annotations

import numpy as np
import pytest

from contract.bundle import verify_bundle
from contract.errors import InputError
from loadtest.capacity import CapacityConfig, parse_wrk, scaled_bundle, wrk_script

WRK = """Running 10s test @ http://127.0.0.1:8061/rerank
  1 threads and 1 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency     2.37ms  680.43us  10.09ms   81.08%
    Req/Sec   425.64     79.52   610.00     70.00%
  Latency Distribution
     50%  812.00us
     75%    2.66ms
     90%    3.05ms
     99%    1.05s
  4242 requests in 10.00s, 2.84MB read
  Socket errors: connect 0, read 2, write 0, timeout 1
  Non-2xx or 3xx responses: 7
Requests/sec:    423.78
Transfer/sec:    581.26KB
"""


def test_parse_wrk_units_and_errors():
    r = parse_wrk(WRK)
    assert r == {"rps": 423.78, "requests": 4242, "non_2xx": 7, "socket_errors": 3, "p50_ms": 0.812, "p99_ms": 1050.0}


def test_config_is_validated():
    with pytest.raises(InputError, match="at least 1000"):
        CapacityConfig(products=10).check()
    with pytest.raises(InputError, match="durations"):
        CapacityConfig(rate=0).check()


def test_scaled_bundle_is_a_valid_bundle_in_its_storage(bundle_dir, tmp_path):
    out = scaled_bundle(bundle_dir, tmp_path / "scaled", 1500, "float16")
    m = verify_bundle(out)
    assert m.spec.storage == "float16" and m.version.startswith("capacity-float16-")
    products = np.load(out / "features" / "products.npy")
    assert products.shape == (1500, m.spec.product_dim)
    assert len(np.unique(products[:, :8], axis=0)) == 1500  # distinct vectors, not copies
    script = wrk_script(bundle_dir, tmp_path / "r.lua").read_text()
    assert script.count("[==[") == 300 and 'wrk.format("POST", "/rerank"' in script
