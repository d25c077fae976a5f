"""Dataclass configs: defaults <- YAML <- flags, each value checked against its annotation."""

from __future__ import annotations

import pytest

from contract.errors import InputError
from distill.student import StudentConfig
from training.config import load_config


def test_defaults_yaml_and_overrides_layer_in_order(tmp_path):
    f = tmp_path / "s.yaml"
    f.write_text("epochs: 7\nlr: 0.01\n")
    cfg = load_config(StudentConfig, f, {"lr": 2})
    assert (cfg.epochs, cfg.lr, cfg.dim) == (7, 2.0, StudentConfig().dim)
    assert isinstance(cfg.lr, float), "an int given for a float field is stored as a float"


@pytest.mark.parametrize("values, named", [
    ({"epochs": "3"}, "StudentConfig.epochs: input should be a valid integer, got '3'"),
    ({"epochs": 2.5}, "StudentConfig.epochs"),
    ({"lr": "fast"}, "StudentConfig.lr: input should be a valid number"),
    ({"epoch": 3}, "unknown StudentConfig field(s): epoch"),
])
def test_wrong_values_are_named(values, named):
    with pytest.raises(InputError, match=named.replace("(", r"\(").replace(")", r"\)")):
        load_config(StudentConfig, None, values)


def test_a_config_file_must_be_a_mapping(tmp_path):
    f = tmp_path / "bad.yaml"
    f.write_text("- 1\n- 2\n")
    with pytest.raises(InputError, match="must hold a mapping"):
        load_config(StudentConfig, f)
