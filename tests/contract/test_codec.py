"""Feature storage codecs: sizes, round trips, and blobs that do not fit are left out."""

from __future__ import annotations

import numpy as np
import pytest

from contract.codec import STORAGES, decode_rows, encode_vector, roundtrip, vector_bytes
from contract.spec import FeatureSpec


@pytest.mark.parametrize("storage", STORAGES)
def test_round_trip_size_and_error(storage):
    rng = np.random.default_rng(0)
    m = rng.standard_normal((5, 37)).astype(np.float32)
    m[:, 0] = 1.0  # a has_image flag beside small unit-vector entries
    blobs = [encode_vector(r, storage) for r in m]
    assert all(len(b) == vector_bytes(37, storage) for b in blobs)
    rows, ok = decode_rows(blobs, 37, storage)
    assert ok == list(range(5)) and rows.dtype == np.float32 and rows.shape == (5, 37)
    tol = {"float32": 0.0, "float16": 2e-3, "int8": np.abs(m).max() / 127 / 2 + 1e-6}[storage]
    assert np.abs(rows - m).max() <= tol
    assert np.array_equal(roundtrip(m, storage), rows)


def test_sizes_shrink():
    assert vector_bytes(738, "float32") == 2952
    assert vector_bytes(738, "float16") == 1476
    assert vector_bytes(738, "int8") == 742


def test_missing_and_wrong_sized_blobs_are_left_out():
    good = encode_vector(np.ones(4), "float16")
    rows, ok = decode_rows([None, good, encode_vector(np.ones(4), "float32"), good], 4, "float16")
    assert ok == [1, 3] and rows.shape == (2, 4) and np.all(rows == 1.0)
    rows, ok = decode_rows([None], 4, "int8")
    assert ok == [] and rows.shape == (0, 4)


def test_zero_vector_int8():
    rows, _ = decode_rows([encode_vector(np.zeros(3), "int8")], 3, "int8")
    assert np.array_equal(rows, np.zeros((1, 3), np.float32))


def test_spec_validates_and_keeps_storage():
    with pytest.raises(ValueError, match="storage 'bf16'"):
        FeatureSpec(8, 0, 4, 2, storage="bf16")
    spec = FeatureSpec(8, 0, 4, 2, storage="float16")
    assert FeatureSpec.from_dict(spec.to_dict()).storage == "float16"
    old = spec.to_dict()
    del old["storage"]  # a bundle from before lean features
    assert FeatureSpec.from_dict(old).storage == "float32"
