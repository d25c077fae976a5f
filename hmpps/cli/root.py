"""The root command and its groups; each command module adds its commands to them."""

from __future__ import annotations

import typer

app = typer.Typer(
    help=(
        "HMPPS Rerank: personalized product-search reranking.\n\n"
        "Offline, in order: data (amazon | synthetic) -> retrieve (first-stage retriever) -> summarize (optional) -> "
        "teacher (two-stage HMPPS) -> distill (ONNX student bundle) -> publish. 'pipeline' runs retrieve, "
        "teacher and distill in one go; 'metrics' compares runs. Online: serve, ab-report. "
        "Benchmarks: bench-model, loadtest, bench-report, serve-peer, reliability."
    ),
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
data_app = typer.Typer(help="Build a normalized dataset directory (the first thing every stage reads).",
                       no_args_is_help=True)
app.add_typer(data_app, name="data", rich_help_panel="Offline stages")
bundle_app = typer.Typer(help="Inspect student bundles.", no_args_is_help=True)
app.add_typer(bundle_app, name="bundle", rich_help_panel="Serving")
