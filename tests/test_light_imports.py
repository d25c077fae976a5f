"""The CLI's help and the service's contract must not pull in torch or transformers."""

import subprocess
import sys

HEAVY = ("torch", "transformers", "peft")


def _loaded_after(code: str) -> set[str]:
    probe = code + "\nimport sys\nprint(' '.join(m for m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout
    return set(out.split())


def test_hmpps_help_stays_light():
    mods = _loaded_after("from typer.testing import CliRunner\nfrom hmpps.cli import app\n"
                         "r = CliRunner().invoke(app, ['--help'])\nassert r.exit_code == 0 and 'retrieve' in r.output")
    assert not [m for m in HEAVY if m in mods]


def test_service_contract_never_imports_torch():
    mods = _loaded_after("import service, contract.history")
    assert not [m for m in HEAVY if m in mods]
