"""Generic test templates expanded over (adapter x variant x dtype x device) cells.

For each cell, every case source (``sources.SOURCES``: golden cases, hypothesis
property cases, metamorphic checks) produces judged cases; the cell's
classification against the known-divergence registry is applied to all of them
alike, and the cell's outcome is that of its most severe case.
``run_adapter`` runs one adapter in this process; ``run_isolated`` runs each
adapter in its own worker process (its own environment, e.g.
``KERAS_BACKEND``) with a timeout, so that one library's crash or hang is
reported as an error for that library and the run goes on.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

from ropeconf.reference.variants import VARIANTS

from . import registry
from .adapter import Adapter, load_adapter
from .config import RunConfig, parse_only  # noqa: F401  (parse_only: public re-export)
from .outcome import Outcome
from .results import AdapterReport, CaseResult, CellReport
from .sources import SOURCES, Cell, spec_fields


def cells_of(cfg: RunConfig) -> list[tuple[str, str, str]]:
    """(variant, dtype, device) of every cell a run covers, in matrix order."""
    return [(v, dt, dev) for v in (cfg.variants or tuple(VARIANTS)) for dt in cfg.dtypes for dev in cfg.devices]


def _golden_by_variant(cfg: RunConfig) -> dict[str, list[tuple[dict, dict]]]:
    from ropeconf.golden_data import corpus

    by_variant: dict[str, list] = {}
    for case, arrays in corpus.iter_cases(cfg.golden_dir):
        by_variant.setdefault(case["variant"], []).append((case, arrays))
    return by_variant


class Classifier:
    """The known-divergence registry as one adapter's cells see it: the one place cases become known/fixed."""

    def __init__(self, entries: list[registry.Divergence], adapter: str, version: str):
        self.entries, self.adapter, self.version = entries, adapter, version

    def __call__(self, r: CaseResult) -> CaseResult:
        """A diverging or erroring case that an entry matches is *known*."""
        if Outcome.of(r.outcome) in (Outcome.DIVERGES, Outcome.ERROR) and r.spec is not None:
            e = registry.find(self.entries, self.adapter, self.version,
                              spec_fields(r.spec, r.variant, r.dtype, r.device))
            if e:
                r.outcome, r.known_id = Outcome.KNOWN, e.id
        return r

    def close(self, results: list[CaseResult]) -> None:
        """An entry that matches judged cases of this cell but none of them diverges is *fixed*."""
        judged = [r for r in results if Outcome.of(r.outcome) not in (Outcome.UNSUPPORTED, Outcome.UNAVAILABLE)
                  and r.spec is not None]
        for e in self.entries:
            matched = [r for r in judged
                       if e.applies(self.adapter, self.version, spec_fields(r.spec, r.variant, r.dtype, r.device))]
            if matched and not any(Outcome.of(r.outcome) in (Outcome.KNOWN, Outcome.DIVERGES, Outcome.ERROR)
                                   for r in matched):
                for r in matched:
                    r.outcome, r.known_id = Outcome.FIXED, e.id
                    r.message = f"known divergence {e.id} no longer reproduces: remove it from {e.source}"


def run_adapter(adapter: Adapter | str, cfg: RunConfig, progress: Callable[[str], None] | None = None
                ) -> dict[str, Any]:
    """Run every cell for one adapter in this process; returns its JSON-ready report."""
    t0 = time.time()
    if isinstance(adapter, str):
        adapter = load_adapter(adapter)
    why = adapter.availability()
    if why:
        rep = AdapterReport.not_run(adapter.name, cells_of(cfg), Outcome.UNAVAILABLE, why, adapter.distribution,
                                    adapter.version())
        rep.seconds = time.time() - t0
        return rep.to_dict()
    report = AdapterReport(adapter.name, adapter.distribution, adapter.version())
    classify = Classifier(registry.load([Path(p) for p in cfg.known_files] if cfg.known_files else None),
                          adapter.name, report.version)
    golden = _golden_by_variant(cfg) if "golden" not in cfg.skip else {}
    sources = [s for s in SOURCES.values() if s.group not in cfg.skip]
    todo = cells_of(cfg)
    for done, (vname, dt, dev) in enumerate(todo, 1):
        missing = adapter.device_unavailable(dev)
        if missing:
            report.cells.append(CellReport.uniform(vname, dt, dev, Outcome.UNAVAILABLE, missing))
            continue
        cell = Cell(adapter, VARIANTS[vname], dt, dev, cfg, classify, golden.get(vname, []))
        results: list[CaseResult] = []
        for source in sources:
            results += source.cases(cell)
        classify.close(results)
        report.cells.append(CellReport.summarize(vname, dt, dev, results))
        report.cases += [_slim(r) for r in results if Outcome.of(r.outcome) is not Outcome.UNSUPPORTED]
        if progress:
            progress(f"{adapter.name}: {done}/{len(todo)} cells")
    report.seconds = time.time() - t0
    return report.to_dict()


def _slim(r: CaseResult) -> dict[str, Any]:
    d = r.to_dict()
    if d["outcome"] == Outcome.CONFORMS.value and d["source"] == "golden":
        d.pop("positions", None)
    return d


# ----------------------------------------------------------------------------- isolation
def run_isolated(names: list[str], cfg: RunConfig, jobs: int = 2,
                 progress: Callable[[str], None] | None = None) -> list[dict[str, Any]]:
    """Run each adapter in its own worker process; a crash or a hang becomes that adapter's error."""
    workdir = Path(tempfile.mkdtemp(prefix="ropeconf-run-"))
    pending = list(names)
    running: dict[str, tuple[subprocess.Popen, float, Path, Path]] = {}
    reports: dict[str, dict[str, Any]] = {}
    while pending or running:
        while pending and len(running) < max(1, jobs):
            name = pending.pop(0)
            out, prog = workdir / f"{_safe(name)}.json", workdir / f"{_safe(name)}.progress"
            env = dict(os.environ)
            env.update(adapter_env(name))
            env.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
            cmd = [sys.executable, "-m", "ropeconf.conformance.worker", "--adapter", name,
                   "--config", json.dumps(cfg.to_dict()), "--out", str(out), "--progress", str(prog)]
            err = open(workdir / f"{_safe(name)}.stderr", "w")
            proc = subprocess.Popen(cmd, env=env, stdout=err, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
            running[name] = (proc, time.time(), out, prog)
        time.sleep(0.2)
        for name, (proc, t0, out, prog) in list(running.items()):
            rc = proc.poll()
            if rc is None and time.time() - t0 > cfg.timeout:
                proc.kill()
                proc.wait()
                rc = "timeout"
            if rc is None:
                if progress and prog.exists():
                    progress(prog.read_text().strip())
                continue
            del running[name]
            if rc == 0 and out.exists():
                reports[name] = json.loads(out.read_text())
            else:
                tail = (workdir / f"{_safe(name)}.stderr").read_text()[-2000:]
                why = f"worker timed out after {cfg.timeout:.0f} s" if rc == "timeout" else f"worker exited with {rc}"
                reports[name] = AdapterReport.not_run(name, cells_of(cfg), Outcome.ERROR,
                                                      f"{why}: {tail.strip()[-800:]}").to_dict()
            if progress:
                c = reports[name].get("seconds")
                progress(f"{name}: finished" + (f" in {c:.1f} s" if c else ""))
    return [reports[n] for n in names]


def _safe(name: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in name)


def adapter_env(name: str) -> dict[str, str]:
    """The worker environment a built-in adapter declares (read without importing its library)."""
    try:
        from ropeconf.adapters import BUILTIN

        if name in BUILTIN:
            mod, _, attr = BUILTIN[name].partition(":")
            import importlib

            return dict(getattr(getattr(importlib.import_module(mod), attr), "env", {}) or {})
    except Exception:
        pass
    return {}
