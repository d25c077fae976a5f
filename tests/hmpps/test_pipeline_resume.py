"""A pipeline rerun reuses a finished teacher only when nothing it was built from has changed."""

from __future__ import annotations

import json
import os
from dataclasses import asdict
from types import SimpleNamespace

from hmpps.pipeline import _complete_teacher
from training.teacher.config import TeacherConfig


def _teacher(tmp_path, cfg):
    fs, td = tmp_path / "first_stage", tmp_path / "teacher"
    fs.mkdir()
    td.mkdir()
    (fs / "candidates.jsonl").write_text("{}\n")
    os.utime(fs / "candidates.jsonl", (1_000, 1_000))
    (td / "scores.jsonl").write_text("{}\n")
    (td / "metrics.json").write_text("{}")
    (td / "teacher.json").write_text(json.dumps({"complete": True, "dataset_fingerprint": "fp", "config": asdict(cfg),
                                                 "first_stage": {"dir": str(fs)}}))
    return fs, td


def test_a_finished_teacher_is_reused_only_while_its_inputs_are_unchanged(tmp_path):
    cfg = TeacherConfig()
    fs, td = _teacher(tmp_path, cfg)
    ds = SimpleNamespace(fingerprint="fp")
    run = _complete_teacher(ds, fs, td, cfg)
    assert run is not None and run.dir == td
    assert _complete_teacher(SimpleNamespace(fingerprint="other"), fs, td, cfg) is None  # another dataset
    assert _complete_teacher(ds, fs, td, TeacherConfig(lr=cfg.lr * 2)) is None  # another config
    os.utime(fs / "candidates.jsonl")  # candidates rewritten after the scores
    assert _complete_teacher(ds, fs, td, cfg) is None
    assert _complete_teacher(ds, fs, tmp_path / "missing", cfg) is None
