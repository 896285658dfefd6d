"""The HTML report: self-contained, rendered by a real headless browser (Debian's chromium)."""

from __future__ import annotations

import json
import shutil
import subprocess

import pytest
from toy_rope import buggy_adapter, rope_adapter

from ropeconf.conformance.adapter import FunctionAdapter
from ropeconf.conformance.report import write_html
from ropeconf.conformance.runner import RunConfig, run_adapter

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    pytest.importorskip("matplotlib", reason="matplotlib draws the plots (requirements/test.txt)")
    cfg = RunConfig(dtypes=("float32", "bfloat16"), variants=("default", "linear"), max_examples=4)
    result = {"adapters": [run_adapter(FunctionAdapter(rope_adapter, "toy"), cfg),
                           run_adapter(FunctionAdapter(buggy_adapter, "toy-bf16-positions"), cfg)],
              "config": cfg.to_dict(), "seconds": 1.0, "version": "test"}
    path = tmp_path_factory.mktemp("report") / "report.html"
    write_html(result, str(path))
    return path


def test_report_is_self_contained(report):
    text = report.read_text()
    assert "<table" in text and "toy-bf16-positions" in text
    for needle in ("http://", "https://", "src='//", 'src="//'):
        assert needle not in text  # nothing is fetched at view time
    assert text.count("data:image/png;base64,") >= 3  # error vs position per dtype + per frequency index
    assert "ropeconf replay --adapter toy-bf16-positions" in text


@pytest.mark.skipif(CHROMIUM is None, reason="chromium not installed (scripts/test.sh installs it with apt-get)")
def test_report_renders_in_headless_chromium(report, tmp_path):
    base = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--allow-file-access-from-files",
            f"--user-data-dir={tmp_path / 'profile'}"]
    dom = subprocess.run(base + ["--virtual-time-budget=5000", "--dump-dom", report.as_uri()],
                         capture_output=True, text=True, timeout=120)
    assert dom.returncode == 0, dom.stderr[-2000:]
    assert 'data-images-loaded="true"' in dom.stdout   # every plot decoded with a non-zero size
    assert "<table" in dom.stdout and "DIV" in dom.stdout
    shot = tmp_path / "shot.png"
    r = subprocess.run(base + ["--window-size=1400,1800", f"--screenshot={shot}", report.as_uri()],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and shot.exists() and shot.stat().st_size > 20000, r.stderr[-2000:]
