"""Benchmarks and load: the model bench, open-loop load, sweep reports, peer servers, reliability."""

from __future__ import annotations

from pathlib import Path

import typer

from hmpps.cli.common import Peer, command_line, friendly_errors, split_list, write_report
from hmpps.cli.root import app


@app.command("bench-model", rich_help_panel="Benchmarks")
@friendly_errors
def bench_model(
    pipeline: Path = typer.Option(..., "--pipeline", help="a 'hmpps pipeline' output directory"),
    data: Path = typer.Option(..., "--data", help="the dataset directory it was built from"),
    repeats: int = typer.Option(2000, "--repeats", min=50),
    threads: int = typer.Option(1, "--threads", min=1),
    out: Path = typer.Option(None, "--out", help="write JSON here and Markdown next to it"),
) -> None:
    """Time the student's K=10 call (ONNX fp32/int8, PyTorch eager) against a MiniLM int8 cross-encoder."""
    from loadtest.model_bench import markdown, run_model_bench

    rep = run_model_bench(pipeline, data, repeats, threads)
    md = markdown(rep, command_line())
    write_report(out, rep, md)
    typer.echo(md)


@app.command("loadtest", rich_help_panel="Benchmarks")
@friendly_errors
def loadtest(
    url: str = typer.Option(..., "--url", help="service base URL, e.g. http://127.0.0.1:8000"),
    rps: float = typer.Option(..., "--rps", help="constant arrival rate (requests per second)"),
    duration: float = typer.Option(..., "--duration", help="seconds of load"),
    bundle: Path = typer.Option(..., "--bundle", help="bundle whose users, queries and products make the request mix"),
    candidates: int = typer.Option(10, "--candidates", min=1, max=200, help="K candidates per request"),
    tail_share: float = typer.Option(0.0, "--tail-share", min=0.0, max=1.0, help="share of unseen (tail) queries"),
    timeout: float = typer.Option(2.0, "--timeout", help="per-request client timeout (s)"),
    out: Path = typer.Option(None, "--out", help="JSON report (Markdown next to it)"),
    allow_remote: bool = typer.Option(False, "--allow-remote", help="allow a non-loopback target"),
    seed: int = typer.Option(0, "--seed"),
) -> None:
    """Open-loop load at a constant rate; latency from the scheduled send time (no coordinated omission)."""

    from loadtest.mix import RequestMix
    from loadtest.openloop import markdown, run, run_open_loop, validate, write_reports

    validate(url, rps, duration, allow_remote)
    mix = RequestMix(bundle, candidates, seed, tail_share)
    rep = run(run_open_loop(url.rstrip("/"), rps, duration, mix, timeout))
    if out is not None:
        write_reports(rep, out)
    typer.echo(markdown(rep))


@app.command("bench-report", rich_help_panel="Benchmarks")
@friendly_errors
def bench_report(
    runs: list[Path] = typer.Argument(..., help="loadtest JSON reports of one rate sweep"),
    out: Path = typer.Option(..., "--out", help="Markdown summary; the plot goes next to it as .png"),
) -> None:
    """Table, saturation rate and latency-vs-rate plot from a sweep of 'hmpps loadtest' reports.

    Reports from several scorers (see 'hmpps serve-peer') give a side-by-side table instead."""
    from contract.reports import atomic_write_text
    from loadtest.report import by_scorer, load_sweep, peers_markdown, plot_peers, plot_sweep, sweep_markdown

    missing = [str(p) for p in runs if not p.is_file()]
    if missing:
        from contract.errors import InputError

        raise InputError(f"no such report: {', '.join(missing)}")
    reps = load_sweep(runs)
    if len(by_scorer(reps)) > 1:  # reports from several scorers: the side-by-side comparison
        md = peers_markdown(reps)
        plot_peers(reps, out.with_suffix(".png"))
    else:
        md = sweep_markdown(reps)
        plot_sweep(reps, out.with_suffix(".png"))
    atomic_write_text(out, md + f"\n![latency vs rate]({out.with_suffix('.png').name})\n")
    typer.echo(md)


@app.command("serve-peer", rich_help_panel="Benchmarks")
@friendly_errors
def serve_peer(
    peer: Peer = typer.Option(..., "--peer", help="student (ONNX) | eager (PyTorch student) | cross-encoder (MiniLM-L6 int8)"),
    pipeline: Path = typer.Option(..., "--pipeline", help="'hmpps pipeline' output (bundle/, distill/, bench/)"),
    host: str = typer.Option("127.0.0.1", "--host"),
    port: int = typer.Option(8000, "--port", min=1, max=65535),
    threads: int = typer.Option(1, "--threads", min=1, help="intra-op threads of the peer's model"),
) -> None:
    """Benchmarks only: the service with a peer scorer on the same HTTP and Redis path (one worker)."""
    from loadtest.peers import serve_peer as run

    run(peer.value, pipeline, host, port, threads)


@app.command("bench-capacity", rich_help_panel="Benchmarks")
@friendly_errors
def bench_capacity(
    bundle: Path = typer.Option(..., "--bundle", help="bundle to serve and to scale the Redis figures from"),
    parts: str = typer.Option("http,redis", "--parts", help="http (share, open loop, saturation), redis "
                                                             "(memory, publish); comma-separated"),
    duration: float = typer.Option(10, "--duration", help="seconds of each wrk run"),
    connections: int = typer.Option(16, "--connections", help="wrk connections of the saturation runs"),
    rate: float = typer.Option(100, "--rate", help="requests/s of the open-loop run"),
    products: int = typer.Option(100_000, "--products", help="synthetic products for the Redis figures"),
    users: int = typer.Option(100_000, "--users", help="synthetic users' histories for the Redis figures"),
    upsert: int = typer.Option(20_000, "--upsert", help="new products written by the upsert figure"),
    cluster: bool = typer.Option(True, "--cluster/--no-cluster", help="also publish into a 3+3 Redis Cluster"),
    out: Path = typer.Option(None, "--out", help="JSON report; Markdown next to it"),
) -> None:
    """/rerank as a share of /healthz, p50/p99 at a fixed rate, saturation with 1 and 2 workers, Redis
    memory per 1M products and users, publish throughput single node and cluster; real processes."""
    from loadtest.capacity import CapacityConfig, markdown, run_capacity

    chosen = tuple(split_list(parts))
    bad = [p for p in chosen if p not in ("http", "redis")]
    if bad or not chosen:
        raise typer.BadParameter(f"--parts {parts!r}: choose from http, redis")
    cfg = CapacityConfig(duration_s=duration, connections=connections, rate=rate, products=products, users=users,
                         upsert_products=upsert, cluster=cluster)
    rep = run_capacity(bundle, cfg, chosen)
    md = markdown(rep, command_line())
    write_report(out, rep, md)
    typer.echo(md)


@app.command("reliability", rich_help_panel="Benchmarks")
@friendly_errors
def reliability(
    bundle: Path = typer.Option(..., "--bundle", help="bundle to serve"),
    scenarios: str = typer.Option("redis_kill,overload,reload,soak,fuzz", "--scenarios", help="comma-separated"),
    rps: float = typer.Option(100, "--rps", help="load for the kill, reload and soak scenarios"),
    saturation: float = typer.Option(300, "--saturation", help="measured saturation rate; overload offers 3x"),
    soak_seconds: float = typer.Option(600, "--soak-seconds", min=10),
    fuzz_examples: int = typer.Option(100, "--fuzz-examples", min=1),
    out: Path = typer.Option(None, "--out", help="JSON report; Markdown next to it"),
) -> None:
    """Redis killed under load, overload, reload under load, soak (RSS) and fuzz; real redis-server."""
    from loadtest.reliability import markdown, run_suite

    rep = run_suite(bundle, split_list(scenarios), rps, saturation, soak_seconds, fuzz_examples)
    md = markdown(rep, command_line())
    write_report(out, rep, md)
    typer.echo(md)


@app.command("bench-events", rich_help_panel="Benchmarks")
@friendly_errors
def bench_events(
    url: str = typer.Option(..., "--url", help="service base URL, e.g. http://127.0.0.1:8000"),
    bundle: Path = typer.Option(..., "--bundle", help="bundle whose users and products the events name"),
    seconds: float = typer.Option(10.0, "--seconds", help="how long to post"),
    batch: int = typer.Option(50, "--batch", help="events per POST (1..500)"),
    concurrency: int = typer.Option(2, "--concurrency", help="clients posting back to back"),
    out: Path = typer.Option(None, "--out", help="JSON report (Markdown next to it)"),
    allow_remote: bool = typer.Option(False, "--allow-remote", help="allow a non-loopback target"),
) -> None:
    """Events per second that POST /events records (each event a new history append)."""
    from loadtest.events_bench import markdown, run_events_bench

    rep = run_events_bench(url, bundle, seconds, batch, concurrency, allow_remote)
    md = markdown(rep, command_line())
    write_report(out, rep, md)
    typer.echo(md)


@app.command("bench-offline", rich_help_panel="Benchmarks")
@friendly_errors
def bench_offline(
    out: Path = typer.Option(Path("runs/bench_offline"), "--out", help="output directory (report.md, JSON, plot); "
                                                                       "a rerun skips the stages that finished"),
    sizes: str = typer.Option("2k,6k,20k", "--sizes", help="shop sizes in users, comma-separated (20k, 1m)"),
    products_per_user: float = typer.Option(0.2, "--products-per-user"),
    stage_budget_s: float = typer.Option(3600.0, "--stage-budget-s", help="stop a stage past this many seconds"),
    memory_budget_gb: float = typer.Option(8.0, "--memory-budget-gb", help="stop a stage past this resident memory"),
    teacher_train_queries: int = typer.Option(200, "--teacher-train-queries", min=10),
    teacher_scored_queries: int = typer.Option(1000, "--teacher-scored-queries", min=10),
    seed: int = typer.Option(0, "--seed"),
    first_stage_processes: int = typer.Option(1, "--first-stage-processes", min=1,
                                              help="run hmpps retrieve's fits in this many processes "
                                                   "(accelerate launch, one thread each)"),
) -> None:
    """The offline pipeline stage by stage on generated shops of growing size: wall time, peak memory,
    growth exponents, a log-log plot; a stage past its budget is stopped, not swapped."""
    from hmpps.offline_bench import BenchConfig, parse_sizes
    from hmpps.offline_bench import bench_offline as run

    cfg = BenchConfig(parse_sizes(sizes), products_per_user, stage_budget_s, memory_budget_gb, teacher_train_queries,
                      teacher_scored_queries, seed, first_stage_processes)
    run(out, cfg)
    typer.echo((out / "report.md").read_text())
