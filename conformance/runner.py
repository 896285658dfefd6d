"""Generic test templates expanded over (adapter x variant x dtype x device) cells.

For each cell: every golden case of the variant, hypothesis property cases
drawn within the adapter's declared capabilities, and metamorphic checks that
need no reference output.  ``run_adapter`` runs one adapter in this process;
``run_isolated`` runs each adapter in its own worker process (its own
environment, e.g. ``KERAS_BACKEND``) with a timeout, so that one library's
crash or hang is reported as an error for that library and the run goes on.
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

from ropeconf.reference import RopeSpec, apply
from ropeconf.reference.variants import VARIANTS, Variant

from . import registry
from .adapter import Adapter, load_adapter
from .judge import FAILING, CaseResult, angle_terms, judge, make_input, precision_for, run_adapter_call
from .strategies import PROFILES, property_case
from .tolerance import bound

SEVERITY = ("diverges", "error", "fixed", "known", "conforms", "unsupported", "unavailable")


@dataclasses.dataclass
class RunConfig:
    dtypes: tuple[str, ...] = ("float32", "bfloat16")
    devices: tuple[str, ...] = ("cpu",)
    profile: str = "ci"
    max_examples: int | None = None
    seed: int | None = None
    database: str | None = None
    golden_dir: str | None = None
    golden: bool = True
    properties: bool = True
    metamorphic: bool = True
    only: dict[str, list[str]] = dataclasses.field(default_factory=dict)
    variants: tuple[str, ...] | None = None
    known_files: tuple[str, ...] | None = None

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def parse_only(text: str | None) -> dict[str, list[str]]:
    """``rope_type=default,layout=half`` -> {"rope_type": ["default"], "layout": ["half"]}.

    Repeated keys accumulate (``layout=half,layout=interleaved``); ``|`` also
    separates values (``dtype=float32|bfloat16``).
    """
    out: dict[str, list[str]] = {}
    if not text:
        return out
    for item in text.split(","):
        if not item.strip():
            continue
        key, sep, val = item.partition("=")
        if not sep or not key.strip() or not val.strip():
            raise ValueError(f"--only expects key=value[,key=value...], got {item!r}")
        out.setdefault(key.strip(), []).extend(v.strip() for v in val.split("|"))
    return out


def _only_ok(only: dict[str, list[str]], fields: dict[str, Any]) -> bool:
    for key, vals in only.items():
        if key in ("dtype", "device", "variant") or key in fields:
            if str(fields.get(key)) not in vals:
                return False
    return True


def _fields(spec_dict: dict[str, Any], variant: str, dtype: str, device: str) -> dict[str, Any]:
    spec = RopeSpec.from_dict(spec_dict)
    f = {k: v for k, v in dataclasses.asdict(spec).items()}
    f.update(variant=variant, dtype=dtype, device=device)
    return f


# ----------------------------------------------------------------------------- cells
def _golden_cases(cfg: RunConfig) -> dict[str, list[tuple[dict, dict]]]:
    from ropeconf.golden_data import corpus

    by_variant: dict[str, list] = {}
    for case, arrays in corpus.iter_cases(cfg.golden_dir):
        by_variant.setdefault(case["variant"], []).append((case, arrays))
    return by_variant


def _golden(adapter: Adapter, variant: str, dtype: str, device: str, cases, cfg: RunConfig) -> list[CaseResult]:
    from ropeconf.golden_data.corpus import input_array

    out = []
    for case, arrays in cases:
        if not _only_ok(cfg.only, _fields(case["spec"], variant, dtype, device)):
            continue
        spec = RopeSpec.from_dict(case["spec"])
        x = input_array(arrays, dtype)
        out.append(judge(adapter, spec, x, arrays["positions"], dtype=dtype, device=device, variant=variant,
                         source="golden", case_id=case["id"], expected=arrays[f"expected_{dtype}"]))
    return out


def _properties(adapter: Adapter, variant: Variant, dtype: str, device: str, cfg: RunConfig,
                classify: Callable[[CaseResult], CaseResult]) -> list[CaseResult]:
    from hypothesis import HealthCheck, Phase, given, settings
    from hypothesis import seed as hseed
    from hypothesis.database import DirectoryBasedExampleDatabase

    results: list[CaseResult] = []
    failures: list[CaseResult] = []
    n = cfg.max_examples or PROFILES[cfg.profile]["max_examples"]

    def body(case: dict[str, Any]) -> None:
        spec = case["spec"]
        if not _only_ok(cfg.only, _fields(spec.to_dict(), variant.name, dtype, device)):
            return
        pos = case["positions"]
        x = make_input(spec, pos.shape[0], case["heads"], pos.shape[1], dtype, case["seed"])
        r = classify(judge(adapter, spec, x, pos, dtype=dtype, device=device, variant=variant.name,
                           source="property", seed=case["seed"],
                           case_id=f"property:{variant.name}:{dtype}:{device}"))
        r.worst = {**(r.worst or {}), "heads": case["heads"]}
        results.append(r)
        if r.outcome in FAILING:
            failures.append(r)
            raise AssertionError(r.message)

    test = given(property_case(variant, adapter.capabilities))(body)
    test.hypothesis.inner_test._hypothesis_internal_add_digest = \
        f"{adapter.name}|{variant.name}|{dtype}|{device}".encode()
    db = DirectoryBasedExampleDatabase(cfg.database) if cfg.database else None
    phases = [Phase.explicit, Phase.reuse, Phase.generate, Phase.shrink]  # no slow "explain" phase
    test = settings(max_examples=n, deadline=None, database=db, derandomize=cfg.seed is None, phases=phases,
                    suppress_health_check=list(HealthCheck), print_blob=False, report_multiple_bugs=False)(test)
    if cfg.seed is not None:
        test = hseed(cfg.seed)(test)
    try:
        test()
    except Exception:
        pass  # the failing examples are in `failures`; the last one is the shrunk minimum
    if failures:
        minimal = failures[-1]
        minimal.case_id += ":minimal"
        others = [r for r in results if r.outcome not in FAILING]
        return others + [minimal]
    return results


def _metamorphic(adapter: Adapter, variant: Variant, dtype: str, device: str, cfg: RunConfig) -> list[CaseResult]:
    """Checks on the adapter's own outputs: offset composition, relative invariance, layout identity."""
    out: list[CaseResult] = []
    caps = adapter.capabilities
    layouts = [lay for lay in ("half", "interleaved") if lay in caps.layouts]
    if not layouts or variant.streams > 1 or caps.positions == "range":
        return out  # the checks shift positions and need 1-D positions
    spec = variant.spec(head_dim=64, rotary_dim=64, layout=layouts[0])
    if not _only_ok(cfg.only, _fields(spec.to_dict(), variant.name, dtype, device)):
        return out
    if adapter.why_unsupported(spec, dtype, device):
        return out
    seq, start = 8, 1000
    prec = precision_for(adapter, dtype)

    def run(sp: RopeSpec, x: np.ndarray, pos: np.ndarray, role: str = "query") -> np.ndarray:
        return np.asarray(run_adapter_call(adapter, sp, x, pos, dtype, device, role), dtype=np.float64)

    def tol(sp: RopeSpec, x: np.ndarray, pos: np.ndarray, role: str = "query") -> np.ndarray:
        y = np.asarray(apply(sp, x.astype(np.float64), pos, role=role))
        phi, fac = angle_terms(sp, pos, y.shape)
        return bound(y, phi, sp.rotary_dim, sp.layout, prec, fac)

    def record(check: str, fn: Callable[[], tuple[float, str]]) -> None:
        r = CaseResult(adapter.name, variant.name, dtype, device, f"metamorphic:{check}",
                       f"metamorphic:{check}:{variant.name}", "conforms", spec=spec.to_dict())
        try:
            ratio, detail = fn()
            r.max_ratio = ratio
            if not ratio <= 1.0:
                r.outcome, r.message = "diverges", f"{check}: {detail} ({ratio:.3g} x tolerance)"
        except Exception as e:
            r.outcome, r.message = "error", f"{type(e).__name__}: {e}"
        out.append(r)

    x = make_input(spec, 1, 2, seq, dtype, 11)
    pos = (start + np.arange(seq, dtype=np.int64))[None]

    if variant.relative and not spec.xpos:  # xPos centres on the sequence: chunks see other centres
        def offset_composition() -> tuple[float, str]:
            whole = run(spec, x, pos)
            h = seq // 2
            parts = np.concatenate([run(spec, np.ascontiguousarray(x[:, :, :h]), pos[:, :h]),
                                    run(spec, np.ascontiguousarray(x[:, :, h:]), pos[:, h:])], axis=2)
            t = 2 * tol(spec, x, pos)
            return float(np.max(np.abs(whole - parts) / t)), "chunked decoding differs from the whole sequence"
        record("offset_composition", offset_composition)

    if variant.relative:
        def relative_invariance() -> tuple[float, str]:
            k = make_input(spec, 1, 2, seq, dtype, 12)
            shift = 4096
            q0, k0 = run(spec, x, pos), run(spec, k, pos, "key")
            q1, k1 = run(spec, x, pos + shift), run(spec, k, pos + shift, "key")
            d0 = np.einsum("bhid,bhjd->bhij", q0, k0)
            d1 = np.einsum("bhid,bhjd->bhij", q1, k1)
            tq, tk = tol(spec, x, pos + shift), tol(spec, k, pos + shift, "key")
            aq, ak = np.abs(q1), np.abs(k1)
            t = 2 * (np.einsum("bhid,bhjd->bhij", tq, ak) + np.einsum("bhid,bhjd->bhij", aq, tk))
            return float(np.max(np.abs(d0 - d1) / t)), f"q.k changes when both positions shift by {shift}"
        record("relative_invariance", relative_invariance)

    def norm_preservation() -> tuple[float, str]:
        # |R(phi) pair| = M |pair|: M is the attention factor times the xPos scale, both spec-derived
        # scalars; nothing here uses the reference's rotation.
        from ropeconf.reference import inv_freq, xpos_scale

        from .tolerance import pair_norm

        y = run(spec, x, pos)
        m = inv_freq(spec, int(pos.max()) + 1)[1]
        mag = np.full(y.shape, m)
        if spec.xpos:
            z = np.asarray(xpos_scale(spec, pos))[:, None]  # (batch, 1, seq, r/2)
            per = np.concatenate([z, z], -1) if spec.layout == "half" else np.repeat(z, 2, -1)
            mag[..., : spec.rotary_dim] *= per
        want = pair_norm(x.astype(np.float64), spec.rotary_dim, spec.layout) * mag
        got = pair_norm(y, spec.rotary_dim, spec.layout)
        t = 2 * tol(spec, x, pos)
        return float(np.max(np.abs(got - want) / t)), "the rotation does not preserve each pair's norm"
    record("norm_preservation", norm_preservation)

    if len(layouts) == 2:
        def layout_identity() -> tuple[float, str]:
            r = spec.rotary_dim
            perm = np.concatenate([np.arange(0, r, 2), np.arange(1, r, 2), np.arange(r, spec.head_dim)])
            half = spec.replace(layout="half")
            inter = spec.replace(layout="interleaved")
            xi = np.empty_like(x)
            xi[..., perm] = x                       # x in half order -> interleaved order
            yh = run(half, x, pos)
            yi = run(inter, np.ascontiguousarray(xi), pos)[..., perm]
            t = tol(half, x, pos) * 2
            return float(np.max(np.abs(yh - yi) / t)), "half != de-interleave(interleaved(interleave(x)))"
        record("layout_identity", layout_identity)
    return out


# ----------------------------------------------------------------------------- one adapter
def summarize(results: list[CaseResult]) -> dict[str, Any]:
    counts: dict[str, int] = {}
    for r in results:
        counts[r.outcome] = counts.get(r.outcome, 0) + 1
    outcome = next((o for o in SEVERITY if counts.get(o)), "unsupported")
    ratios = [r.max_ratio for r in results if r.max_ratio is not None]
    failing = [r for r in results if r.outcome == outcome and outcome in ("diverges", "error", "known", "fixed")]
    minimal = None
    if failing:
        minimal = min(failing, key=lambda r: (0 if r.case_id.endswith(":minimal") else 1,
                                              len(json.dumps(r.positions or []))))
    return {"outcome": outcome, "counts": counts, "max_ratio": max(ratios) if ratios else None,
            "minimal": minimal.to_dict() if minimal else None,
            "message": minimal.message if minimal else ""}


def run_adapter(adapter: Adapter | str, cfg: RunConfig, progress: Callable[[str], None] | None = None
                ) -> dict[str, Any]:
    """Run every cell for one adapter in this process; returns its JSON-ready report."""
    t0 = time.time()
    label = adapter if isinstance(adapter, str) else None
    if isinstance(adapter, str):
        adapter = load_adapter(adapter)
    report: dict[str, Any] = {"adapter": label or adapter.name, "library": adapter.distribution,
                              "version": adapter.version(), "cells": [], "cases": []}
    why = adapter.availability()
    variants = [v for name, v in VARIANTS.items() if cfg.variants is None or name in cfg.variants]
    if why:
        report["unavailable"] = why
        for v in variants:
            for dt in cfg.dtypes:
                for dev in cfg.devices:
                    report["cells"].append({"variant": v.name, "dtype": dt, "device": dev,
                                            "outcome": "unavailable", "counts": {}, "message": why})
        report["seconds"] = time.time() - t0
        return report
    entries = registry.load([Path(p) for p in cfg.known_files] if cfg.known_files else None)
    golden = _golden_cases(cfg) if cfg.golden else {}
    version = report["version"]

    def classify(r: CaseResult) -> CaseResult:
        if r.outcome in ("diverges", "error") and r.spec is not None:
            e = registry.find(entries, adapter.name, version, _fields(r.spec, r.variant, r.dtype, r.device))
            if e:
                r.outcome, r.known_id = "known", e.id
        return r

    n_cells = len(variants) * len(cfg.dtypes) * len(cfg.devices)
    done = 0
    for v in variants:
        for dt in cfg.dtypes:
            for dev in cfg.devices:
                results: list[CaseResult] = []
                if cfg.golden:
                    results += [classify(r) for r in _golden(adapter, v.name, dt, dev, golden.get(v.name, []), cfg)]
                if cfg.properties:
                    results += _properties(adapter, v, dt, dev, cfg, classify)
                if cfg.metamorphic:
                    results += [classify(r) for r in _metamorphic(adapter, v, dt, dev, cfg)]
                _mark_fixed(results, entries, adapter.name, version, v.name, dt, dev)
                cell = {"variant": v.name, "dtype": dt, "device": dev, **summarize(results)}
                report["cells"].append(cell)
                report["cases"] += [_slim(r) for r in results if r.outcome != "unsupported"]
                done += 1
                if progress:
                    progress(f"{adapter.name}: {done}/{n_cells} cells")
    report["seconds"] = time.time() - t0
    return report


def _mark_fixed(results: list[CaseResult], entries, adapter: str, version: str, variant: str, dtype: str,
                device: str) -> None:
    """An entry that matches this cell's judged cases but none of them diverges: it is fixed."""
    judged = [r for r in results if r.outcome not in ("unsupported", "unavailable") and r.spec is not None]
    for e in entries:
        matched = [r for r in judged if e.applies(adapter, version, _fields(r.spec, variant, dtype, device))]
        if matched and not any(r.outcome in ("known", "diverges", "error") for r in matched):
            for r in matched:
                r.outcome, r.known_id = "fixed", e.id
                r.message = f"known divergence {e.id} no longer reproduces: remove it from {e.source}"


def _slim(r: CaseResult) -> dict[str, Any]:
    d = r.to_dict()
    if d["outcome"] == "conforms" and d["source"] == "golden":
        d.pop("positions", None)
    return d


# ----------------------------------------------------------------------------- isolation
def run_isolated(names: list[str], cfg: RunConfig, jobs: int = 2, timeout: float = 900.0,
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
            env.update(_adapter_env(name))
            env.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
            cmd = [sys.executable, "-m", "ropeconf.conformance.worker", "--adapter", name,
                   "--config", json.dumps(cfg.to_dict()), "--out", str(out), "--progress", str(prog)]
            err = open(workdir / f"{_safe(name)}.stderr", "w")
            proc = subprocess.Popen(cmd, env=env, stdout=err, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
            running[name] = (proc, time.time(), out, prog)
        time.sleep(0.2)
        for name, (proc, t0, out, prog) in list(running.items()):
            rc = proc.poll()
            if rc is None and time.time() - t0 > timeout:
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
                why = f"worker timed out after {timeout:.0f} s" if rc == "timeout" else f"worker exited with {rc}"
                reports[name] = _crashed(name, cfg, f"{why}: {tail.strip()[-800:]}")
            if progress:
                c = reports[name].get("seconds")
                progress(f"{name}: finished" + (f" in {c:.1f} s" if c else ""))
    return [reports[n] for n in names]


def _safe(name: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in name)


def _adapter_env(name: str) -> dict[str, str]:
    try:
        from ropeconf.adapters import BUILTIN

        if name in BUILTIN:
            mod, _, attr = BUILTIN[name].partition(":")
            # read the class attribute without importing the library
            import importlib

            return dict(getattr(getattr(importlib.import_module(mod), attr), "env", {}) or {})
    except Exception:
        pass
    return {}


def _crashed(name: str, cfg: RunConfig, why: str) -> dict[str, Any]:
    cells = [{"variant": v, "dtype": dt, "device": dev, "outcome": "error", "counts": {"error": 1}, "message": why}
             for v in (cfg.variants or tuple(VARIANTS)) for dt in cfg.dtypes for dev in cfg.devices]
    return {"adapter": name, "library": "?", "version": "?", "cells": cells, "cases": [], "crashed": why}
