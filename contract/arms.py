"""A/B arms: an experiment file, and sticky assignment by a salted hash of the user id.

    experiment: student-vs-passthrough
    salt: 2026-11
    arms:
      - {name: student, weight: 50, bundle: runs/demo/bundle}
      - {name: control, weight: 50, bundle: passthrough}

``passthrough`` returns the caller's order (the control arm). A relative bundle
path is resolved against the arms file's directory.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from contract.constants import PASSTHROUGH
from contract.errors import InputError


@dataclass(frozen=True)
class Arm:
    name: str
    weight: float
    bundle: Path | None  # None: passthrough


@dataclass(frozen=True)
class Experiment:
    name: str
    salt: str
    arms: tuple[Arm, ...]

    def assign(self, user_id: str) -> Arm:
        """Deterministic: the same (salt, user) always lands in the same arm."""
        digest = hashlib.sha256(f"{self.salt}\x00{user_id}".encode()).digest()
        u = int.from_bytes(digest[:8], "big") / 2.0**64
        total = sum(a.weight for a in self.arms)
        acc = 0.0
        for arm in self.arms:
            acc += arm.weight / total
            if u < acc:
                return arm
        return self.arms[-1]

    def arm_names(self) -> frozenset[str]:
        return frozenset(a.name for a in self.arms)

    def expected_shares(self) -> dict[str, float]:
        total = sum(a.weight for a in self.arms)
        return {a.name: a.weight / total for a in self.arms}


def single_arm(bundle: Path) -> Experiment:
    return Experiment("default", "default", (Arm("student", 1.0, Path(bundle)),))


def parse_experiment(doc: Any, base: Path) -> Experiment:
    if not isinstance(doc, dict):
        raise InputError("arms file must be a mapping with 'experiment', 'salt' and 'arms'")
    arms_doc = doc.get("arms")
    if not isinstance(arms_doc, list) or not arms_doc:
        raise InputError("arms file: 'arms' must be a non-empty list")
    arms, seen = [], set()
    for i, a in enumerate(arms_doc):
        if not isinstance(a, dict) or not isinstance(a.get("name"), str) or not a["name"]:
            raise InputError(f"arms file: arms[{i}] needs a 'name'")
        if a["name"] in seen:
            raise InputError(f"arms file: arm name {a['name']!r} is used twice")
        seen.add(a["name"])
        weight = a.get("weight", 1)
        if not isinstance(weight, (int, float)) or isinstance(weight, bool) or weight <= 0:
            raise InputError(f"arms file: arms[{i}].weight must be a positive number, got {weight!r}")
        b = a.get("bundle")
        if not isinstance(b, str) or not b:
            raise InputError(f"arms file: arms[{i}].bundle must be a bundle path or '{PASSTHROUGH}'")
        bundle = None if b == PASSTHROUGH else (base / b if not Path(b).is_absolute() else Path(b))
        arms.append(Arm(a["name"], float(weight), bundle))
    salt = doc.get("salt", "")
    return Experiment(str(doc.get("experiment", "experiment")), str(salt), tuple(arms))


def load_experiment(path: Path) -> Experiment:
    import yaml

    path = Path(path)
    if not path.is_file():
        raise InputError(f"arms file not found: {path}")
    try:
        doc = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise InputError(f"arms file {path} is not valid YAML/JSON: {e}") from None
    return parse_experiment(doc, path.parent)


def write_experiment(path: Path, name: str, salt: str, arms: list[tuple[str, float, str]]) -> None:
    """An arms file (written atomically): ``arms`` are (name, weight, bundle path or 'passthrough');
    a relative bundle path is relative to the file, as ``parse_experiment`` reads it."""
    import yaml

    from contract.reports import atomic_write_text

    atomic_write_text(Path(path), yaml.safe_dump({"experiment": name, "salt": salt, "arms": [
        {"name": n, "weight": w, "bundle": b} for n, w, b in arms]}, sort_keys=False))
