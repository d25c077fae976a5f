"""How a feature vector is stored as bytes in Redis (the spec's ``storage``).

- ``float32``: 4 bytes per value, exact (the default; bundles from before lean features);
- ``float16``: 2 bytes per value; the features are unit vectors and small counts, well inside its range;
- ``int8``: a float32 scale, then one signed byte per value (value = byte * scale, scale = max|v| / 127).

The model always receives float32: ``decode_rows`` widens on the way in. Publish, product upserts,
the tail-query cache and the service's warm-up all encode through ``encode_vector``, so one spec
field decides the bytes every writer and reader agrees on.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

STORAGES = ("float32", "float16", "int8")
_INT8_SCALE_BYTES = 4


def check_storage(storage: str) -> str:
    if storage not in STORAGES:
        raise ValueError(f"storage {storage!r}: must be one of {list(STORAGES)}")
    return storage


def vector_bytes(dim: int, storage: str) -> int:
    """Bytes of one stored vector of ``dim`` values."""
    if storage == "float32":
        return 4 * dim
    if storage == "float16":
        return 2 * dim
    check_storage(storage)
    return _INT8_SCALE_BYTES + dim


def encode_vector(v: np.ndarray, storage: str) -> bytes:
    x = np.asarray(v, dtype=np.float32).reshape(-1)
    if storage == "float32":
        return np.ascontiguousarray(x).tobytes()
    if storage == "float16":
        return x.astype(np.float16).tobytes()
    check_storage(storage)
    peak = float(np.abs(x).max()) if x.size else 0.0
    scale = np.float32(peak / 127.0 if peak > 0 else 1.0)
    q = np.clip(np.rint(x / scale), -127, 127).astype(np.int8)
    return scale.tobytes() + q.tobytes()


def encode_rows(m: np.ndarray, storage: str) -> list[bytes]:
    return [encode_vector(row, storage) for row in np.asarray(m)]


def decode_rows(blobs: Sequence[bytes | None], dim: int, storage: str) -> tuple[np.ndarray, list[int]]:
    """(n_ok, dim) float32 rows for the blobs of the right size, and their positions in ``blobs``.

    A missing blob (None) or one of another size (a stale or foreign key) is left out, not guessed.
    One ``frombuffer`` over the joined blobs: a request decodes ~60 vectors, and per-vector numpy
    calls cost more than the conversion.
    """
    size = vector_bytes(dim, storage)
    ok = [i for i, b in enumerate(blobs) if b is not None and len(b) == size]
    if not ok:
        return np.zeros((0, dim), np.float32), ok
    joined = b"".join(blobs[i] for i in ok)  # type: ignore[misc]
    if storage == "float32":
        return np.frombuffer(joined, np.float32).reshape(len(ok), dim), ok
    if storage == "float16":
        return np.frombuffer(joined, np.float16).reshape(len(ok), dim).astype(np.float32), ok
    raw = np.frombuffer(joined, np.uint8).reshape(len(ok), size)
    scales = raw[:, :_INT8_SCALE_BYTES].copy().view(np.float32)  # (n, 1)
    return raw[:, _INT8_SCALE_BYTES:].view(np.int8).astype(np.float32) * scales, ok


def roundtrip(m: np.ndarray, storage: str) -> np.ndarray:
    """What the service decodes for these rows after they were stored: for parity checks offline."""
    m = np.asarray(m, np.float32)
    if storage == "float32" or m.shape[0] == 0:
        return m
    rows, _ = decode_rows(encode_rows(m, storage), m.shape[1], storage)
    return rows
