"""The copy-paste CI recipe (docs/ci-recipe.sh) against a toy third-party package built here."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
RECIPE = ROOT / "docs" / "ci-recipe.sh"


@pytest.fixture(scope="module")
def toy_project(tmp_path_factory):
    d = tmp_path_factory.mktemp("toyproj")
    shutil.copytree(ROOT / "tests" / "toy_pkg", d / "toy", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    return d / "toy"


def _run(project: Path, adapter: str, venv: Path):
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env.update(ROPECONF_ADAPTER=adapter, ROPECONF_SPEC=str(ROOT), ROPECONF_DTYPES="float32,bfloat16",
               ROPECONF_VENV=str(venv), ROPECONF_OUT=str(project / "report"),
               # reuse the interpreter's packages so the test does not download numpy & co. again
               ROPECONF_VENV_ARGS="--system-site-packages",
               PATH=os.path.dirname(sys.executable) + os.pathsep + env.get("PATH", ""))
    return subprocess.run(["bash", str(RECIPE)], cwd=project, env=env, capture_output=True, text=True, timeout=1200)


def test_recipe_gates_on_the_exit_code(toy_project, tmp_path):
    venv = tmp_path / "venv"
    ok = _run(toy_project, "toy", venv)  # the entry point the toy package registers
    assert ok.returncode == 0, ok.stdout + ok.stderr
    report = toy_project / "report" / "report.html"
    assert report.exists() and "<table" in report.read_text()
    assert (toy_project / "report" / "results.json").exists()
    bad = _run(toy_project, "toy_rope:buggy_adapter", venv)
    assert bad.returncode == 1, bad.stdout + bad.stderr
    assert "DIV" in bad.stdout
