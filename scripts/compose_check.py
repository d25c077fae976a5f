"""``make compose-check``: the real Dockerfile and the real compose file, on a real Docker engine.

Steps (each one a row of the summary; exit 1 if any check fails):

1. Engine: Debian's ``docker.io``, ``docker-compose`` (v1) and ``debootstrap`` installed with
   apt when missing and running as root; ``dockerd`` started when none answers (and stopped
   at the end). Debian's ``/usr/bin/docker`` is preferred: it matches Debian's daemon.
2. Base images: for each image the Dockerfile or compose file names that is not on the
   engine and cannot be pulled, a local stand-in built from Debian's packages
   (``docker/standins/``) and tagged with that name, so both files are used unchanged. A real
   image of that name, when present, is used instead and never overwritten. An image with no
   stand-in (Grafana) is named as not run.
3. The project's images, built with BuildKit from the real Dockerfile (the CA bundle, when
   given, as the ``pip_ca`` build secret), and the GPU target as far as it builds without a
   CUDA base image.
4. ``docker-compose up`` with the real compose file (an env file sets only the required
   password and free host ports), then the checks listed in ``CHECKS``; ``down -v`` at the end.

A Markdown and JSON report go to ``runs/compose-check/``.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import io
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import httpx
import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from contract import keys  # noqa: E402
from loadtest.mix import RequestMix  # noqa: E402
from loadtest.stackcheck import Prometheus, traffic  # noqa: E402

PROJECT = "hmpps-rerank-check"  # never the user's own stack: down -v removes this project's volumes only
STANDIN_BASE = "hmpps-standin/debian:bookworm"
STANDIN_LABEL = "org.hmpps.standin"
STANDINS = REPO / "docker" / "standins"
STANDIN_FOR = {"python": "python", "redis": "redis", "prom/prometheus": "prometheus"}  # image repository -> recipe
TORCH_WHEEL = re.compile(r"torch-2\.13\.0\+cpu-cp311-cp311-.*\.whl$")
OUT = REPO / "runs" / "compose-check"


# ---------------------------------------------------------------- report

@dataclass
class Row:
    step: str
    status: str  # PASS, FAIL, NOT RUN, INFO
    detail: str
    seconds: float = 0.0


@dataclass
class Report:
    rows: list[Row] = field(default_factory=list)
    sizes: dict[str, str] = field(default_factory=dict)
    started: float = field(default_factory=time.time)

    def add(self, step: str, status: str, detail: str, seconds: float = 0.0) -> None:
        self.rows.append(Row(step, status, detail, round(seconds, 1)))
        say(f"{status:8s} {step}: {detail}" + (f" ({seconds:.0f} s)" if seconds >= 1 else ""))

    @property
    def failed(self) -> bool:
        return any(r.status == "FAIL" for r in self.rows)

    def markdown(self) -> str:
        lines = ["# make compose-check", "",
                 f"Wall time {time.time() - self.started:.0f} s; {'FAILED' if self.failed else 'passed'}.", "",
                 "| step | result | detail | s |", "|---|---|---|---:|"]
        lines += [f"| {r.step} | {r.status} | {r.detail.replace('|', '/')} | {r.seconds:.0f} |" for r in self.rows]
        if self.sizes:
            lines += ["", "| image | size |", "|---|---:|"] + [f"| {k} | {v} |" for k, v in self.sizes.items()]
        return "\n".join(lines) + "\n"

    def write(self) -> None:
        OUT.mkdir(parents=True, exist_ok=True)
        for name, text in (("report.md", self.markdown()),
                           ("report.json", json.dumps({"rows": [asdict(r) for r in self.rows], "sizes": self.sizes,
                                                       "wall_s": round(time.time() - self.started, 1),
                                                       "failed": self.failed}, indent=2))):
            tmp = OUT / f".{name}.tmp"
            tmp.write_text(text)
            tmp.replace(OUT / name)


def say(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


class CheckFailed(Exception):
    pass


def wait_for(ok: Callable[[], Any], what: str, timeout_s: float, every_s: float = 1.0) -> Any:
    end, last = time.time() + timeout_s, None
    while time.time() < end:
        try:
            got = ok()
            if got:
                return got
        except Exception as e:  # noqa: BLE001 - retried until the deadline, then reported
            last = e
        time.sleep(every_s)
    raise CheckFailed(f"timed out after {timeout_s:.0f} s waiting for {what}" + (f" (last error: {last})" if last else ""))


# ---------------------------------------------------------------- engine

def run(cmd: list[str], *, check: bool = True, timeout: float | None = None, log: Path | None = None,
        env: dict[str, str] | None = None, stdin: bytes | None = None) -> subprocess.CompletedProcess[bytes]:
    if log is not None:
        with log.open("ab") as f:
            f.write(f"\n$ {' '.join(cmd)}\n".encode())
            res = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, timeout=timeout, env=env, input=stdin)
        if check and res.returncode:
            tail = log.read_text(errors="replace")[-4000:]
            raise CheckFailed(f"{' '.join(cmd[:4])} ... exited {res.returncode}; log {log}:\n{tail}")
        return res
    res = subprocess.run(cmd, capture_output=True, timeout=timeout, env=env, input=stdin)
    if check and res.returncode:
        raise CheckFailed(f"{' '.join(cmd)} exited {res.returncode}: {res.stderr.decode(errors='replace')[-2000:]}")
    return res


class Engine:
    """The Docker client, compose and (when this check started it) the daemon."""

    def __init__(self, data_root: Path, logs: Path):
        self.logs = logs
        self.data_root = data_root
        self.daemon: subprocess.Popen[bytes] | None = None
        self.docker = ""
        self.compose: list[str] = []

    def ensure(self, report: Report) -> None:
        t = time.time()
        missing = [tool for tool, path in (("docker.io", "/usr/bin/docker"), ("docker-compose", "docker-compose"),
                                           ("debootstrap", "debootstrap")) if not shutil.which(path)]
        if missing:
            if os.geteuid() != 0:
                raise CheckFailed(f"missing {', '.join(missing)}: run as root (it installs them with apt) "
                                  "or install them yourself")
            say(f"installing {' '.join(missing)} with apt")
            env = os.environ | {"DEBIAN_FRONTEND": "noninteractive"}
            run(["apt-get", "update", "-q"], log=self.logs / "apt.log", env=env)
            run(["apt-get", "install", "-y", "-q", *missing], log=self.logs / "apt.log", env=env)
        # Debian's client matches Debian's daemon; a newer client on the PATH may lack buildx/compose
        self.docker = "/usr/bin/docker" if os.path.exists("/usr/bin/docker") else shutil.which("docker") or "docker"
        if shutil.which("docker-compose"):
            self.compose = ["docker-compose"]
        else:
            self.compose = [self.docker, "compose"]
        if run([self.docker, "info"], check=False, timeout=20).returncode != 0:
            if os.geteuid() != 0 or not shutil.which("dockerd"):
                raise CheckFailed("no Docker engine answers and this check cannot start one (needs root and dockerd)")
            self.data_root.mkdir(parents=True, exist_ok=True)
            say(f"starting dockerd (data root {self.data_root})")
            self.daemon = subprocess.Popen(["dockerd", "--data-root", str(self.data_root)],
                                           stdout=(self.logs / "dockerd.log").open("wb"), stderr=subprocess.STDOUT)
            wait_for(lambda: run([self.docker, "info"], check=False, timeout=10).returncode == 0, "dockerd", 60)
        version = run([self.docker, "version", "--format", "{{.Server.Version}}"]).stdout.decode().strip()
        cv = run([*self.compose, "version", "--short"], check=False).stdout.decode().strip()
        report.add("engine", "INFO", f"dockerd {version}{' (started by this check)' if self.daemon else ''}, "
                   f"client {self.docker}, compose {' '.join(self.compose)} {cv}", time.time() - t)

    def stop(self) -> None:
        if self.daemon is not None and self.daemon.poll() is None:
            say("stopping the dockerd this check started")
            self.daemon.send_signal(signal.SIGTERM)
            try:
                self.daemon.wait(60)
            except subprocess.TimeoutExpired:
                self.daemon.kill()

    def d(self, *args: str, **kw: Any) -> subprocess.CompletedProcess[bytes]:
        return run([self.docker, *args], **kw)

    def out(self, *args: str) -> str:
        return self.d(*args).stdout.decode().strip()

    def has_image(self, name: str) -> bool:
        return self.d("image", "inspect", name, check=False).returncode == 0

    def label(self, name: str, label: str) -> str | None:
        got = self.out("image", "inspect", "--format", f'{{{{index .Config.Labels "{label}"}}}}', name)
        return None if got in ("", "<no value>") else got

    def size(self, name: str) -> str:
        return f"{int(self.out('image', 'inspect', '--format', '{{.Size}}', name)) / 1e6:.0f} MB"


# ---------------------------------------------------------------- base images and stand-ins

def named_base_images(compose_config: dict[str, Any]) -> dict[str, str]:
    """Image name -> who names it: the Dockerfile's PYTHON_IMAGE default and every compose image we do not build."""
    names: dict[str, str] = {}
    m = re.search(r"^ARG PYTHON_IMAGE=(\S+)", (REPO / "Dockerfile").read_text(), re.M)
    if m:
        names[m[1]] = "Dockerfile (PYTHON_IMAGE)"
    for svc, spec in compose_config["services"].items():
        if "build" not in spec and spec.get("image"):
            names[spec["image"]] = f"compose ({svc})"
    return names


def recipe_hash(recipe: str) -> str:
    return hashlib.sha256((STANDINS / f"{recipe}.Dockerfile").read_bytes()).hexdigest()[:16]


def ensure_standin_base(engine: Engine, report: Report) -> None:
    if engine.has_image(STANDIN_BASE):
        return
    t = time.time()
    with tempfile.TemporaryDirectory(prefix="hmpps-debootstrap-") as tmp:
        rootfs = Path(tmp) / "rootfs"
        mirror = debian_mirror()
        say(f"debootstrap --variant=minbase bookworm from {mirror}")
        run(["debootstrap", "--variant=minbase", "bookworm", str(rootfs), mirror], log=engine.logs / "debootstrap.log",
            timeout=1800)
        tar = subprocess.Popen(["tar", "-C", str(rootfs), "-c", "."], stdout=subprocess.PIPE)
        imp = subprocess.run([engine.docker, "import", "-", STANDIN_BASE], stdin=tar.stdout, capture_output=True)
        tar.wait()
        if imp.returncode or tar.returncode:
            raise CheckFailed(f"docker import of the debootstrap root failed: {imp.stderr.decode()[-500:]}")
    report.add(f"stand-in {STANDIN_BASE}", "INFO", "built with debootstrap (minbase bookworm)", time.time() - t)


def debian_mirror() -> str:
    """The Debian mirror apt is configured with (deb822 or one-line sources), else deb.debian.org."""
    for f in sorted(Path("/etc/apt").glob("sources.list.d/*.sources")) + [Path("/etc/apt/sources.list")]:
        with contextlib.suppress(OSError):
            text = f.read_text()
            m = re.search(r"^URIs:\s*(\S+/debian)\s*$", text, re.M) or re.search(r"^deb\s+(\S+/debian)\s+bookworm", text, re.M)
            if m:
                return m[1]
    return "http://deb.debian.org/debian"


def ensure_standins(engine: Engine, compose_config: dict[str, Any], report: Report) -> list[str]:
    """Build what is missing; return the images that have neither a local copy nor a stand-in."""
    unavailable = []
    for image, named_by in named_base_images(compose_config).items():
        repo = image.rsplit(":", 1)[0]
        recipe = STANDIN_FOR.get(repo)
        if engine.has_image(image):
            have = engine.label(image, STANDIN_LABEL)
            if have is None:
                report.add(f"base {image}", "INFO", f"the image itself is on the engine ({named_by})")
                continue
            if recipe and have == recipe_hash(recipe):
                report.add(f"base {image}", "INFO", f"cached stand-in ({named_by})")
                continue
        if recipe is None:
            unavailable.append(image)
            report.add(f"base {image}", "NOT RUN",
                       f"not on the engine, no registry reachable and no Debian package to build a stand-in ({named_by})")
            continue
        ensure_standin_base(engine, report)
        t = time.time()
        engine.d("build", "-f", str(STANDINS / f"{recipe}.Dockerfile"), "--build-arg", f"STANDIN_BASE={STANDIN_BASE}",
                 "--label", f"{STANDIN_LABEL}={recipe_hash(recipe)}", "-t", image, str(STANDINS),
                 log=engine.logs / f"standin-{recipe}.log", env=os.environ | {"DOCKER_BUILDKIT": "1"}, timeout=1800)
        report.add(f"base {image}", "INFO", f"stand-in built from Debian packages (docker/standins/{recipe}.Dockerfile)",
                   time.time() - t)
    return unavailable


# ---------------------------------------------------------------- project images

def find_torch_wheel() -> Path | None:
    """The CPU torch wheel in docker/wheels, or in pip's configured find-links (linked there)."""
    wheels = REPO / "docker" / "wheels"
    for w in wheels.glob("*.whl"):
        if TORCH_WHEEL.match(w.name):
            return w
    dirs = os.environ.get("PIP_FIND_LINKS", "").split()
    cfg = subprocess.run([sys.executable, "-m", "pip", "config", "list"], capture_output=True, text=True).stdout
    dirs += [d for line in cfg.splitlines() if "find-links" in line for d in line.split("=", 1)[1].strip("'\" ").split()]
    for d in dict.fromkeys(dirs):
        with contextlib.suppress(OSError):
            for w in Path(d.removeprefix("file://")).glob("torch-2.13.0*.whl"):
                if TORCH_WHEEL.match(w.name):
                    target = wheels / w.name
                    try:
                        os.link(w, target)
                    except OSError:
                        shutil.copy2(w, target)
                    return target
    return None


def build(engine: Engine, target: str, tag: str, ca: Path | None, report: Report, args: dict[str, str] | None = None,
          step: str | None = None) -> bool:
    cmd = ["build", "--target", target, "-t", tag]
    for k, v in (args or {}).items():
        cmd += ["--build-arg", f"{k}={v}"]
    if ca is not None:
        cmd += ["--secret", f"id=pip_ca,src={ca}"]
    t = time.time()
    log = engine.logs / f"build-{tag.replace(':', '-').replace('/', '-')}.log"
    log.unlink(missing_ok=True)
    try:
        engine.d(*cmd, "--progress", "plain", str(REPO), log=log, env=os.environ | {"DOCKER_BUILDKIT": "1"}, timeout=3600)
    except CheckFailed:
        errors = [ln for ln in log.read_text(errors="replace").splitlines() if "ERROR" in ln]
        report.add(step or f"build {tag}", "FAIL", (errors[0] if errors else "docker build failed")[:400]
                   + f" (log {log.relative_to(REPO)})", time.time() - t)
        return False
    report.add(step or f"build {tag}", "PASS", f"target {target}" + (", CA bundle as build secret" if ca else ""),
               time.time() - t)
    report.sizes[tag] = engine.size(tag)
    return True


# ---------------------------------------------------------------- the stack

def free_block(n: int, start: int) -> int:
    for base in range(start, 60000, n):
        socks = []
        try:
            for p in range(base, base + n):
                s = socket.socket()
                socks.append(s)
                s.bind(("0.0.0.0", p))
            return base
        except OSError:
            continue
        finally:
            for s in socks:
                s.close()
    raise CheckFailed("no free block of host ports")


class Stack:
    def __init__(self, engine: Engine, env_file: Path, services: list[str]):
        self.engine = engine
        self.env_file = env_file
        self.services = services
        self.base = [*engine.compose, "-p", PROJECT, "--env-file", str(env_file), "-f", str(REPO / "docker-compose.yml")]

    def c(self, *args: str, **kw: Any) -> subprocess.CompletedProcess[bytes]:
        kw.setdefault("log", self.engine.logs / "compose.log")
        return run([*self.base, *args], **kw)

    def config(self) -> dict[str, Any]:
        return yaml.safe_load(run([*self.base, "config"]).stdout)  # type: ignore[no-any-return]

    def ids(self, service: str) -> list[str]:
        return run([*self.base, "ps", "-q", service]).stdout.decode().split()

    def inspect(self, cid: str) -> dict[str, Any]:
        return json.loads(self.engine.out("inspect", cid))[0]  # type: ignore[no-any-return]

    def health(self, cid: str) -> str:
        state = self.inspect(cid)["State"]
        return str(state.get("Health", {}).get("Status", state["Status"]))

    def port(self, cid: str, container_port: int = 8000) -> int:
        ports = self.inspect(cid)["NetworkSettings"]["Ports"][f"{container_port}/tcp"]
        return int(ports[0]["HostPort"])

    def redis(self, *args: str) -> str:
        return run([*self.base, "exec", "-T", "redis", "redis-cli", "--raw", *args]).stdout.decode().strip()

    def logs_tail(self, service: str) -> str:
        return run([*self.base, "logs", "--no-color", "--tail", "60", service], check=False).stdout.decode(errors="replace")

    def volume(self, name: str) -> str:
        return f"{PROJECT}_{name}"


REDIS_PASSWORD = os.urandom(12).hex()


def write_env_file(path: Path, reranker_ports: int, prometheus_port: int) -> None:
    """.env.example with only what must change: the required passwords and free host ports."""
    lines = [ln for ln in (REPO / ".env.example").read_text().splitlines()
             if not ln.startswith(("GRAFANA_ADMIN_PASSWORD=", "REDIS_PASSWORD=", "RERANKER_PORTS=", "PROMETHEUS_PORT=",
                                   "GRAFANA_PORT="))]
    lines += ["GRAFANA_ADMIN_PASSWORD=" + os.urandom(12).hex(), "REDIS_PASSWORD=" + REDIS_PASSWORD,
              f"RERANKER_PORTS={reranker_ports}-{reranker_ports + 9}",
              f"PROMETHEUS_PORT={prometheus_port}", f"GRAFANA_PORT={prometheus_port + 1}"]
    path.write_text("\n".join(lines) + "\n")


def fetch_bundle(stack: Stack, image: str, bundle_in_volume: str, dest: Path) -> Path:
    """Copy the seeded bundle out of the bundles volume (the load mix reads its users and queries)."""
    parent, name = os.path.split(bundle_in_volume.rstrip("/"))
    res = stack.engine.d("run", "--rm", "-v", f"{stack.volume('bundles')}:/bundles:ro", "--entrypoint", "tar",
                         image, "-C", parent, "-c", name)
    with tarfile.open(fileobj=io.BytesIO(res.stdout)) as tar:
        tar.extractall(dest, filter="data")
    return dest / name


def step(report: Report, name: str) -> Callable[[Callable[[], str]], None]:
    """Run one check, recording PASS with its detail or FAIL with the reason (the run goes on)."""
    def runner(fn: Callable[[], str]) -> None:
        t = time.time()
        try:
            report.add(name, "PASS", fn(), time.time() - t)
        except (CheckFailed, AssertionError, httpx.HTTPError, subprocess.SubprocessError, KeyError, ValueError) as e:
            report.add(name, "FAIL", f"{type(e).__name__}: {e}"[:1500], time.time() - t)
    return runner


def stack_checks(stack: Stack, report: Report, tmp: Path) -> None:
    cfg = stack.config()
    bundle_path = cfg["services"]["reranker"]["environment"]["HMPPS_BUNDLE"]
    t = time.time()
    try:
        stack.c("up", "-d", *stack.services, timeout=1800)
        rid = wait_for(lambda: [c for c in stack.ids("reranker") if stack.health(c) == "healthy"], "a healthy reranker", 300)[0]
    except CheckFailed as e:
        report.add("compose up", "FAIL", str(e).splitlines()[0])
        for svc in ("seed", "reranker"):
            say(stack.logs_tail(svc))
        return
    seed_id = stack.ids("seed")[0]
    seed_exit = stack.inspect(seed_id)["State"]["ExitCode"]
    report.add("compose up", "PASS" if seed_exit == 0 else "FAIL",
               f"{', '.join(stack.services)} up; seed exited {seed_exit}; reranker healthy", time.time() - t)
    bundle = fetch_bundle(stack, cfg["services"]["seed"]["image"], bundle_path, tmp)
    manifest = json.loads((bundle / "manifest.json").read_text())
    version = manifest["version"]
    base = f"http://127.0.0.1:{stack.port(rid)}"

    mix = RequestMix(bundle, 10, seed=11)

    @step(report, "rerank through the published port")
    def _() -> str:
        moved = 0
        for _ in range(20):
            body = mix.body()
            r = httpx.post(base + "/rerank", json=body, timeout=5)
            assert r.status_code == 200, r.text
            out = r.json()
            assert out["fallback"] is None, out["fallback"]
            assert out["model_version"] == version, (out["model_version"], version)
            ids = [c["product_id"] for c in body["candidates"]]
            got = [x["product_id"] for x in out["results"]]
            assert sorted(got) == sorted(ids) and all(x["score"] is not None for x in out["results"])
            moved += got != ids
        assert moved > 0, "no response changed the caller's order"
        return f"20 requests, bundle {version}, no fallback, {moved}/20 reordered (port {base.rsplit(':', 1)[1]})"

    @step(report, "feedback reaches Redis; persistence across a redis restart")
    def _() -> str:
        before = int(stack.redis("XLEN", keys.FEEDBACK_STREAM) or 0)
        counts = traffic(base, bundle, 6.0, seed=5)
        after = int(stack.redis("XLEN", keys.FEEDBACK_STREAM))
        assert after - before == counts["feedback"], (before, after, counts)
        live = stack.redis("GET", keys.ALIAS)
        pid = json.loads((bundle / "features" / "index.json").read_text())["products"][0]
        feature = keys.product(version, pid)
        assert live and stack.redis("EXISTS", feature) == "1", (live, feature)
        stack.c("restart", "redis", timeout=120)
        wait_for(lambda: stack.redis("PING") == "PONG", "redis after restart", 60)
        kept = (stack.redis("GET", keys.ALIAS), stack.redis("EXISTS", feature), int(stack.redis("XLEN", keys.FEEDBACK_STREAM)))
        assert kept == (live, "1", after), (kept, (live, "1", after))
        wait_for(lambda: httpx.get(base + "/readyz", timeout=2).status_code == 200, "reranker ready again", 60)
        assert httpx.post(base + "/rerank", json=mix.body(), timeout=5).json()["fallback"] is None
        return (f"{counts['feedback']} feedback events -> XLEN {before}->{after}; after restart: live alias {live}, "
                f"features and {after} stream entries kept; reranker ready again")

    prom = Prometheus(f"http://127.0.0.1:{stack.port(stack.ids('prometheus')[0], 9090)}")

    @step(report, "Prometheus discovers and scrapes through Docker DNS; every dashboard query has data")
    def _() -> str:
        wait_for(lambda: httpx.get(prom.base + "/-/ready", timeout=2).status_code == 200, "prometheus ready", 60)
        traffic(base, bundle, 25.0, seed=7)
        up = wait_for(lambda: [t for t in prom.targets("hmpps-reranker") if t["health"] == "up"], "a scraped replica", 60)
        wait_for(lambda: prom.query("hmpps:srm_chi2:1h"), "recording rules", 60)
        bad = prom.unhealthy_rules()
        assert not bad, bad
        wait_for(lambda: not prom.dashboard_gaps(), "every dashboard query to return data", 60, 5)
        return f"{len(up)} target(s) up via dns_sd ({up[0]['labels']['instance']}); rules healthy; all dashboard queries have data"

    @step(report, "--scale reranker=2: both healthy, scraped and serving")
    def _() -> str:
        stack.c("up", "-d", "--no-deps", "--scale", "reranker=2", "reranker", timeout=300)
        ids = wait_for(lambda: (lambda c: c if len(c) == 2 and all(stack.health(x) == "healthy" for x in c) else None)(
            stack.ids("reranker")), "two healthy replicas", 180, 2)
        for cid in ids:
            traffic(f"http://127.0.0.1:{stack.port(cid)}", bundle, 4.0, seed=9, purchases=False)
        ips = {stack.inspect(c)["NetworkSettings"]["Networks"][f"{PROJECT}_default"]["IPAddress"] for c in ids}
        wait_for(lambda: {t["labels"]["instance"].split(":")[0] for t in prom.targets("hmpps-reranker")
                          if t["health"] == "up"} >= ips, "both replicas scraped", 90, 3)
        served = wait_for(lambda: (lambda r: r if len(r) == 2 and all(float(s["value"][1]) > 0 for s in r) else None)(
            prom.query("sum by (instance) (hmpps_rerank_requests_total)")), "requests counted on both replicas", 90, 3)
        # the raw counters, not increase(): a replica first scraped after its traffic shows no increase
        return "replicas " + ", ".join(f"{s['metric']['instance']}: {float(s['value'][1]):.0f} requests" for s in served)

    @step(report, "one replica killed: the other serves, the restart policy brings it back")
    def _() -> str:
        ids = stack.ids("reranker")
        assert len(ids) == 2, ids
        victim, survivor = ids
        restarts = stack.inspect(victim)["RestartCount"]
        os.kill(stack.inspect(victim)["State"]["Pid"], signal.SIGKILL)  # a crash, not `docker stop`
        url = f"http://127.0.0.1:{stack.port(survivor)}"
        served = traffic(url, bundle, 8.0, seed=13, purchases=False)["rerank"]
        wait_for(lambda: stack.inspect(victim)["RestartCount"] > restarts and stack.health(victim) == "healthy",
                 "the killed replica restarted and healthy", 180, 2)
        return f"survivor served {served} requests, all 200; victim restarted ({restarts}->{stack.inspect(victim)['RestartCount']}) and healthy"

    @step(report, "service image: non-root, no torch, HEALTHCHECK turns healthy")
    def _() -> str:
        image = cfg["services"]["reranker"]["image"]
        user = stack.engine.out("image", "inspect", "--format", "{{.Config.User}}", image)
        probe = stack.engine.out("run", "--rm", "--entrypoint", "python", image, "-c",
                                 "import os, importlib.util as u; print(os.getuid(), u.find_spec('torch') is None, "
                                 "u.find_spec('transformers') is None)")
        assert user and user != "root" and probe.split()[0] != "0" and probe.split()[1:] == ["True", "True"], (user, probe)
        name = f"{PROJECT}-healthcheck"
        stack.engine.d("rm", "-f", name, check=False)
        # the image's own HEALTHCHECK (compose replaces it with the service's), on the stack's network
        stack.engine.d("run", "-d", "--name", name, "--network", f"{PROJECT}_default", "-e", f"REDIS_URL=redis://:{REDIS_PASSWORD}@redis:6379/0",
                       "-e", f"HMPPS_BUNDLE={bundle_path}", "-v", f"{stack.volume('bundles')}:/bundles:ro", image)
        try:
            t = time.time()
            wait_for(lambda: stack.health(name) == "healthy", "the image's HEALTHCHECK", 120, 2)
            took = time.time() - t
        finally:
            stack.engine.d("rm", "-f", name, check=False)
        return f"user {user} (uid {probe.split()[0]}), torch and transformers absent, HEALTHCHECK healthy after {took:.0f} s"


def gpu_target(engine: Engine, ca: Path | None, report: Report) -> None:
    """The GPU image as far as it builds here: no CUDA base image can be pulled, so the Debian stand-in
    takes its place; onnxruntime-gpu installs, and the check says what was left unverified."""
    cuda = re.search(r"^ARG CUDA_IMAGE=(\S+)", (REPO / "Dockerfile").read_text(), re.M)
    cuda_image = cuda[1] if cuda else "the CUDA image"
    base = cuda_image if engine.has_image(cuda_image) else STANDIN_BASE
    tag = "hmpps-rerank:gpu-check"
    if not build(engine, "service", tag, ca, report, {"RUNTIME": "gpu", "CUDA_IMAGE": base},
                 step=f"build GPU target (base {base})"):
        return
    probe = engine.out("run", "--rm", "--entrypoint", "python", tag, "-c",
                       "import onnxruntime as o; print(o.__version__, ','.join(o.get_available_providers()))")
    note = "" if base == cuda_image else (f"; {cuda_image} is not on the engine and cannot be pulled, so the image has no "
                                          "CUDA/cuDNN libraries and no CUDA session was created")
    report.add("GPU target", "INFO", f"onnxruntime-gpu {probe}{note}")


# ---------------------------------------------------------------- main

def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--ca-bundle", type=Path, help="CA bundle pip trusts during the build (default: $PIP_CERT, "
                   "$SSL_CERT_FILE or $REQUESTS_CA_BUNDLE when set)")
    p.add_argument("--data-root", type=Path, default=Path("/var/lib/docker"),
                   help="dockerd --data-root when this check starts the daemon")
    p.add_argument("--skip-gpu", action="store_true", help="do not build the GPU target")
    p.add_argument("--keep", action="store_true", help="leave the stack up (no down -v) for a look around")
    a = p.parse_args()
    ca = a.ca_bundle or next((Path(v) for k in ("PIP_CERT", "SSL_CERT_FILE", "REQUESTS_CA_BUNDLE")
                              if (v := os.environ.get(k)) and Path(v).is_file()), None)
    if ca is not None and not ca.is_file():
        print(f"error: --ca-bundle {ca} is not a file", file=sys.stderr)
        return 2
    OUT.mkdir(parents=True, exist_ok=True)
    logs = OUT / "logs"
    logs.mkdir(exist_ok=True)
    report = Report()
    engine = Engine(a.data_root, logs)
    stack: Stack | None = None
    try:
        engine.ensure(report)
        with tempfile.TemporaryDirectory(prefix="hmpps-compose-check-") as tmp_s:
            tmp = Path(tmp_s)
            env_file = tmp / "check.env"
            ports = free_block(10, 18000)
            write_env_file(env_file, ports, free_block(2, ports + 10))
            probe = Stack(engine, env_file, [])
            cfg = probe.config()
            unavailable = ensure_standins(engine, cfg, report)
            wheel = find_torch_wheel()
            report.add("torch for the training image", "INFO",
                       f"local wheel docker/wheels/{wheel.name} (bind-mounted for the install only)" if wheel
                       else "no local wheel: from TORCH_INDEX_URL")
            ok = all([build(engine, "service", cfg["services"]["reranker"]["image"], ca, report),
                      build(engine, "training", cfg["services"]["seed"]["image"], ca, report)])
            if not a.skip_gpu:
                gpu_target(engine, ca, report)
            if not ok:
                return 1
            skipped = [svc for svc, spec in cfg["services"].items() if spec.get("image") in unavailable]
            for svc in skipped:
                report.add(f"service {svc}", "NOT RUN", f"its image {cfg['services'][svc]['image']} is unavailable here")
            stack = Stack(engine, env_file, [s for s in cfg["services"] if s not in skipped])
            stack_checks(stack, report, tmp)
            if not a.keep:
                t = time.time()
                stack.c("down", "-v", "--remove-orphans", timeout=300)
                left = engine.out("volume", "ls", "-q", "--filter", f"name={PROJECT}_")
                report.add("compose down -v", "PASS" if not left else "FAIL",
                           "containers, network and volumes removed" if not left else f"volumes left: {left}", time.time() - t)
                stack = None
    except CheckFailed as e:
        report.add("compose-check", "FAIL", str(e))
    finally:
        if stack is not None and not a.keep:
            stack.c("down", "-v", "--remove-orphans", check=False, timeout=300)
        engine.stop()
        report.write()
        print()
        print(report.markdown())
        print(f"report: {(OUT / 'report.md').relative_to(REPO)}; logs: {logs.relative_to(REPO)}/")
    return 1 if report.failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
