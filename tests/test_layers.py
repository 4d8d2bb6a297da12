"""The layers of the code (setup.cfg's import-linter contracts): kept by the tree, and broken by a bad import."""
from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from core.settings import ROOT

LINT = [sys.executable, "-c", "import sys; from importlinter.cli import lint_imports_command; sys.exit(lint_imports_command())",
        "setup.cfg", "--no-cache"]


def lint(where: Path) -> subprocess.CompletedProcess:
    return subprocess.run(LINT, cwd=where, capture_output=True, text=True, timeout=120,
                          env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(where)})


def test_the_tree_keeps_every_layer_contract():
    done = lint(ROOT)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "0 broken" in done.stdout


@pytest.mark.parametrize(("module", "line", "broken"), [
    ("core/delivery/gateways/sms.py", "from core.reporting import dashboards", "gateways send messages"),
    ("core/issuing/limits.py", "from core.admin import audit", "Faces on top"),
    ("core/reporting/dashboards.py", "import streamlit", "core never imports"),
    ("console_ui/widgets.py", "import api", "never import a face"),
])
def test_a_bad_import_breaks_its_contract(tmp_path, module, line, broken):
    for package in ("core", "console_ui"):
        shutil.copytree(ROOT / package, tmp_path / package, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "setup.cfg", tmp_path / "setup.cfg")
    assert lint(tmp_path).returncode == 0  # the copy is as good as the tree
    with open(tmp_path / module, "a") as f:
        f.write(f"\n{line}\n")
    done = lint(tmp_path)
    assert done.returncode != 0
    assert broken in done.stdout and " 0 broken" not in done.stdout, done.stdout
