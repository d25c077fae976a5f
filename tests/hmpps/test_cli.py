"""The CLI: its choices match the registries they name, and a bad choice is refused before any work."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from hmpps.cli import app
from hmpps.cli.common import AblationGroup, FirstStageModel, SummaryMode, parse_sets, split_list

runner = CliRunner()


def test_choices_match_the_registries():
    from training.first_stage.run import MODELS
    from training.summarize.prompts import MODES
    from training.teacher.ablate import GROUPS

    assert tuple(m.value for m in FirstStageModel) == MODELS
    assert tuple(m.value for m in SummaryMode) == MODES
    assert tuple(g.value for g in AblationGroup) == GROUPS


@pytest.mark.parametrize("args, named", [
    (["retrieve", "--data", "d", "--out", "o", "--model", "bert"], "'bert' is not one of"),
    (["summarize", "--data", "d", "--out", "o", "--mode", "poem"], "'poem' is not one of"),
    (["metrics", "x", "--protocol", "other"], "'other' is not one of"),
])
def test_a_bad_choice_is_named(args, named):
    res = runner.invoke(app, args)
    assert res.exit_code == 2 and named in res.output


def test_domain_errors_are_one_line_and_exit_2(tmp_path):
    res = runner.invoke(app, ["retrieve", "--data", str(tmp_path / "none"), "--out", str(tmp_path / "o"),
                              "--model", "pop"])
    assert res.exit_code == 2 and "dataset directory not found" in res.output and "Traceback" not in res.output


def test_help_groups_the_commands():
    out = runner.invoke(app, ["--help"]).output
    assert all(panel in out for panel in ("Offline stages", "Serving", "Benchmarks"))
    assert "distill" in runner.invoke(app, ["pipeline", "--help"]).output


def test_set_and_list_parsing():
    assert parse_sets(["epochs=3", "lr=1e-3", "vision=none", "moae=false"]) == {
        "epochs": 3, "lr": 1e-3, "vision": "none", "moae": False}
    assert split_list(" a, ,b ,") == ("a", "b")
    res = runner.invoke(app, ["teacher", "--data", "d", "--candidates", "c", "--out", "o", "--set", "novalue"])
    assert res.exit_code == 2 and "key=value" in res.output
