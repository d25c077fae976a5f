"""Readers for the public Amazon review datasets, with format detection.

Accepted inputs (McAuley et al.; see README "Data"):

- 2014: 5-core reviews JSON(.gz) (``reviewerID``, ``asin``, ``unixReviewTime``),
  meta lines as Python literals (``categories`` is a list of paths, ``imUrl``).
- 2018: reviews JSON(.gz) with the same keys, or a ratings CSV
  (``item,user,rating,timestamp``, no header); meta JSON lines (``category`` is
  one path, ``main_cat``, ``imageURLHighRes``).
- 2023: reviews JSONL (``user_id``, ``parent_asin``, ``timestamp`` in ms) or a
  ratings CSV with a ``user_id,parent_asin,rating,timestamp`` header; meta JSONL
  keyed by ``parent_asin`` (``categories``, ``main_category``, ``store``, ``images``).

Malformed lines are counted per file and reported, never fatal on their own.
"""

from __future__ import annotations

import ast
import csv
import gzip
import io
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from contract.errors import InputError


@dataclass
class RawInteraction:
    user_id: str
    product_id: str
    timestamp: float  # unix seconds
    query: str | None = None  # the real search text, when the source has it (own data)


@dataclass
class RawProduct:
    product_id: str
    title: Any = None
    brand: Any = None
    categories: list[list[Any]] = field(default_factory=list)
    main_category: Any = None
    description: Any = None
    image_url: str | None = None
    image: str | None = None  # local file relative to the dataset dir (synthetic data)
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class ParseReport:
    path: str
    format: str
    lines: int = 0
    valid: int = 0
    malformed: int = 0
    examples: list[str] = field(default_factory=list)

    def bad(self, lineno: int, why: str) -> None:
        self.malformed += 1
        if len(self.examples) < 5:
            self.examples.append(f"line {lineno}: {why}")

    def as_dict(self) -> dict[str, Any]:
        return {
            "path": Path(self.path).name,
            "format": self.format,
            "lines": self.lines,
            "valid": self.valid,
            "malformed": self.malformed,
            "malformed_examples": self.examples,
        }


def _open_text(path: Path) -> io.TextIOBase:
    if not path.exists():
        raise InputError(f"file not found: {path}")
    with open(path, "rb") as f:
        magic = f.read(2)
    if magic == b"\x1f\x8b":
        return gzip.open(path, "rt", encoding="utf-8", errors="replace")  # type: ignore[return-value]
    return open(path, encoding="utf-8", errors="replace")


def _first_lines(path: Path, n: int = 50) -> list[str]:
    out = []
    with _open_text(path) as f:
        for line in f:
            if line.strip():
                out.append(line)
            if len(out) >= n:
                break
    return out


def _parse_obj(line: str) -> dict[str, Any] | None:
    """JSON first, then a Python literal (2014 meta); None when neither parses to a dict."""
    try:
        obj = json.loads(line)
    except json.JSONDecodeError:
        try:
            obj = ast.literal_eval(line.strip())
        except (ValueError, SyntaxError, MemoryError, RecursionError):
            return None
    return obj if isinstance(obj, dict) else None


# ---------------------------------------------------------------- detection


def detect_interactions_format(path: Path) -> str:
    lines = _first_lines(path)
    if not lines:
        raise InputError(f"{path} is empty")
    head = lines[0].lstrip("\ufeff").strip()
    if not head.startswith("{"):
        cols = [c.strip().lower() for c in next(csv.reader([head]))]
        if "user_id" in cols and ("parent_asin" in cols or "asin" in cols):
            return "ratings-csv-2023"
        if len(cols) >= 3:
            return "ratings-csv-2018"
        raise InputError(f"{path}: cannot tell the format (not JSON lines, not a ratings CSV)")
    for line in lines:
        obj = _parse_obj(line)
        if obj is None:
            continue
        if "reviewerID" in obj and "asin" in obj:
            return "reviews-2014-2018"
        if "user_id" in obj and ("parent_asin" in obj or "asin" in obj):
            return "reviews-2023"
    raise InputError(
        f"{path}: JSON lines without the expected keys "
        "(reviewerID/asin/unixReviewTime for 2014-2018, user_id/parent_asin/timestamp for 2023)"
    )


def detect_meta_format(path: Path) -> str:
    lines = _first_lines(path)
    if not lines:
        raise InputError(f"{path} is empty")
    for line in lines:
        try:
            obj = json.loads(line)
            literal = False
        except json.JSONDecodeError:
            obj = _parse_obj(line)
            literal = True
        if not isinstance(obj, dict):
            continue
        if "parent_asin" in obj or "main_category" in obj:
            return "meta-2023"
        if literal or "categories" in obj or "imUrl" in obj:
            return "meta-2014"
        if "asin" in obj:
            return "meta-2018"
    raise InputError(f"{path}: no metadata record with an 'asin' or 'parent_asin' among its first lines")


# ---------------------------------------------------------------- interactions


def _int_time(value: Any, millis: bool = False) -> int:
    t = int(float(value))
    if millis or t > 10_000_000_000:  # 2023 timestamps are in milliseconds
        t //= 1000
    return t


def read_interactions(path: Path) -> tuple[list[RawInteraction], ParseReport]:
    path = Path(path)
    fmt = detect_interactions_format(path)
    report = ParseReport(str(path), fmt)
    out: list[RawInteraction] = []
    with _open_text(path) as f:
        if fmt.startswith("ratings-csv"):
            reader = csv.reader(f)
            header: list[str] | None = None
            for lineno, row in enumerate(reader, 1):
                if not row or not any(c.strip() for c in row):
                    continue
                report.lines += 1
                if fmt == "ratings-csv-2023" and header is None:
                    header = [c.strip().lower().lstrip("\ufeff") for c in row]
                    report.lines -= 1
                    continue
                try:
                    if header is not None:
                        rec = dict(zip(header, row, strict=False))
                        user, item = rec["user_id"], rec.get("parent_asin") or rec["asin"]
                        ts = _int_time(rec["timestamp"])
                    else:
                        item, user, _rating, ts_raw = row[0], row[1], row[2], row[3]
                        ts = _int_time(ts_raw)
                    if not user.strip() or not item.strip():
                        raise ValueError("empty user or item")
                except (KeyError, IndexError, ValueError) as e:
                    report.bad(lineno, f"{type(e).__name__}: {e}")
                    continue
                out.append(RawInteraction(user.strip(), item.strip(), ts))
                report.valid += 1
        else:
            for lineno, line in enumerate(f, 1):
                if not line.strip():
                    continue
                report.lines += 1
                obj = _parse_obj(line)
                if obj is None:
                    report.bad(lineno, "not a JSON object")
                    continue
                try:
                    if fmt == "reviews-2023":
                        user = obj["user_id"]
                        item = obj.get("parent_asin") or obj["asin"]
                        ts = _int_time(obj["timestamp"], millis=True)
                    else:
                        user, item, ts = obj["reviewerID"], obj["asin"], _int_time(obj["unixReviewTime"])
                    if not isinstance(user, str) or not isinstance(item, str) or not user or not item:
                        raise ValueError("user and item must be non-empty strings")
                except (KeyError, TypeError, ValueError) as e:
                    report.bad(lineno, f"{type(e).__name__}: {e}")
                    continue
                out.append(RawInteraction(user, item, ts))
                report.valid += 1
    return out, report


# ---------------------------------------------------------------- metadata


def _first_url(value: Any) -> str | None:
    if isinstance(value, str):
        return value or None
    if isinstance(value, list):
        for v in value:
            if isinstance(v, str) and v:
                return v
            if isinstance(v, dict):
                for key in ("hi_res", "large", "thumb"):
                    if v.get(key):
                        return str(v[key])
    return None


def _product_from_meta(obj: dict[str, Any], fmt: str) -> RawProduct:
    if fmt == "meta-2023":
        pid = obj.get("parent_asin") or obj["asin"]
        details = obj.get("details") or {}
        brand = obj.get("store") or (details.get("Brand") if isinstance(details, dict) else None)
        cats = [obj["categories"]] if obj.get("categories") else []
        desc = obj.get("description") or obj.get("features")
        return RawProduct(pid, obj.get("title"), brand, cats, obj.get("main_category"), desc, _first_url(obj.get("images")))
    pid = obj["asin"]
    if fmt == "meta-2014":
        cats = obj.get("categories") or []
        if cats and not isinstance(cats[0], list):
            cats = [cats]
        return RawProduct(pid, obj.get("title"), obj.get("brand"), cats, None, obj.get("description"), _first_url(obj.get("imUrl")))
    cats = [obj["category"]] if obj.get("category") else []
    image = _first_url(obj.get("imageURLHighRes")) or _first_url(obj.get("imageURL")) or _first_url(obj.get("image"))
    return RawProduct(pid, obj.get("title"), obj.get("brand"), cats, obj.get("main_cat"), obj.get("description"), image)


def read_meta(path: Path) -> tuple[dict[str, RawProduct], ParseReport]:
    path = Path(path)
    fmt = detect_meta_format(path)
    report = ParseReport(str(path), fmt)
    products: dict[str, RawProduct] = {}
    with _open_text(path) as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            report.lines += 1
            obj = _parse_obj(line)
            if obj is None:
                report.bad(lineno, "neither JSON nor a Python literal dict")
                continue
            try:
                p = _product_from_meta(obj, fmt)
                if not isinstance(p.product_id, str) or not p.product_id:
                    raise ValueError("empty product id")
                if not all(isinstance(c, list) for c in p.categories):
                    raise ValueError("category path is not a list")
            except (KeyError, TypeError, ValueError) as e:
                report.bad(lineno, f"{type(e).__name__}: {e}")
                continue
            products.setdefault(p.product_id, p)  # first record wins on duplicates
            report.valid += 1
    return products, report

