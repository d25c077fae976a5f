"""A missing tool or data set skips a test on a developer's machine and fails it under CI (CI=true)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _run(tmp_path: Path, ci: str | None) -> subprocess.CompletedProcess[str]:
    probe = tmp_path / "test_probe.py"
    probe.write_text("from tests.needs import need_tool\n\n\ndef test_it():\n"
                     "    need_tool('no-such-tool-hmpps', 'apt-get install nothing')\n")
    env = {k: v for k, v in os.environ.items() if k != "CI"} | ({"CI": ci} if ci is not None else {})
    env["PYTHONPATH"] = str(REPO)
    return subprocess.run([sys.executable, "-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider", str(probe)],
                          capture_output=True, text=True, env=env, cwd=tmp_path)


def test_missing_requirement_skips_locally_and_fails_under_ci(tmp_path):
    local = _run(tmp_path, None)
    assert local.returncode == 0 and "1 skipped" in local.stdout and "no-such-tool-hmpps" in local.stdout
    ci = _run(tmp_path, "true")
    assert ci.returncode == 1 and "1 failed" in ci.stdout and "CI=true" in ci.stdout, ci.stdout
