"""``hmpps data``: build the normalized dataset directory from Amazon files or the synthetic generator."""

from __future__ import annotations

from pathlib import Path

import typer

from hmpps.cli.common import friendly_errors
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
    out: Path = typer.Option(..., "--out", help="dataset directory to write"),
    users: int = typer.Option(400, "--users", min=10, max=1_000_000),
    products: int = typer.Option(300, "--products", min=20, max=1_000_000),
    seed: int = typer.Option(0, "--seed"),
    min_core: int = typer.Option(5, "--min-core", min=1),
) -> None:
    """Generate a deterministic Amazon-like dataset with rendered product images."""
    from training.report import print_stats
    from training.synthetic import SyntheticConfig, generate

    stats = generate(SyntheticConfig(users=users, products=products, seed=seed, min_core=min_core), out)
    print_stats(stats, out)
