"""Atomic artifact directories and small JSON/JSONL helpers.

A stage writes into a sibling temporary directory and renames it over the
target only once everything is written, so a crash never leaves a half-built
directory that a later stage would trust.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from contract.bundle import sha256_file  # one implementation, shared with bundle verification
from contract.errors import ArtifactMismatch, InputError
from contract.reports import atomic_write_text, write_json  # noqa: F401 - the stages' writers, defined once

SCHEMA_VERSION = 1


@contextlib.contextmanager
def atomic_dir(out: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary directory that replaces ``out`` on success only."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    old = None
    if out.exists():
        old = out.parent / f".{out.name}.old-{os.getpid()}"
        shutil.rmtree(old, ignore_errors=True)
        out.rename(old)
    tmp.rename(out)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def read_json(path: Path) -> Any:
    try:
        return json.loads(Path(path).read_text())
    except FileNotFoundError as e:
        raise InputError(f"missing file: {path}") from e
    except json.JSONDecodeError as e:
        raise InputError(f"{path} is not valid JSON: {e}") from e


def write_jsonl(path: Path, rows: Iterable[dict[str, Any]]) -> int:
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    n = 0
    with open(tmp, "w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False, separators=(",", ":")) + "\n")
            n += 1
    os.replace(tmp, path)
    return n


def iter_jsonl(path: Path) -> Iterator[dict[str, Any]]:
    """One parsed line at a time (a file of a million lists need not sit in memory as dicts)."""
    path = Path(path)
    if not path.exists():
        raise InputError(f"missing file: {path}")
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if line.strip():
                try:
                    yield json.loads(line)
                except json.JSONDecodeError as e:
                    raise InputError(f"{path}:{lineno} is not valid JSON: {e}") from e


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    return list(iter_jsonl(path))


def fingerprint_files(paths: Iterable[Path]) -> str:
    """A short content fingerprint over several files (order matters)."""
    h = hashlib.sha256()
    for p in paths:
        h.update(Path(p).name.encode())
        h.update(sha256_file(Path(p)).encode())
    return h.hexdigest()[:16]


def require_same_dataset(expected: str, found: str, what: str) -> None:
    if expected != found:
        raise ArtifactMismatch(
            f"{what} was built from dataset {found}, but the dataset given has fingerprint {expected}; "
            "rebuild it from this dataset instead of mixing artifacts"
        )
