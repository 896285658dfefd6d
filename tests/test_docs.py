"""Docs match the code: every spec key documented, CLI reference current, the site builds."""

from __future__ import annotations

import dataclasses
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from ropeconf.reference import RopeSpec
from ropeconf.reference.variants import VARIANTS

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"


def test_every_spec_key_is_documented():
    text = (DOCS / "spec.md").read_text()
    for f in dataclasses.fields(RopeSpec):
        assert f"`{f.name}`" in text, f.name


def test_every_variant_record_is_documented():
    text = (DOCS / "variants.md").read_text()
    for name in VARIANTS:
        assert f"`{name}`" in text, name


def test_cli_reference_is_generated_from_help():
    r = subprocess.run([sys.executable, str(ROOT / "scripts" / "gen_cli_docs.py"), "--check"],
                       env={"COLUMNS": "100", "PATH": "/usr/bin:/bin"}, capture_output=True, text=True)
    assert r.returncode == 0, "docs/cli.md is stale: run COLUMNS=100 python scripts/gen_cli_docs.py"


def test_every_findings_page_is_in_the_site_and_every_registry_entry_in_findings():
    from ropeconf.conformance import registry

    nav = (ROOT / "mkdocs.yml").read_text()
    for page in (DOCS / "findings").glob("*.md"):
        assert f"findings/{page.name}" in nav
    summary = (DOCS / "findings.md").read_text()
    for e in registry.load():
        assert e.id in summary, f"{e.id} missing from docs/findings.md"


@pytest.mark.skipif(shutil.which("mkdocs") is None and not Path(sys.executable).with_name("mkdocs").exists(),
                    reason="mkdocs not installed (pip install -r requirements/test.txt)")
def test_docs_site_builds_with_warnings_as_errors(tmp_path):
    mkdocs = shutil.which("mkdocs") or str(Path(sys.executable).with_name("mkdocs"))
    r = subprocess.run([mkdocs, "build", "--strict", "--site-dir", str(tmp_path / "site")], cwd=ROOT,
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr
    assert (tmp_path / "site" / "index.html").exists()


def test_findings_summary_is_generated_from_the_registry():
    r = subprocess.run([sys.executable, str(ROOT / "scripts" / "gen_findings.py"), "--check"], capture_output=True)
    assert r.returncode == 0, "docs/findings.md is stale: run python scripts/gen_findings.py"
