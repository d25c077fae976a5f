"""What a test needs from the machine: a tool, a data set, an optional extra.

Where it is missing, the test skips and says why. Under CI (``CI=true``, which ``.ci/run``
sets) it fails instead: a green CI run must have run every test it selected.
"""

from __future__ import annotations

import importlib.util
import os
import shutil

import pytest


def in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in ("1", "true", "yes")


def need(ok: bool, why: str) -> None:
    if ok:
        return
    if in_ci():
        pytest.fail(f"{why} (CI=true: a missing requirement fails the run instead of skipping)", pytrace=False)
    pytest.skip(why)


def need_tool(name: str, install: str) -> None:
    need(shutil.which(name) is not None, f"{name} not installed ({install})")


def need_module(name: str, install: str) -> None:
    need(importlib.util.find_spec(name) is not None, f"Python module {name} not installed ({install})")
