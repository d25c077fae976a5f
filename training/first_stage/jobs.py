"""Independent jobs spread over the processes of ``accelerate launch`` (one process: run in turn).

``hmpps retrieve`` has two rounds of them: the fits (the first stage, each holdout fold's shadow model),
then the first stage's full-catalogue scoring in query shards, which every rank runs with the fitted
model. Results travel through files beside OUT, so no tensor has to fit a collective's message.
"""

from __future__ import annotations

import os
import shutil
import socket
from collections.abc import Callable
from pathlib import Path
from typing import Any


def processes_now() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


# while run_jobs runs this rank's jobs: (its parts directory, processes on this machine)
_IDLE: tuple[Path, int] | None = None


def take_idle_cores() -> None:
    """Under run_jobs, give this process the cores of the ranks on its machine that have finished their jobs
    (they only wait at the barrier): a long last job then uses every core of the machine instead of its
    share. Called between chunks of work; elsewhere a no-op."""
    if _IDLE is None:
        return
    import torch

    parts, local = _IDLE
    idle = len(list(parts.glob(f"idle-{socket.gethostname()}-*")))
    want = max(1, (os.cpu_count() or 1) // max(1, local - idle))
    if want != torch.get_num_threads():
        torch.set_num_threads(want)


def run_jobs(jobs: list[Any], run_job: Callable[[Any], Any], out: Path, everywhere: bool = False
             ) -> dict[Any, Any] | None:
    """Every job's result on rank 0 (and with ``everywhere``, on every rank; else None on the others);
    one process runs them all in turn.

    Under ``accelerate launch`` rank r runs jobs r, r + N, ... and pickles each result into
    ``.OUT.parts/`` beside OUT (torch.save), then all ranks meet at a barrier and read the parts; rank 0
    removes them. Each rank's torch uses its share of its machine's cores (the ranks of one machine would
    otherwise oversubscribe) until others finish (``take_idle_cores``).
    """
    global _IDLE
    procs = processes_now()
    if procs == 1:
        return {job: run_job(job) for job in jobs}
    import torch

    from training.teacher.dist import barrier, state

    st = state()
    rank = int(st.process_index)
    local = int(os.environ.get("LOCAL_WORLD_SIZE", procs))
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // local))
    parts = out.parent / f".{out.name}.parts"
    parts.mkdir(parents=True, exist_ok=True)
    marker = parts / f"idle-{socket.gethostname()}-{rank}"
    marker.unlink(missing_ok=True)  # left by an interrupted run; no rank writes one before its jobs are done
    _IDLE = (parts, local)
    try:
        for n, job in enumerate(jobs):
            if n % procs == rank:
                tmp = parts / f"{n}.pt.tmp"
                torch.save(run_job(job), tmp)
                tmp.rename(parts / f"{n}.pt")
    finally:
        _IDLE = None
    # this rank's jobs are done: until the barrier it only waits, so a rank of this machine still working
    # may take its cores (take_idle_cores)
    marker.touch()
    barrier()
    if not (st.is_main_process or everywhere):
        return None
    results = {job: torch.load(parts / f"{n}.pt", weights_only=False) for n, job in enumerate(jobs)}
    if everywhere:
        barrier()  # every rank has read the parts
    if st.is_main_process:
        shutil.rmtree(parts)
    return results
