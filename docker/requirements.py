"""Print the pip requirements of pyproject.toml's extras, for the Docker dependency layers.

pyproject.toml stays the one list of dependencies; the image installs them before
the code is copied, so a code change does not rebuild the dependency layers.

    python requirements.py service [train ...] [--ort onnxruntime] [--skip torch]
"""

from __future__ import annotations

import argparse
import re
import sys
import tomllib
from pathlib import Path


def requirements(pyproject: Path, extras: list[str], ort: str | None, skip: list[str]) -> list[str]:
    project = tomllib.loads(pyproject.read_text())["project"]
    optional = project.get("optional-dependencies", {})
    unknown = [e for e in extras if e not in optional]
    if unknown:
        raise SystemExit(f"unknown extra(s) {unknown}; pyproject.toml has {sorted(optional)}")
    out: list[str] = list(project["dependencies"])
    for extra in extras:
        out += optional[extra]
    reqs = []
    for req in out:
        name = re.split(r"[<>=!~;\[ ]", req, maxsplit=1)[0].lower()
        if name in skip:
            continue
        if ort and name in ("onnxruntime", "onnxruntime-gpu"):
            req = ort + req[len(name):]  # keep the version bound, swap the CPU/GPU package
        if req not in reqs:
            reqs.append(req)
    return reqs


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("extras", nargs="+")
    p.add_argument("--pyproject", type=Path, default=Path("pyproject.toml"))
    p.add_argument("--ort", choices=["onnxruntime", "onnxruntime-gpu"], help="ONNX Runtime package to install")
    p.add_argument("--skip", action="append", default=[], help="package to leave out (installed separately)")
    a = p.parse_args()
    sys.stdout.write("\n".join(requirements(a.pyproject, a.extras, a.ort, [s.lower() for s in a.skip])) + "\n")


if __name__ == "__main__":
    main()
