"""``hmpps``: the command line, one module per command group.

    root.py     the root command and its sub-groups     common.py  shared helpers and choices
    data.py     hmpps data amazon | synthetic            offline.py retrieve, summarize, teacher, distill,
    serving.py  bundle verify, publish, serve,                      pipeline, ablate, headroom, metrics
                ab-report, sample-request                bench.py   bench-model, loadtest, bench-report,
                                                                    serve-peer, reliability

Commands import their heavy dependencies (torch, transformers) inside the
command body, so ``hmpps --help`` and the service stay light.
"""

from __future__ import annotations

import sys

from hmpps.cli import bench, data, experiments, offline, serving  # noqa: F401 - each registers its commands
from hmpps.cli.root import app

__all__ = ["app", "main"]


def main() -> None:  # pragma: no cover - console entry point
    app(prog_name="hmpps")
    sys.exit(0)
