"""Dataclass configs: defaults in code, YAML files and CLI flags override.

The resolved config is saved next to every artifact and inside checkpoints.
"""

from __future__ import annotations

import dataclasses
import typing
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
    """``cls`` defaults <- YAML file <- overrides, with unknown fields and wrong types named.

    pydantic checks the values against the dataclass's annotations (strict: no "3" for 3, no
    True for 1; an int is fine where a float is asked).
    """
    from pydantic import TypeAdapter, ValidationError

    values: dict[str, Any] = read_yaml_mapping(path) if path is not None else {}
    values.update(overrides or {})
    fields = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(values) - fields)
    if unknown:
        raise InputError(f"unknown {cls.__name__} field(s): {', '.join(unknown)}; known: {', '.join(sorted(fields))}")
    hints = typing.get_type_hints(cls)
    checked = {}
    for name, value in values.items():
        try:
            checked[name] = TypeAdapter(hints[name]).validate_python(value, strict=True)
        except ValidationError as e:
            raise InputError(f"{cls.__name__}.{name}: {e.errors()[0]['msg'].lower()}, got {value!r}") from None
    try:
        return cls(**checked)
    except ValueError as e:  # a config's own cross-field checks (__post_init__)
        raise InputError(f"{cls.__name__}: {e}") from None
