"""``hmpps data``: build the normalized dataset directory from Amazon files or the synthetic generator."""

from __future__ import annotations

from pathlib import Path

import typer

from contract.events import DEFAULT_POSITIVE_TYPES
from hmpps.cli.common import (
    RedisUrl,
    SyntheticFormat,
    SyntheticQueries,
    friendly_errors,
    parse_time,
    split_list,
)
from hmpps.cli.root import data_app


@data_app.command("amazon")
@friendly_errors
def data_amazon(
    interactions: Path = typer.Option(..., "--interactions", help="reviews JSON(.gz)/JSONL or ratings CSV"),
    meta: Path = typer.Option(None, "--meta", help="product metadata (2014 literals, 2018 JSON, 2023 JSONL)"),
    out: Path = typer.Option(..., "--out", help="dataset directory to write"),
    min_core: int = typer.Option(5, "--min-core", min=1, help="iterative k-core on users and products"),
    name: str = typer.Option(None, "--name", help="dataset name (default: the interactions file stem)"),
) -> None:
    """Read public Amazon review data (2014, 2018 or 2023 formats, detected)."""
    from training.amazon import read_interactions, read_meta
    from training.prepare import build_dataset
    from training.report import print_stats

    rows, rep = read_interactions(interactions)
    typer.echo(f"{interactions.name}: {rep.format}, {rep.valid:,} valid, {rep.malformed:,} malformed lines")
    reports = [rep]
    products = {}
    if meta is not None:
        products, mrep = read_meta(meta)
        reports.append(mrep)
        typer.echo(f"{meta.name}: {mrep.format}, {mrep.valid:,} valid, {mrep.malformed:,} malformed lines")
    ds_name = name or interactions.name.split(".")[0]
    stats = build_dataset(rows, products, out, name=ds_name, min_core=min_core, parse_reports=reports)
    if stats["query_sources"].get("dataset_name"):
        typer.secho(f"warning: no product has a category path (no --meta?); every query is the dataset name "
                    f"{ds_name!r}", fg=typer.colors.YELLOW, err=True)
    print_stats(stats, out)


@data_app.command("synthetic")
@friendly_errors
def data_synthetic(
    out: Path = typer.Option(..., "--out", help="dataset directory to write (with --format events: the source files)"),
    users: int = typer.Option(400, "--users", min=10, max=1_000_000),
    products: int = typer.Option(300, "--products", min=20, max=1_000_000),
    seed: int = typer.Option(0, "--seed"),
    min_core: int = typer.Option(5, "--min-core", min=1),
    fmt: SyntheticFormat = typer.Option(SyntheticFormat.dataset, "--format",
                                        help="dataset: the normalized dataset directory | events: the same world as "
                                             "own-data files (products.jsonl.gz, events.jsonl.gz, images/) for "
                                             "'hmpps data events'"),
    queries: SyntheticQueries = typer.Option(SyntheticQueries.search, "--queries",
                                             help="with --format events: search (each purchase carries the text its "
                                                  "buyer searched) | category (no query: the category rule applies)"),
) -> None:
    """Generate a deterministic Amazon-like world with rendered product images."""
    from training.report import print_stats
    from training.synthetic import SyntheticConfig, export_events, generate

    cfg = SyntheticConfig(users=users, products=products, seed=seed, min_core=min_core)
    if fmt == SyntheticFormat.events:
        counts = export_events(cfg, out, queries.value)
        typer.echo(f"wrote {counts['products']} products and {counts['events']} purchase events of {counts['users']} "
                   f"users to {out} (schema hmpps-owndata/1); build the dataset with:\n  hmpps data events "
                   f"--products {out / 'products.jsonl.gz'} --events {out / 'events.jsonl.gz'} --out DIR")
        return
    print_stats(generate(cfg, out), out)


@data_app.command("events")
@friendly_errors
def data_events(
    products: Path = typer.Option(..., "--products", help="products, JSONL or CSV (gzipped or not), schema hmpps-owndata/1"),
    events: Path = typer.Option(..., "--events", help="events, JSONL or CSV (gzipped or not), schema hmpps-owndata/1"),
    out: Path = typer.Option(..., "--out", help="dataset directory to write"),
    positive: str = typer.Option(",".join(DEFAULT_POSITIVE_TYPES), "--positive",
                                 help="comma-separated event types that count as purchases"),
    min_core: int = typer.Option(5, "--min-core", min=1, help="iterative k-core on users and products"),
    name: str = typer.Option(None, "--name", help="dataset name (default: the events file's folder name)"),
) -> None:
    """Read a shop's own products and events (README "Bring your own data") into a dataset directory."""
    from training.owndata import build_from_events
    from training.report import print_stats

    stats, counts = build_from_events(products, events, out, positive=split_list(positive), min_core=min_core,
                                      name=name or events.resolve().parent.name)
    for rep in stats["parse"]:
        typer.echo(f"{rep['path']}: {rep['valid']:,} valid, {rep['malformed']:,} malformed lines"
                   + "".join(f"\n  {e}" for e in rep["malformed_examples"]))
    typer.echo(f"events by type: {dict(counts.by_type)}; {counts.positive:,} positive events of known products "
               f"({counts.with_query:,} with their own query); {counts.unknown_product:,} for unknown products")
    print_stats(stats, out)


@data_app.command("from-logs")
@friendly_errors
def data_from_logs(
    out: Path = typer.Option(..., "--out", help="directory to write: labelled rankings, histories, propensities, report"),
    redis_url: str = typer.Option(None, "--redis-url", envvar="REDIS_URL",
                                  help="Redis holding the served, feedback and events streams"),
    jsonl: Path = typer.Option(None, "--jsonl", help="read a JSONL export of the streams (hmpps data export-logs) "
                                                     "instead of Redis"),
    since: str = typer.Option(None, "--since", help="first ranking time, ISO 8601 or unix seconds"),
    until: str = typer.Option(None, "--until", help="last ranking time, ISO 8601 or unix seconds"),
    window_s: float = typer.Option(1800.0, "--window-s", min=1.0, help="events count this long after a ranking"),
    history_types: str = typer.Option(",".join(DEFAULT_POSITIVE_TYPES), "--history-types",
                                      help="comma-separated event types that join a user's history"),
) -> None:
    """Join served rankings with the clicks, dwell and purchases that followed them, and label them with
    the cascade click model (purchases > efficient clicks > clicks); estimate position propensities."""
    from contract.errors import InputError
    from training.clicklog.from_logs import from_logs
    from training.clicklog.logs import read_logs_jsonl, read_logs_redis

    t0, t1 = parse_time(since, "--since"), parse_time(until, "--until")
    if t0 is not None and t1 is not None and t1 < t0:
        raise InputError(f"--until {until} is before --since {since}")
    if (redis_url is None) == (jsonl is None):
        raise InputError("give exactly one source: --redis-url URL or --jsonl FILE")
    if jsonl is not None:
        logs, source = read_logs_jsonl(jsonl, t0, t1), str(jsonl)
    else:
        from service.infra.redis_conn import connect

        handle = connect(redis_url)
        try:
            logs, source = read_logs_redis(handle.client, t0, t1), redis_url
        finally:
            handle.close()
    for e in logs.examples:
        typer.secho(f"skipped: {e}", fg=typer.colors.YELLOW, err=True)
    res = from_logs(logs, out, source, t0, t1, window_s, history_types=tuple(split_list(history_types)))
    s = res.summary
    typer.echo(f"{s['rankings']:,} rankings ({s['shown']:,} shown, {s['with_click']:,} with a click); "
               f"{sum(s['joined'].values()):,} events joined, {sum(s['left_over'].values()):,} left over; "
               f"labels {s['labels']}; wrote {out}/report.md")


@data_app.command("export-logs")
@friendly_errors
def data_export_logs(
    out: Path = typer.Option(..., "--out", help="JSONL file to write"),
    redis_url: RedisUrl = ...,
    since: str = typer.Option(None, "--since", help="ISO 8601 or unix seconds"),
    until: str = typer.Option(None, "--until", help="ISO 8601 or unix seconds"),
) -> None:
    """Write the served, feedback and events streams to one JSONL file (input of from-logs --jsonl)."""
    from service.infra.redis_conn import connect
    from training.clicklog.logs import export_logs

    handle = connect(redis_url)
    try:
        counts = export_logs(handle.client, out, parse_time(since, "--since"), parse_time(until, "--until"))
    finally:
        handle.close()
    typer.echo(f"wrote {out}: {dict(counts)}")
