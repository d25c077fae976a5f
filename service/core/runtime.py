"""The bundle runtime: the arms of the experiment and the loaded, warmed bundle behind each.

A reload builds a new ``Runtime`` in a worker thread and swaps it in with one
assignment, so a request in flight keeps the runtime it started with.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from contract.arms import Arm, Experiment, load_experiment, single_arm
from contract.bundle import verify_bundle
from contract.codec import encode_vector
from contract.constants import PASSTHROUGH
from contract.errors import HmppsError, InputError
from service.core.bundle import LoadedBundle, load_bundle
from service.core.scoring import Listed, score_sync
from service.infra.settings import Settings
from service.infra.store import Fetched


@dataclass
class Runtime:
    experiment: Experiment
    # arm name (``arm:team`` for an interleaved arm's teams, Arm.slots) -> bundle (None: passthrough)
    bundles: dict[str, LoadedBundle | None]
    loaded_at: float = field(default_factory=time.time)

    def arm_bundles(self, arm: Arm) -> list[LoadedBundle]:
        """The bundles serving ``arm`` (two on an interleaved arm, none on passthrough)."""
        return [b for slot, _ in arm.slots() if (b := self.bundles[slot]) is not None]

    def versions(self) -> dict[str, str]:
        return {arm: (b.version if b else PASSTHROUGH) for arm, b in self.bundles.items()}

    def loaded_versions(self) -> set[str]:
        return {b.version for b in self.bundles.values() if b is not None}


def load_runtime(settings: Settings, previous: Runtime | None = None) -> Runtime:
    """Read the arms file (or the single bundle), load and warm every bundle. Runs in a thread.

    A bundle already loaded from the same path with the same manifest version is
    reused (after its checksums pass again), so a reload only pays for what changed.
    """
    if settings.arms_file is not None:
        experiment = load_experiment(settings.arms_file)
    elif settings.bundle is not None:
        experiment = single_arm(settings.bundle)
    else:
        raise InputError("no model configured: set HMPPS_BUNDLE (or --bundle) or HMPPS_ARMS_FILE (or --arms)")
    cache: dict[Path, LoadedBundle] = {}
    for old in (previous.bundles.values() if previous else []):
        if old is not None and old.path.resolve() not in cache:
            try:
                if verify_bundle(old.path).version == old.version:
                    cache[old.path.resolve()] = old
            except HmppsError:
                pass  # changed or broken on disk: load it afresh below, which names the problem
    bundles: dict[str, LoadedBundle | None] = {}
    for arm in experiment.arms:
        for slot, path in arm.slots():
            if path is None:
                bundles[slot] = None
                continue
            key = path.resolve()
            if key not in cache:
                cache[key] = load_bundle(path, settings.ort_threads, settings.providers, settings.int8)
                warm_up(cache[key])
            bundles[slot] = cache[key]
    return Runtime(experiment, bundles)


def warm_up(bundle: LoadedBundle, rounds: int = 3) -> None:
    """First ONNX runs allocate and optimise; pay that before readiness, not on a user request."""
    spec = bundle.spec
    rng = np.random.default_rng(0)

    def vec(d: int) -> bytes:
        return encode_vector(rng.standard_normal(d), spec.storage)
    fetched = Fetched(vec(spec.query_dim), False, [vec(spec.product_dim) for _ in range(10)],
                      [f"warm-{i}" for i in range(5)], [vec(spec.product_dim) for _ in range(5)])
    listed = Listed([f"cand-{i}" for i in range(10)], [float(10 - i) for i in range(10)])
    for i in range(rounds):
        score_sync(bundle, "warm up", fetched, listed, explain=i == 0)
    bundle.query_encoder.encode("warm up query")
