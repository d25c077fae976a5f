"""The architecture, checked: the layers' import rules, no import cycles, and a torch-free service.

    contract  <-  service                 (online; inside it api -> core -> infra)
    contract  <-  training  <-  distill   (offline; distill also checks its export with service's runtime)
    all of the above  <-  loadtest  <-  experiments  <-  hmpps (CLI and orchestration)
"""

from __future__ import annotations

import ast
import pkgutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("contract", "service", "training", "distill", "loadtest", "experiments", "hmpps")
ALLOWED = {
    "contract": {"contract"},
    "service": {"contract", "service"},
    "training": {"contract", "training"},
    "distill": {"contract", "service", "training", "distill"},
    "loadtest": {"contract", "service", "training", "distill", "loadtest"},
    # the simulator starts services with loadtest's process helpers
    "experiments": {"contract", "service", "training", "distill", "loadtest", "experiments"},
    "hmpps": set(PACKAGES),
}
HEAVY = ("torch", "transformers", "peft")


def _modules() -> dict[str, Path]:
    found = {}
    for pkg in PACKAGES:
        for path in (REPO / pkg).rglob("*.py"):
            parts = list(path.relative_to(REPO).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            found[".".join(parts)] = path
    return found


def _imports(path: Path, module: str) -> set[str]:
    """Every project module this file imports, at the top or inside a function."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.add(node.module)
            out |= {f"{node.module}.{a.name}" for a in node.names}
    return {m for m in out if m.split(".")[0] in PACKAGES}


def test_each_package_imports_only_its_own_layer_and_below():
    mods = _modules()
    wrong = [f"{m} imports {i}" for m, p in mods.items() for i in _imports(p, m)
             if i.split(".")[0] not in ALLOWED[m.split(".")[0]]]
    assert not wrong, "\n".join(sorted(wrong))


# distill reaches into service only for the bundle runtime, to check an export exactly as the service
# loads it; the rest of what both sides share (product rows, the arms file, names) lives in contract
DISTILL_MAY_USE_FROM_SERVICE = {"service", "service.core.bundle"}


def test_distill_uses_only_the_bundle_runtime_of_service():
    mods = _modules()
    wrong = [f"{m} imports {i}" for m, p in mods.items() if m.split(".")[0] == "distill"
             for i in _imports(p, m) if i.split(".")[0] == "service"
             and i not in DISTILL_MAY_USE_FROM_SERVICE and i.rsplit(".", 1)[0] not in DISTILL_MAY_USE_FROM_SERVICE - {"service"}]
    assert not wrong, "\n".join(sorted(wrong))


# inside service: api -> core -> infra; a room imports only the rooms to its right (and contract)
SERVICE_ROOMS = ("api", "core", "infra")


def test_service_rooms_import_only_rightwards():
    mods = _modules()
    rooms = {m: m.split(".")[1] for m in mods if m.startswith("service.") and m.split(".")[1] in SERVICE_ROOMS}
    assert set(rooms.values()) == set(SERVICE_ROOMS)
    loose = sorted(m for m in mods if m.startswith("service.") and m not in rooms and m != "service.__main__")
    assert not loose, f"service modules outside the three rooms: {loose}"
    wrong = [f"{m} imports {i}" for m, room in rooms.items() for i in _imports(mods[m], m)
             if i.startswith("service.") and i.split(".")[1] in SERVICE_ROOMS
             and SERVICE_ROOMS.index(i.split(".")[1]) < SERVICE_ROOMS.index(room)]
    assert not wrong, "\n".join(sorted(wrong))


def test_no_import_cycles():
    mods = _modules()
    graph = {m: {i for i in _imports(p, m) if i in mods and i != m} for m, p in mods.items()}
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(m: str) -> list[str] | None:
        state[m] = 1
        stack.append(m)
        for n in sorted(graph[m]):
            if state.get(n) == 1:
                return stack[stack.index(n):] + [n]
            if n not in state and (cycle := visit(n)):
                return cycle
        stack.pop()
        state[m] = 2
        return None

    for m in sorted(graph):
        if m not in state and (cycle := visit(m)):
            pytest.fail("import cycle: " + " -> ".join(cycle))


def test_the_layer_rules_can_fail():
    # a rule that held for every module by construction would check nothing
    assert "torch" in (REPO / "distill" / "student.py").read_text()
    assert any(i.startswith("training.") for i in _imports(REPO / "distill" / "run.py", "distill.run"))
    assert "training" not in ALLOWED["service"] and "service" not in ALLOWED["contract"]
    assert "service.core.scoring" in _imports(REPO / "service" / "api" / "handler.py", "service.api.handler")


def _loaded_after(code: str) -> set[str]:
    probe = code + "\nimport sys\nprint(' '.join(m for m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True, cwd=REPO).stdout
    return set(out.split())


def test_every_service_and_contract_module_stays_free_of_torch():
    names = sorted(m.name for pkg in ("contract", "service")
                   for m in pkgutil.walk_packages([str(REPO / pkg)], prefix=f"{pkg}.")
                   if not m.name.endswith("__main__"))  # running it starts the server
    assert {"service.api.app", "service.core.bundle", "service.api.routes.rerank", "contract.spec", "contract.bundle",
            "contract.publish"} <= set(names)
    loaded = _loaded_after("import importlib\n" + "\n".join(f"importlib.import_module({n!r})" for n in names))
    assert set(names) <= loaded
    assert not [m for m in HEAVY if m in loaded]


def test_the_contract_imports_nothing_heavier_than_numpy():
    loaded = _loaded_after("import contract.keys, contract.spec, contract.history, contract.bundle, "
                           "contract.errors, contract.constants, contract.reports")
    heavy = {"onnxruntime", "redis", "fastapi", "pydantic", "tokenizers", *HEAVY}
    assert not heavy & {m.split(".")[0] for m in loaded}


def test_hmpps_help_stays_light():
    mods = _loaded_after("from typer.testing import CliRunner\nfrom hmpps.cli import app\n"
                         "r = CliRunner().invoke(app, ['--help'])\nassert r.exit_code == 0 and 'retrieve' in r.output")
    assert not [m for m in HEAVY if m in mods]
