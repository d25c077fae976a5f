"""The three streams the learning loop reads, from Redis or a JSONL export (``hmpps data export-logs``):
served rankings (``contract/served.py``), ``/feedback`` events and the shop's ``POST /events``."""


from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from contract import keys
from contract.errors import InputError
from contract.served import FIELD as SERVED_FIELD
from contract.served import ServedRanking
from contract.streams import entry_field, iter_stream

STREAMS = {"served": keys.SERVED_STREAM, "feedback": keys.FEEDBACK_STREAM, "events": keys.EVENTS_STREAM}


@dataclass
class Logs:
    """The three streams' records, in stream order; ``bad`` counts records that did not parse."""

    served: list[ServedRanking] = field(default_factory=list)
    feedback: list[dict[str, Any]] = field(default_factory=list)
    events: list[dict[str, Any]] = field(default_factory=list)
    bad: Counter[str] = field(default_factory=Counter)
    examples: list[str] = field(default_factory=list)

    def add(self, stream: str, raw: str | bytes | dict[str, Any], where: str) -> None:
        try:
            if stream == "served":
                self.served.append(ServedRanking.from_json(raw if not isinstance(raw, dict) else json.dumps(raw)))
                return
            d = json.loads(raw) if not isinstance(raw, dict) else raw
            if not isinstance(d, dict) or not isinstance(d.get("type"), str):
                raise ValueError("record must be an object with a 'type'")
            (self.feedback if stream == "feedback" else self.events).append(d)
        except ValueError as e:
            self.bad[stream] += 1
            if len(self.examples) < 5:
                self.examples.append(f"{where}: {e}")


def _entries(client: Any, since: float | None, until: float | None
             ) -> Iterator[tuple[str, str, str | bytes | None]]:
    """(stream name, entry id, raw record) of the three streams, stream by stream."""
    for stream, key in STREAMS.items():
        for sid, fields in iter_stream(client, key, since, until):
            yield stream, sid, entry_field(fields, SERVED_FIELD if stream == "served" else "e")


def read_logs_redis(client: Any, since: float | None = None, until: float | None = None) -> Logs:
    logs = Logs()
    for stream, sid, raw in _entries(client, since, until):
        if raw is None:
            logs.bad[stream] += 1
            continue
        logs.add(stream, raw, f"{STREAMS[stream]} {sid}")
    return logs


def export_logs(client: Any, out: Path, since: float | None = None, until: float | None = None) -> Counter[str]:
    """The three streams as JSONL, one ``{"stream", "id", "record"}`` per entry (written atomically)."""
    from contract.reports import atomic_write_text

    counts: Counter[str] = Counter()
    lines = []
    for stream, sid, raw in _entries(client, since, until):
        if raw is None:
            continue
        try:
            record = json.loads(raw)
        except ValueError:
            counts["unparseable"] += 1  # from-logs would skip it too
            continue
        lines.append(json.dumps({"stream": stream, "id": sid, "record": record}, separators=(",", ":")))
        counts[stream] += 1
    atomic_write_text(out, "\n".join(lines) + ("\n" if lines else ""))
    return counts


def read_logs_jsonl(path: Path, since: float | None = None, until: float | None = None) -> Logs:
    if not Path(path).is_file():
        raise InputError(f"{path}: no such log export (write one with 'hmpps data export-logs')")
    logs = Logs()
    lo = None if since is None else since * 1000
    hi = None if until is None else until * 1000
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            where = f"{Path(path).name}:{n}"
            try:
                d = json.loads(line)
                stream, sid, rec = d["stream"], str(d["id"]), d["record"]
                if stream not in STREAMS:
                    raise ValueError(f"unknown stream {stream!r} (expected one of {sorted(STREAMS)})")
                ms = float(sid.split("-")[0])
            except (ValueError, KeyError, TypeError) as e:
                logs.bad["lines"] += 1
                if len(logs.examples) < 5:
                    logs.examples.append(f"{where}: {e}")
                continue
            if (lo is not None and ms < lo) or (hi is not None and ms > hi):
                continue
            logs.add(stream, rec, where)
    return logs
