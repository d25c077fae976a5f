"""A/B arms: an experiment file, and sticky assignment by a salted hash of the user id.

    experiment: student-vs-passthrough
    salt: 2026-11
    arms:
      - {name: student, weight: 40, bundle: runs/demo/bundle}
      - {name: control, weight: 40, bundle: passthrough}
      # the student's ranking, randomised a little, each shown item's display probability logged
      - {name: explore, weight: 10, bundle: runs/demo/bundle, explore: {temperature: 0.3, depth: 10}}
      # team-draft interleaving of two rankers on this arm's users (contract/interleaving.py)
      - {name: new-vs-current, weight: 10, interleave: {new: runs/new/bundle, current: runs/demo/bundle}}

``passthrough`` returns the caller's order (the control arm). A relative bundle
path is resolved against the arms file's directory. An arm has either a
``bundle`` or an ``interleave`` mapping of exactly two team names to bundles
(either may be ``passthrough``); ``explore`` applies to a bundle arm only.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from contract.constants import PASSTHROUGH
from contract.errors import InputError
from contract.exploration import Exploration


@dataclass(frozen=True)
class Arm:
    name: str
    weight: float
    bundle: Path | None  # None: passthrough (and an interleaved arm, whose rankers are its teams)
    explore: Exploration | None = None  # randomise the bundle's order, logging display probabilities
    teams: tuple[tuple[str, Path | None], ...] = ()  # an interleaved arm: (team name, bundle or None) x 2

    @property
    def interleaved(self) -> bool:
        return bool(self.teams)

    def slots(self) -> list[tuple[str, Path | None]]:
        """The rankers this arm serves, keyed as ``Runtime.bundles`` holds them: the arm's name, or
        ``arm:team`` for each team of an interleaved arm."""
        if self.teams:
            return [(slot_name(self.name, team), path) for team, path in self.teams]
        return [(self.name, self.bundle)]


def slot_name(arm: str, team: str) -> str:
    return f"{arm}:{team}"


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
        unknown = sorted(set(a) - {"name", "weight", "bundle", "explore", "interleave"})
        if unknown:
            raise InputError(f"arms file: arms[{i}] has unknown keys {unknown} (name, weight, bundle, explore, "
                             "interleave)")
        if ":" in a["name"]:
            raise InputError(f"arms file: arms[{i}].name {a['name']!r} must not contain ':'")
        if ("bundle" in a) == ("interleave" in a):
            raise InputError(f"arms file: arms[{i}] needs exactly one of 'bundle' and 'interleave'")
        if "interleave" in a:
            if "explore" in a:
                raise InputError(f"arms file: arms[{i}]: 'explore' applies to a bundle arm, not an interleaved one")
            arms.append(Arm(a["name"], float(weight), None, teams=_teams(a["interleave"], i, base)))
            continue
        bundle = _bundle(a.get("bundle"), f"arms[{i}].bundle", base)
        explore = None
        if a.get("explore") is not None:
            if bundle is None:
                raise InputError(f"arms file: arms[{i}]: 'explore' needs a bundle, not {PASSTHROUGH}")
            try:
                explore = Exploration.from_dict(a["explore"])
            except ValueError as e:
                raise InputError(f"arms file: arms[{i}].explore: {e}") from None
        arms.append(Arm(a["name"], float(weight), bundle, explore))
    salt = doc.get("salt", "")
    return Experiment(str(doc.get("experiment", "experiment")), str(salt), tuple(arms))


def _bundle(b: Any, where: str, base: Path) -> Path | None:
    if not isinstance(b, str) or not b:
        raise InputError(f"arms file: {where} must be a bundle path or '{PASSTHROUGH}'")
    return None if b == PASSTHROUGH else (base / b if not Path(b).is_absolute() else Path(b))


def _teams(doc: Any, i: int, base: Path) -> tuple[tuple[str, Path | None], ...]:
    if not isinstance(doc, dict) or len(doc) != 2:
        raise InputError(f"arms file: arms[{i}].interleave must map exactly two team names to bundles "
                         f"(or '{PASSTHROUGH}')")
    teams = []
    for team, b in doc.items():
        if not isinstance(team, str) or not team or ":" in team:
            raise InputError(f"arms file: arms[{i}].interleave: team name {team!r} must be a non-empty string "
                             "without ':'")
        teams.append((team, _bundle(b, f"arms[{i}].interleave.{team}", base)))
    if teams[0][1] == teams[1][1]:
        raise InputError(f"arms file: arms[{i}].interleave: both teams are the same ranker")
    return tuple(teams)


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


def write_experiment(path: Path, name: str, salt: str, arms: list[tuple[str, float, Any]]) -> None:
    """An arms file (written atomically): ``arms`` are (name, weight, bundle path or 'passthrough'),
    or (name, weight, a dict of the arm's other keys: ``interleave``, ``bundle`` with ``explore``);
    a relative bundle path is relative to the file, as ``parse_experiment`` reads it."""
    import yaml

    from contract.reports import atomic_write_text

    docs = [{"name": n, "weight": w} | (b if isinstance(b, dict) else {"bundle": b}) for n, w, b in arms]
    parse_experiment({"experiment": name, "salt": salt, "arms": docs}, Path(path).parent)  # refuse to write a bad file
    atomic_write_text(Path(path), yaml.safe_dump({"experiment": name, "salt": salt, "arms": docs}, sort_keys=False))
