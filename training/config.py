"""Dataclass configs: defaults in code, YAML files and CLI flags override.

The resolved config is saved next to every artifact and inside checkpoints.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, TypeVar

import yaml

from training.errors import InputError

C = TypeVar("C")


def load_config(cls: type[C], path: str | Path | None = None, overrides: dict[str, Any] | None = None) -> C:
    values: dict[str, Any] = {}
    if path is not None:
        path = Path(path)
        if not path.exists():
            raise InputError(f"config file not found: {path}")
        try:
            loaded = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as e:
            raise InputError(f"{path} is not valid YAML: {e}") from e
        if not isinstance(loaded, dict):
            raise InputError(f"{path} must hold a mapping of config fields")
        values.update(loaded)
    values.update(overrides or {})
    fields = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(values) - set(fields))
    if unknown:
        raise InputError(f"unknown {cls.__name__} field(s): {', '.join(unknown)}; known: {', '.join(sorted(fields))}")
    for name, value in values.items():
        default = getattr(cls, name, None) if not isinstance(fields[name].default, dataclasses._MISSING_TYPE) else None
        if default is not None and not isinstance(value, type(default)) and not (isinstance(default, float) and isinstance(value, int)):
            raise InputError(f"{cls.__name__}.{name} must be {type(default).__name__}, got {value!r}")
    return cls(**values)
