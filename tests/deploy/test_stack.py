"""The deployment files without a Docker engine: the Dockerfile's and compose file's
structure, Prometheus config and rules with the real promtool, and the compose
services' own command lines run natively, with a real Prometheus scraping the
real service and evaluating every PromQL expression in the Grafana dashboard."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from loadtest.stackcheck import Prometheus, dashboard_exprs, traffic
from tests.compose_native import (
    REPO,
    NativeMap,
    base_env,
    load_compose,
    native_prometheus_config,
    native_redis_conf,
    read_env_file,
    redis_server_binary,
)
from tests.live_server import free_port
from tests.needs import need_tool

ENV_EXAMPLE = read_env_file(REPO / ".env.example")
REDIS_PASSWORD = "testonlypw"
DASHBOARD = REPO / "docker" / "grafana" / "dashboards" / "hmpps-rerank.json"
RULES = REPO / "docker" / "prometheus" / "rules" / "hmpps.yml"



def compose(**overrides: str) -> dict[str, Any]:
    return load_compose(ENV_EXAMPLE | {"GRAFANA_ADMIN_PASSWORD": "test-only", "REDIS_PASSWORD": REDIS_PASSWORD}
                        | overrides)


# ---------------------------------------------------------------- static structure

def test_compose_services_healthchecks_and_order() -> None:
    svc = compose()["services"]
    assert set(svc) == {"redis", "seed", "reranker", "prometheus", "grafana"}
    for name in ("redis", "reranker", "prometheus", "grafana"):
        assert svc[name]["healthcheck"]["test"], name
    assert "healthcheck" not in svc["seed"] and svc["seed"]["restart"] == "no"  # one-shot
    dep = {n: {d: c["condition"] for d, c in s.get("depends_on", {}).items()} for n, s in svc.items()}
    assert dep["seed"] == {"redis": "service_healthy"}
    assert dep["reranker"] == {"redis": "service_healthy", "seed": "service_completed_successfully"}
    assert dep["prometheus"] == {"reranker": "service_healthy"}
    assert dep["grafana"] == {"prometheus": "service_healthy"}
    assert svc["reranker"]["deploy"]["replicas"] == "1"
    assert compose(RERANKER_REPLICAS="4")["services"]["reranker"]["deploy"]["replicas"] == "4"
    assert svc["redis"]["command"][:2] == ["redis-server", "/usr/local/etc/redis/redis.conf"]
    assert svc["redis"]["command"][2:] == ["--requirepass", REDIS_PASSWORD]


def test_compose_exposes_nothing_beyond_this_host_by_default() -> None:
    svc = compose()["services"]
    assert "ports" not in svc["redis"]  # the feature store is reachable from compose's network only
    published = {name: s["ports"] for name, s in svc.items() if "ports" in s}
    assert set(published) == {"reranker", "prometheus", "grafana"}
    for name, ports in published.items():
        assert all(p.startswith("127.0.0.1:") for p in ports), (name, ports)
    assert all(p.startswith("0.0.0.0:") for p in compose(BIND_ADDRESS="0.0.0.0")["services"]["grafana"]["ports"])
    assert not [f for f in svc["prometheus"]["command"] if "lifecycle" in f]  # nobody can shut it down over HTTP
    assert svc["grafana"]["environment"]["GF_AUTH_ANONYMOUS_ENABLED"] == "false"
    assert svc["reranker"]["environment"]["HMPPS_EXPOSE_DOCS"] == "false"
    for name in ("seed", "reranker"):
        assert svc[name]["environment"]["REDIS_URL"] == f"redis://:{REDIS_PASSWORD}@redis:6379/0"
    conf = (REPO / "docker" / "redis" / "redis.conf").read_text()
    assert "protected-mode yes" in conf and "protected-mode no" not in conf


def test_compose_mounts_exist_and_every_variable_is_documented() -> None:
    for name, s in compose()["services"].items():
        for vol in s.get("volumes", []):
            src = vol.split(":")[0]
            if src.startswith("."):
                assert (REPO / src).exists(), f"{name} mounts missing {src}"
    used = set(re.findall(r"\$\{([A-Za-z_]+)", (REPO / "docker-compose.yml").read_text()))
    assert used <= set(ENV_EXAMPLE), f"not in .env.example: {sorted(used - set(ENV_EXAMPLE))}"
    # no default password ships
    with pytest.raises(ValueError, match="GRAFANA_ADMIN_PASSWORD"):
        load_compose(ENV_EXAMPLE | {"REDIS_PASSWORD": REDIS_PASSWORD})
    with pytest.raises(ValueError, match="REDIS_PASSWORD"):
        load_compose(ENV_EXAMPLE | {"GRAFANA_ADMIN_PASSWORD": "test-only"})


def _stages(dockerfile: str) -> dict[str, list[str]]:
    stages: dict[str, list[str]] = {}
    current = "__args__"
    for line in re.sub(r"\\\n", " ", dockerfile).splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        m = re.match(r"FROM\s+(\S+)(?:\s+AS\s+(\S+))?", line, re.I)
        if m:
            current = m[2] or f"final:{m[1]}"
        stages.setdefault(current, []).append(line)
    return stages


def test_dockerfile_targets_user_healthcheck_and_layer_order() -> None:
    stages = _stages((REPO / "Dockerfile").read_text())
    assert {"base-cpu", "base-gpu", "base", "service-deps", "service", "training-deps", "training"} <= set(stages)
    assert any("FROM base-${RUNTIME}" in line for line in stages["base"])
    assert any("cuda" in line.lower() for line in stages["base-gpu"])
    assert any("ORT_DEFAULT=onnxruntime-gpu" in line for line in stages["base-gpu"])
    assert any("ORT_DEFAULT=onnxruntime" in line for line in stages["base-cpu"])
    service = stages["service"]
    assert any(line.startswith("USER ") and "root" not in line for line in service)
    assert any(line.startswith("HEALTHCHECK") and "/readyz" in line for line in service)
    assert not any("torch" in line for line in stages["service-deps"] + service)
    for deps in ("service-deps", "training-deps"):
        copies = [line for line in stages[deps] if line.startswith("COPY")]
        assert copies and all("pyproject.toml" in c or "requirements.py" in c for c in copies), deps
    final = [k for k in stages if k.startswith("final:")]
    assert final == ["final:service"], "the default target must be the slim service image"


def test_dockerfile_builds_without_a_registry_and_keeps_secrets_out_of_layers() -> None:
    text = (REPO / "Dockerfile").read_text()
    # a `# syntax=` line makes BuildKit pull its frontend image: no build without a registry
    assert not re.search(r"^#\s*syntax=", text, re.M)
    lines = re.sub(r"\\\n", " ", text).splitlines()
    pip_runs = [line for line in lines if line.startswith("RUN") and "pip install" in line]
    assert len(pip_runs) >= 3
    for run in pip_runs:  # every pip call may use the build's CA bundle, mounted for that RUN only
        assert "--mount=type=secret,id=pip_ca" in run and ". /tmp/build/pip-ca.sh" in run, run
    assert "/run/secrets/pip_ca" in (REPO / "docker" / "pip-ca.sh").read_text()
    torch = next(run for run in pip_runs if "torch==" in run)
    assert "--mount=type=bind,source=docker/wheels" in torch and "TORCH_INDEX_URL" in torch
    training = _stages(text)["training"]
    copies = [line for line in training if line.startswith("COPY")]
    # code only: the local wheels (bind-mounted above), tests and run outputs stay out of the image
    assert copies and not any(c.split()[1] in (".", "docker/", "docker/wheels/") for c in copies)
    assert (REPO / "docker" / "wheels").is_dir() and "docker/wheels/*.whl" in (REPO / ".gitignore").read_text()


def test_compose_file_runs_on_compose_v1_and_every_base_image_has_a_stand_in_or_is_named() -> None:
    doc = yaml.safe_load((REPO / "docker-compose.yml").read_text())
    assert "name" not in doc, "docker-compose v1 rejects a top-level name: (COMPOSE_PROJECT_NAME in .env sets it)"
    assert ENV_EXAMPLE["COMPOSE_PROJECT_NAME"]
    python = re.search(r"^ARG PYTHON_IMAGE=(\S+)", (REPO / "Dockerfile").read_text(), re.M)
    assert python
    bases = [python[1]] + [s["image"] for s in compose()["services"].values() if "build" not in s]
    recipes = {"python": "python", "redis": "redis", "prom/prometheus": "prometheus"}
    standins = {b: recipes.get(b.rsplit(":", 1)[0]) for b in bases}
    assert [b for b, r in standins.items() if r is None] == ["grafana/grafana:11.2.0"]  # the one the check names as not run
    for base, recipe in standins.items():
        if recipe:
            assert (REPO / "docker" / "standins" / f"{recipe}.Dockerfile").is_file(), base
    check = (REPO / "scripts" / "compose_check.py").read_text()
    assert all(f'"{k}": "{v}"' in check for k, v in recipes.items())


def test_image_requirements_come_from_pyproject() -> None:
    def reqs(*args: str) -> list[str]:
        out = subprocess.run([sys.executable, str(REPO / "docker" / "requirements.py"), *args,
                              "--pyproject", str(REPO / "pyproject.toml")], capture_output=True, text=True, check=True)
        return out.stdout.split()

    cpu = reqs("service", "--ort", "onnxruntime")
    names = {re.split(r"[<>=!~;]", r)[0] for r in cpu}
    assert "onnxruntime" in names and "onnxruntime-gpu" not in names
    assert not names & {"torch", "transformers"}
    assert {"fastapi", "uvicorn", "redis", "tokenizers", "prometheus-client", "numpy"} <= names
    gpu = reqs("service", "--ort", "onnxruntime-gpu")
    assert any(r.startswith("onnxruntime-gpu>=") for r in gpu)
    train = reqs("service", "train", "--skip", "torch")
    assert any(r.startswith("transformers") for r in train) and not any(r.startswith("torch") for r in train)
    bad = subprocess.run([sys.executable, str(REPO / "docker" / "requirements.py"), "nope"], capture_output=True, text=True)
    assert bad.returncode != 0 and "unknown extra" in bad.stderr


def test_dashboard_has_the_panels_and_the_provisioned_datasource() -> None:
    dash = json.loads(DASHBOARD.read_text())
    assert dash["uid"] == "hmpps-rerank"
    ds = yaml.safe_load((REPO / "docker/grafana/provisioning/datasources/prometheus.yml").read_text())["datasources"][0]
    provider = yaml.safe_load((REPO / "docker/grafana/provisioning/dashboards/hmpps.yml").read_text())["providers"][0]
    graf = compose()["services"]["grafana"]
    assert any(v.endswith(":" + provider["options"]["path"] + ":ro") for v in graf["volumes"])
    panels = [p for p in dash["panels"] if p["type"] != "row"]
    assert all(p["datasource"]["uid"] == ds["uid"] for p in panels)
    exprs = " ".join(e for _, e in dashboard_exprs())
    for needed in ("hmpps_rerank_request_seconds_bucket", "hmpps_rerank_stage_seconds_bucket", "hmpps_rerank_requests_total",
                   "hmpps_rerank_fallbacks_total", 'reason="overloaded"', 'type="click"', "hmpps_feedback_efficient_clicks_total",
                   "hmpps_rerank_feature_misses_total", "hmpps_bundle_info", "hmpps_events_total",
                   "hmpps_history_appends_total", "hmpps_bundle_age_seconds",
                   "hmpps_product_upsert_age_seconds"):
        assert needed in exprs, needed
    for q in ("0.5", "0.95", "0.99"):
        assert f"histogram_quantile({q}, sum by (le, arm)" in exprs
    assert len({p["id"] for p in dash["panels"]}) == len(dash["panels"])


# ---------------------------------------------------------------- promtool

def _native_prometheus_yml(tmp: Path, m: NativeMap, prom_port: int) -> Path:
    doc = yaml.safe_load((REPO / "docker/prometheus/prometheus.yml").read_text())
    out = tmp / "prometheus.yml"
    out.write_text(yaml.safe_dump(native_prometheus_config(doc, m, prom_port)))
    return out


def test_promtool_config_rules_and_rule_unit_tests(tmp_path: Path) -> None:
    need_tool("promtool", "Debian's prometheus; make tools installs it as root")
    m = NativeMap(tmp_path, hosts={"reranker": 8000}, paths={"/etc/prometheus/rules": REPO / "docker/prometheus/rules"})
    for args in (["check", "config", str(REPO / "docker/prometheus/prometheus.yml")],
                 ["check", "config", str(_native_prometheus_yml(tmp_path, m, 9090))],
                 ["check", "rules", str(RULES)],
                 ["test", "rules", str(REPO / "docker/prometheus/tests/hmpps_test.yml")]):
        res = subprocess.run(["promtool", *args], capture_output=True, text=True, cwd=REPO)
        assert res.returncode == 0, f"promtool {' '.join(args)}:\n{res.stdout}\n{res.stderr}"
    native = (tmp_path / "prometheus.yml").read_text()
    assert "dns_sd_configs" not in native and "127.0.0.1:8000" in native
    broken = tmp_path / "broken.yml"
    broken.write_text(RULES.read_text().replace("hmpps:latency_p99:5m > 0.010", "hmpps:latency_p99:5m >"))
    assert subprocess.run(["promtool", "check", "rules", str(broken)], capture_output=True).returncode != 0


# ---------------------------------------------------------------- the stack, natively

class Proc:
    def __init__(self, name: str, cmd: list[str], env: dict[str, str], log: Path, cwd: Path = REPO):
        self.name, self.log = name, log
        self.p = subprocess.Popen(cmd, env=env, cwd=cwd, stdout=log.open("w"), stderr=subprocess.STDOUT)

    def tail(self) -> str:
        return f"--- {self.name} ---\n" + self.log.read_text()[-3000:]

    def stop(self) -> None:
        if self.p.poll() is None:
            self.p.terminate()
            try:
                self.p.wait(15)
            except subprocess.TimeoutExpired:
                self.p.kill()


def _wait(ok: Any, what: str, procs: list[Proc], timeout_s: float = 90) -> None:
    end = time.time() + timeout_s
    while time.time() < end:
        for p in procs:
            if p.p.poll() not in (None, 0):
                raise AssertionError(f"{p.name} exited with {p.p.returncode} while waiting for {what}\n{p.tail()}")
        try:
            if ok():
                return
        except (httpx.HTTPError, OSError):
            pass
        time.sleep(0.5)
    raise AssertionError(f"timed out waiting for {what}\n" + "\n".join(p.tail() for p in procs))


def test_compose_commands_run_natively_and_every_dashboard_query_returns_data(bundle_dir: Path, tmp_path: Path) -> None:
    need_tool("prometheus", "Debian's prometheus; make tools installs it as root")
    ports = {"redis": free_port(), "reranker": free_port(), "prometheus": free_port()}
    m = NativeMap(tmp_path, hosts={"redis": ports["redis"], "reranker": ports["reranker"]}, paths={"/app": REPO})
    # an A/B experiment in the bundles volume, passed the way .env does
    arms_env = {"HMPPS_ARMS_FILE": "/bundles/arms.yaml"}
    cfg = compose(**arms_env)
    svc = cfg["services"]
    named: dict[str, Path] = {}
    for name in svc:
        m.mount(svc[name], named)
    bundles = m.paths["/bundles"]
    seeded = Path(m.path(svc["seed"]["environment"]["HMPPS_BUNDLE"]))
    shutil.copytree(bundle_dir, seeded)  # the "mount one" path of the seed job
    (bundles / "arms.yaml").write_text(yaml.safe_dump({"experiment": "native-stack", "salt": "t", "arms": [
        {"name": "student", "weight": 50, "bundle": str(seeded.relative_to(bundles))},
        {"name": "control", "weight": 50, "bundle": "passthrough"}]}))
    env = base_env() | {"PATH": f"{Path(sys.executable).parent}:{base_env()['PATH']}", "HMPPS_CACHE": str(tmp_path / "cache")}
    procs: list[Proc] = []
    try:
        # redis: the compose command, the mounted config with local bind/port/dir
        conf = Path(m.path(svc["redis"]["command"][1]))
        local_conf = tmp_path / "redis.conf"
        local_conf.write_text(native_redis_conf(conf, ports["redis"], m.paths["/data"]))
        assert svc["redis"]["command"][0] == "redis-server"
        procs.append(Proc("redis", [redis_server_binary(), str(local_conf), *svc["redis"]["command"][2:]], env,
                          tmp_path / "redis.log"))
        import redis as redis_py

        rc = redis_py.Redis(port=ports["redis"], password=REDIS_PASSWORD)
        _wait(lambda: rc.ping(), "redis", procs)
        with pytest.raises(redis_py.AuthenticationError):
            redis_py.Redis(port=ports["redis"]).get("hmpps:live")  # no password, no data
        assert rc.config_get("appendonly")["appendonly"] == "yes"
        assert rc.config_get("maxmemory-policy")["maxmemory-policy"] == "noeviction"

        # seed: one-shot, must exit 0 (service_completed_successfully)
        seed = subprocess.run(m.command(svc["seed"]["command"]), env=env | m.environment(svc["seed"]["environment"]),
                              cwd=REPO, capture_output=True, text=True, timeout=300)
        assert seed.returncode == 0, seed.stdout + seed.stderr
        assert "published" in seed.stdout and rc.get("hmpps:live") is not None

        # reranker: the compose command, listening where the port map points
        cmd = m.command(svc["reranker"]["command"])
        cmd[cmd.index("--host") + 1], cmd[cmd.index("--port") + 1] = "127.0.0.1", str(ports["reranker"])
        cmd[0] = sys.executable if cmd[0] == "python" else cmd[0]
        procs.append(Proc("reranker", cmd, env | m.environment(svc["reranker"]["environment"]), tmp_path / "reranker.log"))
        base = f"http://127.0.0.1:{ports['reranker']}"
        _wait(lambda: httpx.get(base + "/readyz").status_code == 200, "reranker /readyz", procs)
        # the compose healthcheck command itself, pointed at the mapped port
        hc = [sys.executable if a == "python" else a for a in svc["reranker"]["healthcheck"]["test"][1:]]
        hc = [a.replace("127.0.0.1:8000", f"127.0.0.1:{ports['reranker']}") for a in hc]
        assert subprocess.run(hc, capture_output=True).returncode == 0
        assert {a["name"] for a in httpx.get(base + "/info").json()["arms"]} == {"student", "control"}

        # prometheus: the compose flags with mapped paths; DNS discovery becomes a static target
        prom_yml = _native_prometheus_yml(tmp_path, NativeMap(tmp_path, hosts={"reranker": ports["reranker"]},
                                                              paths={"/etc/prometheus/rules": REPO / "docker/prometheus/rules"}),
                                          ports["prometheus"])
        m.paths["/etc/prometheus/prometheus.yml"] = prom_yml
        flags = m.command(svc["prometheus"]["command"])
        procs.append(Proc("prometheus", ["prometheus", *flags, f"--web.listen-address=127.0.0.1:{ports['prometheus']}"],
                          env, tmp_path / "prometheus.log"))
        prom = f"http://127.0.0.1:{ports['prometheus']}"
        _wait(lambda: httpx.get(prom + "/-/ready").status_code == 200, "prometheus ready", procs)

        counts = traffic(base, seeded, 25.0)
        assert counts["rerank"] > 200

        query = Prometheus(prom).query
        assert {t["labels"]["job"]: t["health"] for t in Prometheus(prom).targets("hmpps-reranker")} == {"hmpps-reranker": "up"}
        _wait(lambda: query("hmpps:srm_chi2:1h"), "recording rules", procs, 30)
        assert not Prometheus(prom).unhealthy_rules()
        empty = Prometheus(prom).dashboard_gaps()
        assert not empty, "dashboard queries without data:\n" + "\n".join(empty)
        latency = next(e for t, e in dashboard_exprs() if t.startswith("Latency per arm"))
        assert {s["metric"]["arm"] for s in query(latency)} == {"student", "control"}
    finally:
        for p in reversed(procs):
            p.stop()
