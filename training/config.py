"""Dataclass configs: defaults in code, YAML files and CLI flags override.

The resolved config is saved next to every artifact and inside checkpoints.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, TypeVar

import yaml

from contract.errors import InputError

C = TypeVar("C")


def read_yaml_mapping(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.exists():
        raise InputError(f"config file not found: {path}")
    try:
        loaded = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise InputError(f"{path} is not valid YAML: {e}") from e
    if not isinstance(loaded, dict):
        raise InputError(f"{path} must hold a mapping of config fields")
    return loaded


def load_config(cls: type[C], path: str | Path | None = None, overrides: dict[str, Any] | None = None) -> C:
    """``cls`` defaults <- YAML file <- overrides, with unknown fields and wrong types named."""
    values: dict[str, Any] = read_yaml_mapping(path) if path is not None else {}
    values.update(overrides or {})
    fields = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(values) - set(fields))
    if unknown:
        raise InputError(f"unknown {cls.__name__} field(s): {', '.join(unknown)}; known: {', '.join(sorted(fields))}")
    for name, value in values.items():
        default = fields[name].default
        if default is dataclasses.MISSING or default is None:
            continue
        if not isinstance(value, type(default)) and not (isinstance(default, float) and isinstance(value, int)):
            raise InputError(f"{cls.__name__}.{name} must be {type(default).__name__}, got {value!r}")
    return cls(**values)
