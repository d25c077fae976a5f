"""Processes of a data-parallel teacher run (``accelerate launch``): who writes, and a bounded wait.

Every rank trains on its shard of each epoch's query groups, with gradients
averaged across ranks after each step (DDP over gloo on CPU, NCCL on GPUs).
Rank 0 alone writes checkpoints, embeddings, scores and reports; the others
stop after training. A collective that waits longer than
``HMPPS_DIST_TIMEOUT_S`` (default 600 s) raises instead of hanging, and
``accelerate launch`` (torchrun) stops the other ranks when one fails and
exits non-zero.
"""

from __future__ import annotations

import os
from datetime import timedelta
from typing import Any

_STATE: Any = None


def state() -> Any:
    """The process's ``accelerate.PartialState``; the first call joins the process group."""
    global _STATE
    if _STATE is None:
        import torch
        from accelerate import PartialState

        timeout = timedelta(seconds=float(os.environ.get("HMPPS_DIST_TIMEOUT_S", "600")))
        _STATE = PartialState(cpu=not torch.cuda.is_available(), timeout=timeout)
    return _STATE


def processes() -> int:
    return int(state().num_processes)


def is_main() -> bool:
    return bool(state().is_main_process)


def barrier() -> None:
    if processes() > 1:
        state().wait_for_everyone()
