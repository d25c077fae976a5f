"""The offline stages: retrieve, summarize, teacher, distill, ablate-student, pipeline, ablate, headroom, metrics."""

from __future__ import annotations

from pathlib import Path

import typer

from hmpps.cli.common import (
    AblationGroup,
    CandidatesDir,
    ConfigFile,
    DataDir,
    FirstStageModel,
    MetricsProtocol,
    Sets,
    SummaryMode,
    friendly_errors,
    parse_sets,
    split_list,
)
from hmpps.cli.root import app


@app.command("retrieve", rich_help_panel="Offline stages")
@friendly_errors
def retrieve(
    data: DataDir = ...,
    model: FirstStageModel = typer.Option(..., "--model", help="the first-stage retriever"),
    out: Path = typer.Option(..., "--out", help="output directory (candidates.jsonl, metrics.json, report.md)"),
    config: ConfigFile = None,
    seed: int = typer.Option(None, "--seed"),
    epochs: int = typer.Option(None, "--epochs", min=1),
    top_k: int = typer.Option(10, "--top-k", min=1, max=1000, help="candidates kept per query (K_p)"),
    sets: Sets = None,
    holdout_folds: int = typer.Option(3, "--holdout-folds", min=0,
                                      help="learned models: rank every train query with a model fitted on the other "
                                           "folds (holdout.jsonl, the student's training lists); 0: none"),
    holdout_queries: int = typer.Option(50_000, "--holdout-queries", min=0,
                                        help="holdout lists for at most this many train queries (a seeded sample; "
                                             "only the folds it reaches are fitted); 0: every train query"),
) -> None:
    """First stage: rank the catalogue per query and keep the top K_p candidates."""
    from training.first_stage.run import run_retrieval

    overrides = parse_sets(sets) | {k: v for k, v in {"seed": seed, "epochs": epochs}.items() if v is not None}
    metrics = run_retrieval(data, model.value, out, config_path=config, overrides=overrides, k=top_k, holdout_folds=holdout_folds,
                            holdout_queries=holdout_queries)
    from training.report import metrics_table

    if metrics:  # under accelerate launch only rank 0 has them (and writes OUT)
        typer.echo(metrics_table({model.value: metrics}))


@app.command("summarize", rich_help_panel="Offline stages")
@friendly_errors
def summarize(
    data: DataDir = ...,
    mode: SummaryMode = typer.Option(SummaryMode.perspective, "--mode", help="how products are summarized (Table 5)"),
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
    sets: Sets = None,
) -> None:
    """Summarize product descriptions around search perspectives (HMPPS Sec. 4.2) with an LLM."""
    from training.config import load_config
    from training.pretrained import cache_root
    from training.summarize.llm import parse_llm_spec
    from training.summarize.run import SummarizeConfig, run_summarize

    cfg = load_config(SummarizeConfig, None, parse_sets(sets) | {"mode": mode.value})
    part = None
    if shard is not None:
        i, sep, n = shard.partition("/")
        if not sep or not i.isdigit() or not n.isdigit():
            raise typer.BadParameter(f"--shard {shard!r}: expected I/N, e.g. 0/4")
        part = (int(i), int(n))
    model = None
    if mode != SummaryMode.none:
        if not llm:
            raise typer.BadParameter(f"--mode {mode.value} needs --llm (smollm2, local:PATH or openai:URL:MODEL)")
        model = parse_llm_spec(llm, threads=threads, concurrency=concurrency, timeout_s=timeout, retries=retries)
    run_summarize(data, model, out, cfg, cache_dir=cache or cache_root() / "summaries", shard=part,
                  perspectives_file=perspectives, limit=limit)
    typer.echo((out / "report.md").read_text().split("## Before and after")[0].rstrip())


@app.command("teacher", rich_help_panel="Offline stages")
@friendly_errors
def teacher(
    data: DataDir = ...,
    candidates: CandidatesDir = ...,
    out: Path = typer.Option(..., "--out", help="teacher output directory (resumable)"),
    profile: str = typer.Option("tiny", "--profile", help="tiny | smol | gpu, or see --config"),
    config: ConfigFile = None,
    summaries: Path = typer.Option(None, "--summaries", help="summaries directory from 'hmpps summarize'"),
    sets: Sets = None,
    ray: str = typer.Option(None, "--ray", help="score the candidates on Ray Data: 'auto' or a cluster address "
                                                "(pip install '.[scale]')"),
) -> None:
    """Train the two-stage HMPPS teacher and score the first stage's candidates."""
    from training.report import metrics_table
    from training.teacher.config import load_teacher_config
    from training.teacher.dist import is_main
    from training.teacher.run import run_teacher

    cfg = load_teacher_config(profile, config, parse_sets(sets))
    result = run_teacher(data, candidates, out, cfg, summaries=summaries, ray=ray)
    if is_main():  # under accelerate launch, the other ranks stop after training
        typer.echo(metrics_table({"teacher": result.metrics}))


@app.command("encode", rich_help_panel="Offline stages")
@friendly_errors
def encode(
    bundle: Path = typer.Option(..., "--bundle", help="bundle whose product encoder to use"),
    products: Path = typer.Option(..., "--products", help="own-data products file (hmpps-owndata/1)"),
    out: Path = typer.Option(..., "--out", help="directory of feature shards (written atomically)"),
    ray: str = typer.Option(None, "--ray", help="run on Ray Data: 'auto' (RAY_ADDRESS, else a local instance) or "
                                                "a cluster address; needs pip install '.[scale]'"),
    actors: int = typer.Option(None, "--actors", help="with --ray: encoder actors (default: the cluster's CPUs)"),
    shard_size: int = typer.Option(10_000, "--shard-size", help="products per shard file (a shard closes at the first batch past it)"),
    batch_size: int = typer.Option(64, "--batch-size", help="products per encoder call"),
) -> None:
    """Encode a catalogue's products with a bundle's product encoder into shards for 'hmpps publish
    --features', in one process or as a Ray Data job (one ONNX session per actor)."""
    from distill.encode import encode_products

    info = encode_products(bundle, products, out, ray, shard_size, batch_size, actors)
    typer.echo(f"encoded {info['products']} products into {len(info['shards'])} shards in {info['seconds']} s "
               f"({info['products_per_s']} products/s, {info['engine']}) -> {out}")


@app.command("distill", rich_help_panel="Offline stages")
@friendly_errors
def distill(
    data: DataDir = ...,
    teacher: Path = typer.Option(..., "--teacher", help="teacher output directory (scores, embeddings, checkpoint)"),
    out: Path = typer.Option(..., "--out", help="distillation output directory; the bundle goes to OUT/bundle"),
    config: ConfigFile = None,
    sets: Sets = None,
) -> None:
    """Distill the teacher into the ONNX student bundle (App. A.3), with parity and int8 checks."""
    from distill.run import run_distill
    from distill.student import StudentConfig
    from training.config import load_config

    cfg = load_config(StudentConfig, config, parse_sets(sets))
    run_distill(data, teacher, out, cfg)
    typer.echo((out / "report.md").read_text())


@app.command("ablate-student", rich_help_panel="Offline stages")
@friendly_errors
def ablate_student(
    data: DataDir = ...,
    teacher: Path = typer.Option(..., "--teacher", help="teacher output directory"),
    out: Path = typer.Option(..., "--out", help="output directory (ablation.json, report.md)"),
    groups: str = typer.Option("", "--groups", show_default="the default student's",
                               help="comma-separated signal groups (contract/signals.py): the full student, "
                                    "and each one left out"),
    add: str = typer.Option("", "--add", help="comma-separated groups to try on top of the full student, one at a time"),
    leave_out: bool = typer.Option(True, "--leave-out/--no-leave-out",
                                   help="also train the student without signals and without each group"),
    candidates: Path = typer.Option(None, "--candidates", show_default="the teacher's first stage",
                                    help="first-stage output directory (hmpps retrieve, with holdout lists): train on "
                                         "its holdout lists and score every test query it listed"),
    config: ConfigFile = None,
    sets: Sets = None,
) -> None:
    """Each ranking signal's worth: the student with all groups, none, each one left out, each one added."""
    from contract.signals import DEFAULT_GROUPS, check_groups
    from distill.ablate import ablate_student as run_ablation
    from distill.student import StudentConfig
    from training.config import load_config

    try:
        chosen = check_groups(split_list(groups)) or DEFAULT_GROUPS
    except ValueError as e:
        raise typer.BadParameter(str(e), param_hint="--groups") from None
    try:
        extra = tuple(g for g in check_groups(split_list(add)) if g not in chosen)
    except ValueError as e:
        raise typer.BadParameter(str(e), param_hint="--add") from None
    cfg = load_config(StudentConfig, config, parse_sets(sets))
    run_ablation(data, teacher, out, cfg, chosen, extra, leave_out, candidates)
    typer.echo((out / "report.md").read_text())


@app.command("pipeline", rich_help_panel="Offline stages")
@friendly_errors
def pipeline(
    data: DataDir = ...,
    first_stage: FirstStageModel = typer.Option(FirstStageModel.hem, "--first-stage", help="the first-stage retriever"),
    out: Path = typer.Option(..., "--out", help="pipeline output directory (resumable)"),
    profile: str = typer.Option("tiny", "--profile", help="teacher profile: tiny | smol | gpu"),
    config: ConfigFile = None,
    summaries: Path = typer.Option(None, "--summaries", help="summaries directory from 'hmpps summarize'"),
    sets: Sets = None,
) -> None:
    """Run retrieve -> teacher -> distill; write the bundle, metrics.json and a Table-1-style report.md."""
    import os

    from contract.errors import InputError
    from hmpps.pipeline import run_pipeline
    from training.teacher.config import load_teacher_config

    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise InputError("the pipeline runs in one process: under accelerate launch run 'hmpps teacher' alone, "
                         "after 'hmpps retrieve' and before 'hmpps distill' (README, multi-process training)")
    cfg = load_teacher_config(profile, config, parse_sets(sets))
    run_pipeline(data, first_stage.value, out, cfg, summaries=summaries)
    typer.echo((out / "report.md").read_text())


@app.command("ablate", rich_help_panel="Offline stages")
@friendly_errors
def ablate(
    data: DataDir = ...,
    candidates: CandidatesDir = ...,
    out: Path = typer.Option(..., "--out", help="ablation output directory"),
    profile: str = typer.Option("tiny", "--profile", help="teacher profile"),
    config: ConfigFile = None,
    groups: str = typer.Option("modality,history,fraction", "--groups",
                               help="comma-separated: modality,history,fraction (empty with --summaries: only Table 5)"),
    fractions: str = typer.Option("0.05,0.1,0.2", "--fractions", help="training fractions for the fraction group"),
    summaries: list[Path] = typer.Option(None, "--summaries", help="a summarize output; repeat for each mode (Table 5 rows)"),
    sets: Sets = None,
) -> None:
    """The paper's ablations: modality (Table 4), history (Fig. 3), training fraction (Fig. 4a)."""
    from contract.errors import InputError
    from training.teacher.ablate import run_ablate
    from training.teacher.config import load_teacher_config

    chosen = split_list(groups)
    known = [g.value for g in AblationGroup]
    unknown = [g for g in chosen if g not in known]
    if unknown:
        raise InputError(f"unknown ablation group(s) {', '.join(unknown)}; choose from {', '.join(known)}")
    try:
        fracs = tuple(float(f) for f in split_list(fractions))
    except ValueError as e:
        raise InputError(f"--fractions must be comma-separated numbers: {e}") from e
    if not all(0 < f <= 1 for f in fracs):
        raise InputError("--fractions must lie in (0, 1]")
    cfg = load_teacher_config(profile, config, parse_sets(sets))
    run_ablate(data, candidates, out, cfg, chosen, fracs, summaries)
    typer.echo((out / "report.md").read_text())


@app.command("headroom", rich_help_panel="Offline stages")
@friendly_errors
def headroom(
    data: DataDir = ...,
    candidates: CandidatesDir = ...,
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


@app.command("metrics", rich_help_panel="Offline stages")
@friendly_errors
def metrics(
    runs: list[Path] = typer.Argument(..., help="stage output directories holding metrics.json"),
    baseline: str = typer.Option(None, "--baseline", help="run name to compute relative improvement against"),
    protocol: MetricsProtocol = typer.Option(MetricsProtocol.hmpps, "--protocol",
                                             help="hmpps: top-10 list metrics | sampled: MAPS's 1 target + 99 negatives "
                                                  "(first stages)"),
) -> None:
    """Print one Markdown table of the paper's metrics for several runs."""
    from training.artifacts import read_json
    from training.report import METRIC_KEYS, SAMPLED_KEYS, metrics_table

    fname = "metrics.json" if protocol == MetricsProtocol.hmpps else "sampled_metrics.json"
    rows = {}
    for run in runs:
        if not (run / fname).exists():
            raise typer.BadParameter(f"{run} holds no {fname}" + (" (only 'hmpps retrieve' writes it)" if protocol == MetricsProtocol.sampled else ""))
        rows[run.name] = read_json(run / fname)
    if baseline is not None and baseline not in rows:
        raise typer.BadParameter(f"--baseline {baseline!r} is not one of {', '.join(rows)}")
    typer.echo(metrics_table(rows, baseline=baseline, keys=METRIC_KEYS if protocol == MetricsProtocol.hmpps else SAMPLED_KEYS))


@app.command("retrain", rich_help_panel="Offline stages")
@friendly_errors
def retrain(
    bundle: Path = typer.Option(..., "--bundle", help="the serving bundle whose student to fine-tune"),
    logs: Path = typer.Option(..., "--logs", help="a 'hmpps data from-logs' directory"),
    out: Path = typer.Option(..., "--out", help="output: bundle/, student.pt, arms.yaml, report.md"),
    student: Path = typer.Option(None, "--student", help="the bundle's training checkpoint (default: student.pt "
                                                         "beside the bundle or in ../distill/)"),
    data: Path = typer.Option(None, "--data", help="with --candidates: offline NDCG@4 on the held-out test queries"),
    candidates: Path = typer.Option(None, "--candidates", help="first-stage output directory for --data"),
    config: ConfigFile = None,
    sets: Sets = None,
) -> None:
    """Fine-tune a bundle's student on logged clicks with inverse-propensity weights; export a new bundle
    version and an arms file that puts it beside the current one."""
    from distill.retrain import RetrainConfig
    from distill.retrain import retrain as run
    from training.config import load_config

    cfg = load_config(RetrainConfig, config, parse_sets(sets))
    res = run(bundle, logs, out, cfg, student, data, candidates)
    typer.echo((out / "report.md").read_text())
    typer.echo(f"new bundle {res.version} in {res.bundle}; arms file {out / 'arms.yaml'} "
               f"(serve it with: hmpps serve --arms {out / 'arms.yaml'})")
