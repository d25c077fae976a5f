"""Fixtures of the integration tests: requests are drawn from the trained tiny pipeline's bundle."""

from __future__ import annotations

import pytest

from tests.service.tiny_bundle import request_catalog


@pytest.fixture(scope="module")
def catalog(bundle_dir):
    return request_catalog(bundle_dir)
