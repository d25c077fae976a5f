"""Ray for the batch jobs (``hmpps encode --ray``, teacher scoring ``--ray``): optional, joined once."""

from __future__ import annotations

from typing import Any

from contract.errors import InputError


def ray_init(address: str) -> Any:
    """``auto``: the cluster ``RAY_ADDRESS`` names, else a local instance; otherwise that address."""
    try:
        import ray
    except ImportError:
        raise InputError("--ray needs Ray: pip install '.[scale]' (or run without --ray, in one process)") from None
    if not ray.is_initialized():
        ray.init(address=None if address == "auto" else address, include_dashboard=False, log_to_driver=False,
                 configure_logging=False)
    return ray
