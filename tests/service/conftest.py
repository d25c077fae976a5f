"""Fixtures of the service tests: a torch-free bundle (tests/service/tiny_bundle.py), requests drawn from it.

Nothing here trains: these tests run in a virtual environment with only the service and dev extras
(``make test-service``). What needs the trained pipeline lives in tests/integration.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.service.tiny_bundle import build, request_catalog


@pytest.fixture(scope="session")
def bundle_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build(tmp_path_factory.mktemp("tiny") / "bundle")


@pytest.fixture(scope="session")
def images_dir(bundle_dir: Path) -> Path:
    return bundle_dir.parent / "images"


@pytest.fixture(scope="module")
def catalog(bundle_dir):
    return request_catalog(bundle_dir)
