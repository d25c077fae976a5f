"""``hmpps data events``: a shop's own products and events (schema ``hmpps-owndata/1``, see
``contract/events.py``) -> the same normalized dataset directory that ``hmpps data amazon`` builds.

Files are JSONL or CSV, gzipped or not (detected from the content). Events of the
positive types become the purchases that histories, queries and the 70/30 split
are built from; an event's own ``query`` is used as it is, and one without a
query falls back to the category rule (README, "The query rule").
"""

from __future__ import annotations

import csv
import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from contract.errors import InputError
from contract.events import SCHEMA, Product, parse_event, parse_product
from training.amazon import ParseReport, RawInteraction, RawProduct, _first_lines, _open_text

# side files the synthetic generator writes beside its events: carried into the dataset when present
SIDE_FILES = ("users_truth.jsonl", "consultations.jsonl")


@dataclass
class EventCounts:
    by_type: Counter[str] = field(default_factory=Counter)
    positive: int = 0
    unknown_product: int = 0
    with_query: int = 0

    def as_dict(self) -> dict[str, Any]:
        return {"by_type": dict(self.by_type), "positive": self.positive,
                "unknown_product": self.unknown_product, "with_query": self.with_query}


def _records(path: Path, report: ParseReport) -> Any:
    """(line number, dict) for each record of a JSONL or CSV file; bad JSON lines are counted here."""
    head = _first_lines(path, 1)
    if not head:
        raise InputError(f"{path} is empty")
    is_json = head[0].lstrip("\ufeff").strip().startswith("{")
    report.format = f"{SCHEMA} {'jsonl' if is_json else 'csv'}"
    with _open_text(path) as f:
        if is_json:
            for lineno, line in enumerate(f, 1):
                if not line.strip():
                    continue
                report.lines += 1
                try:
                    obj = json.loads(line)
                except json.JSONDecodeError as e:
                    report.bad(lineno, f"not JSON: {e.msg}")
                    continue
                yield lineno, obj
        else:
            reader = csv.DictReader(f)
            for row in reader:
                lineno = reader.line_num
                report.lines += 1
                if None in row:
                    report.bad(lineno, "more cells than header columns")
                    continue
                yield lineno, {k.strip().lstrip("\ufeff"): v for k, v in row.items() if v not in (None, "")}


def _csv_attributes(obj: dict[str, Any]) -> dict[str, Any]:
    if isinstance(obj.get("attributes"), str):  # CSV: a JSON object in its cell
        obj = obj | {"attributes": json.loads(obj["attributes"])}
    return obj


def read_product_records(path: Path) -> tuple[list[Product], ParseReport]:
    """The valid product records of a file, in order (a repeated id keeps its first record)."""
    path = Path(path)
    report = ParseReport(str(path), SCHEMA)
    out: dict[str, Product] = {}
    for lineno, obj in _records(path, report):
        try:
            p = parse_product(_csv_attributes(obj) if isinstance(obj, dict) else obj)
        except (ValueError, json.JSONDecodeError) as e:
            report.bad(lineno, str(e))
            continue
        if p.product_id in out:
            report.bad(lineno, f"product_id {p.product_id!r} appears twice (the first is kept)")
            continue
        out[p.product_id] = p
        report.valid += 1
    return list(out.values()), report


def read_products(path: Path) -> tuple[dict[str, RawProduct], ParseReport, dict[str, Path]]:
    """Products by id, the parse report, and the image files found (product id -> file)."""
    path = Path(path)
    records, report = read_product_records(path)
    products: dict[str, RawProduct] = {}
    images: dict[str, Path] = {}
    for p in records:
        image_rel = None
        if p.image:
            src = Path(p.image) if Path(p.image).is_absolute() else path.parent / p.image
            if src.is_file():
                image_rel = f"images/{_safe(p.product_id)}{src.suffix.lower() or '.img'}"
                images[p.product_id] = src
        products[p.product_id] = RawProduct(
            product_id=p.product_id, title=p.title, brand=p.brand, categories=[list(p.category)] if p.category else [],
            main_category=p.category[0] if p.category else None, description=p.description,
            image_url=p.image_url, image=image_rel, extra=dict(p.attributes))
    return products, report, images


def read_events(path: Path, positive: tuple[str, ...], known: set[str]) -> tuple[list[RawInteraction], ParseReport,
                                                                                EventCounts]:
    """The positive events of known products, as purchases (with their queries); everything else counted."""
    path = Path(path)
    report = ParseReport(str(path), SCHEMA)
    counts = EventCounts()
    seen: set[str] = set()
    out: list[RawInteraction] = []
    for lineno, obj in _records(path, report):
        try:
            e = parse_event(obj)
        except ValueError as err:
            report.bad(lineno, str(err))
            continue
        report.valid += 1
        if e.event_id in seen:
            continue  # a retried event: once is enough
        seen.add(e.event_id)
        counts.by_type[e.type] += 1
        if e.type not in positive:
            continue
        if e.product_id not in known:
            counts.unknown_product += 1
            continue
        counts.positive += 1
        counts.with_query += e.query is not None
        ts = int(e.timestamp) if float(e.timestamp).is_integer() else e.timestamp  # 1700000000, not 1700000000.0
        out.append(RawInteraction(e.user_id, e.product_id, ts, e.query))
    return out, report, counts


def _safe(product_id: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in product_id)


def build_from_events(products_file: Path, events_file: Path, out: Path, *, positive: tuple[str, ...],
                      min_core: int, name: str) -> tuple[dict[str, Any], EventCounts]:
    from training.prepare import build_dataset

    if not positive:
        raise InputError("--positive names no event type")
    products, prep, images = read_products(products_file)
    if not products:
        raise InputError(f"{products_file}: no valid product ({prep.malformed} malformed lines; "
                         + "; ".join(prep.examples[:3]) + ")")
    rows, erep, counts = read_events(events_file, positive, set(products))
    if not rows:
        raise InputError(f"{events_file}: no valid {'/'.join(positive)} event of a known product "
                         f"({erep.valid} valid events: {dict(counts.by_type)}; {counts.unknown_product} for unknown "
                         f"products; {erep.malformed} malformed lines)")
    side = [f for f in SIDE_FILES if (events_file.parent / f).is_file()]
    stats = build_dataset(rows, products, out, name=name, min_core=min_core, parse_reports=[prep, erep],
                          params={"positive": list(positive), "schema": SCHEMA, "events": counts.as_dict()},
                          image_sources={products[pid].image: src for pid, src in images  # type: ignore[misc]
                                         .items()},
                          side_files={f: events_file.parent / f for f in side})
    return stats, counts
