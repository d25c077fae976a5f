"""The bundle format: the manifest writer names every file's sha256, the reader and verify refuse anything else."""

from __future__ import annotations

import json

import pytest

from contract.bundle import MANIFEST, Manifest, content_version, read_manifest, verify_bundle, write_manifest
from contract.constants import HISTORY_CAP
from contract.errors import BundleError
from contract.spec import FeatureSpec

SPEC = FeatureSpec(text_dim=4, image_dim=2, sel_dim=3, k_s2=2)


def _bundle(tmp_path, content=b"onnx bytes"):
    d = tmp_path / "bundle"
    (d / "features").mkdir(parents=True)
    (d / "student.onnx").write_bytes(content)
    (d / "features" / "index.json").write_text("{}")
    return d, write_manifest(d, "demo", "Demo", "fp123", SPEC, models={"student": "student.onnx"},
                             features={"index": "features/index.json"}, extra={"metrics": {"n": 3}})


def test_written_manifest_verifies_and_round_trips(tmp_path):
    d, written = _bundle(tmp_path)
    m = verify_bundle(d)
    assert m == written and m.version.startswith("demo-") and set(m.files) == {"student.onnx", "features/index.json"}
    assert m.spec == SPEC and m.extra == {"metrics": {"n": 3}} and m.history_cap == HISTORY_CAP
    assert Manifest.from_dict(json.loads((d / MANIFEST).read_text())).to_dict() == m.to_dict()


def test_the_version_names_the_content(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    _, a = _bundle(tmp_path / "a")
    _, same = _bundle(tmp_path / "b")
    assert a.version == same.version
    (tmp_path / "c").mkdir()
    _, other = _bundle(tmp_path / "c", b"other weights")
    assert other.version != a.version
    assert content_version("x", {"f": "1"}) != content_version("x", {"f": "2"})


@pytest.mark.parametrize("damage, message", [
    (lambda d: (d / "student.onnx").write_bytes(b"tampered"), "student.onnx fails its sha256"),
    (lambda d: (d / "student.onnx").unlink(), "student.onnx is missing"),
    (lambda d: (d / "stray.bin").write_bytes(b"x"), "stray.bin is not listed"),
    (lambda d: (d / MANIFEST).unlink(), "manifest.json is missing"),
    (lambda d: (d / MANIFEST).write_text("{not json"), "not valid JSON"),
])
def test_verify_names_what_is_wrong(tmp_path, damage, message):
    d, _ = _bundle(tmp_path)
    damage(d)
    with pytest.raises(BundleError, match=message):
        verify_bundle(d)


@pytest.mark.parametrize("change, message", [
    (lambda m: m.pop("version"), "lacks the field 'version'"),
    (lambda m: m.update(format="hmpps-bundle/0"), "format 'hmpps-bundle/0'"),
    (lambda m: m["spec"].update(product_dim=999), "bad spec"),
])
def test_read_manifest_refuses_malformed_manifests(tmp_path, change, message):
    d, _ = _bundle(tmp_path)
    doc = json.loads((d / MANIFEST).read_text())
    change(doc)
    (d / MANIFEST).write_text(json.dumps(doc))
    with pytest.raises(BundleError, match=message):
        read_manifest(d)
