"""Experimentation commands: the simulated users, off-policy evaluation, what exploration costs."""

from __future__ import annotations

from pathlib import Path

import typer

from hmpps.cli.common import (
    CandidatesDir,
    DataDir,
    Sets,
    friendly_errors,
    parse_sets,
    split_list,
    write_report,
)
from hmpps.cli.root import app

PANEL = "Experiments"


@app.command("simulate", rich_help_panel=PANEL)
@friendly_errors
def simulate(
    demo: Path = typer.Option(Path("runs/demo"), "--demo", help="a 'make demo' directory: data/ and pipeline/"),
    out: Path = typer.Option(Path("runs/simulate"), "--out", help="output directory (report.md and JSON)"),
    experiment: str = typer.Option("loop", "--experiment",
                                   help="loop: the learning loop (A/B, retrain, A/B); interleaving: sessions to a "
                                        "verdict, interleaved vs A/B; ope: off-policy estimates vs served truth"),
    requests: int = typer.Option(3000, "--requests", min=10,
                                 help="loop: requests per A/B phase; interleaving: requests per seed"),
    seed: int = typer.Option(0, "--seed", help="the (first) seed"),
    seeds: int = typer.Option(3, "--seeds", min=1, help="interleaving and ope: how many seeds"),
    weak: Path = typer.Option(None, "--weak", help="interleaving and ope: the weaker student's bundle (default: "
                                                   "the content-only student distilled from the demo's teacher)"),
    sets: Sets = None,
    trial_sets: list[str] = typer.Option(None, "--trial-set", help="override a TrialConfig field (interleaving, ope)"),
    retrain_sets: list[str] = typer.Option(None, "--retrain-set", help="override a RetrainConfig field"),
) -> None:
    """Simulated users over real HTTP. loop: (a) passthrough vs the student, (b) from-logs and retraining,
    (c) the retrained student vs the original. interleaving / ope: the experimentation tools checked against
    the simulator's truth over several seeds."""
    from experiments.simulate import SimConfig, SimInputs
    from experiments.simulate import simulate as run
    from experiments.trials import TrialConfig, run_trials
    from training.config import load_config

    cfg = load_config(SimConfig, None, parse_sets(sets) | {"requests_per_phase": requests, "seed": seed})
    if experiment == "loop":
        run(SimInputs.from_demo(demo), out, cfg, parse_sets(retrain_sets))
    else:
        tc = load_config(TrialConfig, None, {"seeds": seeds, "first_seed": seed, "requests": requests}
                         | parse_sets(trial_sets))
        run_trials(experiment, SimInputs.from_demo(demo), out, cfg, tc, weak, parse_sets(retrain_sets))
    typer.echo((out / "report.md").read_text())


@app.command("ope", rich_help_panel=PANEL)
@friendly_errors
def ope(
    logs: Path = typer.Option(..., "--logs", help="hmpps data from-logs output directory, or a JSONL export of the "
                                                  "served, feedback and events streams"),
    bundles: list[Path] = typer.Option(..., "--bundle", help="candidate bundle (repeat for two: also their paired "
                                                             "difference)"),
    out: Path = typer.Option(None, "--out", help="also write JSON here (and Markdown next to it)"),
    resamples: int = typer.Option(2000, "--resamples", min=100),
    seed: int = typer.Option(0, "--seed"),
) -> None:
    """A candidate bundle's clicks per request estimated from exploration logs: IPS, SNIPS, PBM-IPS, SN-PBM-IPS
    and doubly robust, each with a bootstrap interval over users, beside the logging policy's own."""
    from experiments.ope import ope as run
    from experiments.ope import read_logs, report_markdown

    if len(bundles) > 2:
        raise typer.BadParameter("at most two candidates", param_hint="--bundle")
    names = [b.parent.name if b.name == "bundle" else b.name for b in bundles]
    if len(set(names)) < len(names):
        names = [f"candidate {i + 1}" for i in range(len(bundles))]
    rankings, history = read_logs(logs)
    rep = run(rankings, history, dict(zip(names, bundles, strict=True)), resamples, seed)
    md = report_markdown(rep)
    write_report(out, rep, md)
    typer.echo(md)


@app.command("explore-cost", rich_help_panel=PANEL)
@friendly_errors
def explore_cost(
    bundle: Path = typer.Option(..., "--bundle", help="the student the exploring arm would serve"),
    data: DataDir = ...,
    candidates: CandidatesDir = ...,
    temperatures: str = typer.Option("0.1,0.2,0.3,0.5,1", "--temperatures", help="comma-separated"),
    depth: int = typer.Option(10, "--depth", min=2, max=10, help="how many of the student's top items are redrawn"),
    split: str = typer.Option("test", "--split", help="whose queries: test, or train to choose a setting"),
    out: Path = typer.Option(None, "--out", help="also write JSON here (and Markdown next to it)"),
) -> None:
    """The expected NDCG@4 of the exploring arm at each temperature (exact, from the display marginals),
    and its paired cost against the deterministic student."""
    from experiments.exploration_cost import exploration_cost, report_markdown

    try:
        temps = [float(t) for t in split_list(temperatures)]
    except ValueError:
        raise typer.BadParameter(f"{temperatures!r}: numbers separated by commas", param_hint="--temperatures") from None
    if not temps or any(not 0 < t <= 100 for t in temps):
        raise typer.BadParameter("each temperature must be in (0, 100]", param_hint="--temperatures")
    if split not in ("test", "train"):
        raise typer.BadParameter("test or train", param_hint="--split")
    rep = exploration_cost(bundle, data, candidates, temps, depth, split=split)
    md = report_markdown(rep)
    write_report(out, rep, md)
    typer.echo(md)
