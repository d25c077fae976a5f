"""Encoded product shards: what ``hmpps encode`` writes and ``hmpps publish --features`` reads.

A directory holds ``index.json`` (format, the bundle version the features belong
to, the shards and their row counts; written last) and ``shard-NNNNN.npz`` files,
each with, per product: its id, float32 features in the bundle's layout, the
content hash and time that make a re-publish idempotent, and its summary text.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from contract.errors import InputError

FORMAT = "hmpps-shards/1"
INDEX = "index.json"


@dataclass
class Shard:
    product_ids: list[str]
    features: np.ndarray  # (n, product_dim) float32
    hashes: list[str]
    updated_at: np.ndarray  # (n,) float64, seconds
    summaries: list[str]

    def __len__(self) -> int:
        return len(self.product_ids)


def write_shard(path: Path, shard: Shard) -> None:
    """One shard, atomically (a temporary file in the same directory, then a rename)."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".npz", dir=path.parent)
    os.close(fd)
    try:
        np.savez(tmp, product_ids=np.asarray(shard.product_ids, dtype=str),
                 features=np.asarray(shard.features, np.float32), hashes=np.asarray(shard.hashes, dtype=str),
                 updated_at=np.asarray(shard.updated_at, np.float64), summaries=np.asarray(shard.summaries, dtype=str))
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def read_shard(path: Path) -> Shard:
    try:
        with np.load(path, allow_pickle=False) as z:
            return Shard(z["product_ids"].tolist(), z["features"], z["hashes"].tolist(), z["updated_at"],
                         z["summaries"].tolist())
    except (OSError, KeyError, ValueError) as e:
        raise InputError(f"{path} is not a readable feature shard: {e}") from None


def read_index(root: Path) -> dict[str, Any]:
    path = Path(root) / INDEX
    if not path.is_file():
        raise InputError(f"{root} holds no encoded features ({INDEX} is missing; run 'hmpps encode' first)")
    doc = json.loads(path.read_text())
    if doc.get("format") != FORMAT:
        raise InputError(f"{path}: format {doc.get('format')!r} is not {FORMAT!r}")
    for s in doc["shards"]:
        if not (Path(root) / s["file"]).is_file():
            raise InputError(f"{root}: shard {s['file']} named in {INDEX} is missing")
    return doc
