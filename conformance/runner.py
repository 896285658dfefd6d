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
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
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
    """(variant, dtype, device) of every cell a run covers, in matrix order (only ``cfg.cells`` when set:
    an adapter's part of a sharded run)."""
    every = [(v, dt, dev) for v in (cfg.variants or tuple(VARIANTS)) for dt in cfg.dtypes for dev in cfg.devices]
    if cfg.cells is None:
        return every
    mine = set(cfg.cells)
    return [c for c in every if "|".join(c) in mine]


def _golden_by_variant(cfg: RunConfig) -> dict[str, list[tuple[dict, dict]]]:
    from ropeconf.golden_data import corpus

    by_variant: dict[str, list] = {}
    for case, arrays in corpus.iter_cases(cfg.golden_dir):
        by_variant.setdefault(case["variant"], []).append((case, arrays))
    return by_variant


class Classifier:
    """The known-divergence registry as one adapter's cells see it: the one place cases become known/fixed."""

    def __init__(self, entries: list[registry.Divergence], adapter: str, version: str):
        self.entries = [e for e in entries if e.names(adapter, version)]  # only this adapter's entries
        self.adapter, self.version = adapter, version
        self.used: set[str] = set()

    @staticmethod
    def _fields(r: CaseResult) -> dict[str, Any]:
        return spec_fields(r.spec, r.variant, r.dtype, r.device, r.positions, r.role, r.source)

    def __call__(self, r: CaseResult) -> CaseResult:
        """A diverging or erroring case that an entry matches is *known* (under the most specific entry)."""
        if Outcome.of(r.outcome) in (Outcome.DIVERGES, Outcome.ERROR) and r.spec is not None:
            fields = self._fields(r)
            e = registry.find(self.entries, self.adapter, self.version, fields,
                              admit=lambda e: e.admits(r.outcome, r.max_ratio))
            if e:
                r.outcome, r.known_id = Outcome.KNOWN, e.id
                self.used.add(e.id)
            else:
                over = registry.find(self.entries, self.adapter, self.version, fields)
                if over:  # matched, but above its ceiling (or an error under a precision entry): still fails
                    self.used.add(over.id)
                    why = (f"above the ceiling {over.max_ratio:g}x of" if over.max_ratio is not None and
                           Outcome.of(r.outcome) is Outcome.DIVERGES else "not covered by")
                    r.message = (f"{r.message}; " if r.message else "") + f"{why} {over.kind} entry {over.id}"
        return r

    def close(self, results: list[CaseResult]) -> None:
        """An entry that matches judged cases of this cell but none of them diverges is *fixed* (a precision
        entry: when it matches witness cases of this cell and none of them diverges)."""
        judged = [r for r in results if Outcome.of(r.outcome) not in (Outcome.UNSUPPORTED, Outcome.UNAVAILABLE)
                  and r.spec is not None]
        fields = [self._fields(r) for r in judged]
        for e in self.entries:
            matched = [r for r, f in zip(judged, fields) if e.applies(self.adapter, self.version, f)]
            if matched:
                self.used.add(e.id)  # it matched cases (even where a more specific entry is the one reported)
            if e.kind == "precision":  # drawn cases may stay below the bound: only a witness can show it fixed
                matched = [r for r in matched if e.is_witness(r.source, r.case_id, r.dtype)]
            if matched and not any(Outcome.of(r.outcome) in (Outcome.KNOWN, Outcome.DIVERGES, Outcome.ERROR)
                                   for r in matched):
                for r in matched:
                    r.outcome, r.known_id = Outcome.FIXED, e.id
                    r.message = f"known divergence {e.id} no longer reproduces: remove it from {e.source}"

    def check_diagnosis(self, known_id: str | None, diagnosis: dict[str, Any]) -> list[str]:
        """A warning when a known case's entry names a diagnosis that this run's diagnosis does not give first."""
        from .diagnosis import first_explanation, tied_first

        e = next((e for e in self.entries if e.id == known_id), None)
        got = first_explanation(diagnosis)
        if e is None or not e.diagnosis or got == e.diagnosis or e.diagnosis in tied_first(diagnosis):
            return []
        return [f"registry entry {e.id} ({e.source}) gives diagnosis {e.diagnosis!r} but this run diagnosed "
                f"{got or 'nothing catalogued'} on case {diagnosis.get('case_id')}"]

    def unused(self, cells: list[tuple[str, str, str]]) -> dict[str, str]:
        """Warnings (by entry id) for entries of this adapter that a run over ``cells`` could reach but matched
        no case."""
        return {e.id: f"registry entry {e.id} ({e.source}) matched no case of {self.adapter} {self.version} "
                      "in this run" for e in self.entries if e.id not in self.used and e.covers(cells)}


def run_adapter(adapter: Adapter | str, cfg: RunConfig, progress: Callable[[str], None] | None = None,
                on_case: Callable[[dict[str, Any]], None] | None = None,
                on_cell: Callable[[dict[str, Any]], None] | None = None) -> dict[str, Any]:
    """Run every cell for one adapter in this process; returns its JSON-ready report.

    Failing to load the adapter, or ``availability()`` itself raising, is reported as the
    adapter's *error* (every cell); only a reason returned by ``availability()`` (a module
    it requires does not import) makes it *unavailable*.  ``on_case`` is told each case
    before the adapter runs it and ``on_cell`` gets each finished cell with its cases (the
    isolation worker journals both).
    """
    t0 = time.time()
    name = adapter if isinstance(adapter, str) else adapter.name
    try:
        if isinstance(adapter, str):
            adapter = load_adapter(adapter)
        why = adapter.availability()
    except BaseException as e:  # noqa: BLE001 - a broken adapter is this adapter's error, never the run's end
        return AdapterReport.not_run(name, cells_of(cfg), Outcome.ERROR,
                                     f"loading the adapter failed: {type(e).__name__}: {e}").to_dict()
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
        try:
            missing = adapter.device_unavailable(dev)
        except BaseException as e:  # noqa: BLE001 - the adapter's device probe failing is its error
            missing = f"device check failed: {type(e).__name__}: {e}"
            cell_report, cases = CellReport.uniform(vname, dt, dev, Outcome.ERROR, missing), []
        else:
            cell_report, cases = None, []
            if missing:
                cell_report = CellReport.uniform(vname, dt, dev, Outcome.UNAVAILABLE, missing)
        if cell_report is None:
            t_cell = time.time()
            cell = Cell(adapter, VARIANTS[vname], dt, dev, cfg, classify, golden.get(vname, []), on_case)
            results: list[CaseResult] = []
            for source in sources:
                results += source.cases(cell)
            classify.close(results)
            cell_report = CellReport.summarize(vname, dt, dev, results)
            if cfg.diagnose and cell_report.minimal and cell_report.outcome in (Outcome.DIVERGES, Outcome.KNOWN):
                case = _diagnosis_case(results, cell_report)
                cell_report.diagnosis = _diagnose(cell, case)
                if cell_report.diagnosis is not None:
                    cell_report.diagnosis["case_id"] = case.get("case_id")
                    report.warnings += classify.check_diagnosis(case.get("known_id"), cell_report.diagnosis)
            cases = [_slim(r) for r in results if Outcome.of(r.outcome) is not Outcome.UNSUPPORTED]
            cell_report.seconds = round(time.time() - t_cell, 3)
        report.cells.append(cell_report)
        report.cases += cases
        if on_cell:
            on_cell({"cell": cell_report.to_dict(), "cases": cases})
        if progress:
            progress(f"{adapter.name}: {done}/{len(todo)} cells")
    report.registry_unused = classify.unused(todo)
    report.registry_used = sorted(classify.used)
    report.warnings += list(report.registry_unused.values())
    report.seconds = time.time() - t0
    return report.to_dict()


def _diagnosis_case(results: list[CaseResult], cell_report: CellReport) -> dict[str, Any]:
    """The case to explain: a stateless failing case (golden first, then property) when there is one,
    since one call over many positions tells hypotheses apart that a one-position decode step cannot;
    else the cell's smallest case (a stateful or metamorphic failure)."""
    same = [r for r in results if r.outcome == cell_report.outcome and r.spec is not None
            and r.source in ("golden", "property")]
    if not same:
        return cell_report.minimal
    best = min(same, key=lambda r: (r.source != "golden", len(json.dumps(r.positions or []))))
    return best.to_dict()


def _diagnose(cell: Cell, minimal: dict[str, Any]) -> dict[str, Any] | None:
    from .diagnosis import diagnose_cell

    try:
        return diagnose_cell(cell, minimal)
    except Exception as e:  # noqa: BLE001 - a diagnosis that fails never changes the verdict
        return {"explained_by": [], "note": f"diagnosis failed: {type(e).__name__}: {e}"}


def _slim(r: CaseResult) -> dict[str, Any]:
    d = r.to_dict()
    if d["outcome"] == Outcome.CONFORMS.value and d["source"] == "golden":
        d.pop("positions", None)
    return d


# ----------------------------------------------------------------------------- isolation
# Thread pools of the libraries under test (OpenMP: torch, onnxruntime's default; MKL; OpenBLAS; TensorFlow).
# Parallel workers each sized to the whole machine oversubscribe it (measured on 2 cores, 2 workers: the ci
# matrix 179 s wall and 336 s of CPU, against 127 s and 239 s with one thread each).  RoPE is elementwise, so
# the thread count changes the time, never the result.
THREAD_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "TF_NUM_INTRAOP_THREADS")


def worker_threads(jobs: int, adapters: int, cpus: int | None = None) -> int:
    """Threads per worker: the machine's cores shared among the workers that run at once."""
    if cpus is None:
        cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, cpus // max(1, min(jobs, adapters)))


class _Worker:
    """One adapter's worker process: its own session (process group), files, and what it last reported."""

    def __init__(self, name: str, cfg: RunConfig, workdir: Path, threads: int | None = None):
        self.name, self.cfg = name, cfg
        self.out, self.status, self.journal, self.log = (workdir / f"{_safe(name)}{ext}" for ext in
                                                          (".json", ".status", ".jsonl", ".log"))
        env = dict(os.environ)
        env.update(adapter_env(name))
        env.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
        for var in THREAD_VARS if threads else ():  # what the user set wins
            env.setdefault(var, str(threads))
        cmd = [sys.executable, "-m", "ropeconf.conformance.worker", "--adapter", name,
               "--config", json.dumps(cfg.to_dict()), "--out", str(self.out), "--status", str(self.status),
               "--journal", str(self.journal)]
        with open(self.log, "wb") as log:
            self.proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL, start_new_session=True)
        self.t0 = time.time()

    def kill(self) -> None:
        """SIGKILL the worker's whole process group (its children too), then reap the worker."""
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            pass

    def state(self) -> dict[str, Any]:
        try:
            return json.loads(self.status.read_text(encoding="utf-8", errors="replace"))
        except (OSError, ValueError):
            return {}

    def finished_cells(self) -> list[dict[str, Any]]:
        cells = []
        try:
            lines = self.journal.read_text(encoding="utf-8", errors="replace").splitlines()
        except OSError:
            return cells
        for line in lines:
            try:
                cells.append(json.loads(line))
            except ValueError:
                break  # a torn last line: the worker died while writing it
        return cells

    def tail(self) -> str:
        try:
            return self.log.read_bytes()[-4000:].decode("utf-8", errors="replace").strip()[-800:]
        except OSError:
            return ""

    def broken(self, why: str) -> dict[str, Any]:
        """The report of a worker that died or hung: finished cells kept, the rest an error naming why."""
        done = self.finished_cells()
        kept = {(c["cell"]["variant"], c["cell"]["dtype"], c["cell"]["device"]): c for c in done}
        state = self.state()
        case = state.get("case")
        where = f" while running {json.dumps(case, separators=(',', ':'))}" if case else ""
        rep = AdapterReport(self.name, state.get("library", "?"), state.get("version", "?"), crashed=why + where)
        for v, dt, dev in cells_of(self.cfg):
            if (v, dt, dev) in kept:
                rep.cells.append(CellReport(**{**kept[(v, dt, dev)]["cell"],
                                               "outcome": Outcome.of(kept[(v, dt, dev)]["cell"]["outcome"])}))
                rep.cases += kept[(v, dt, dev)]["cases"]
            elif state.get("cell") == [v, dt, dev]:
                rep.cells.append(CellReport.uniform(v, dt, dev, Outcome.ERROR, why + where))
            else:
                rep.cells.append(CellReport.uniform(v, dt, dev, Outcome.ERROR, f"not run: {why}"))
        rep.seconds = time.time() - self.t0
        return rep.to_dict()


def _no_gpu_for(name: str, cfg: RunConfig) -> str | None:
    """Why a built-in adapter that runs only on CUDA cannot run on this machine at all, or None.

    Decided without importing the library: the adapter's declared devices (a class attribute)
    and the absence of any NVIDIA device node; anything else is left to its worker.
    """
    from ropeconf.adapters import BUILTIN

    if name not in BUILTIN or any(os.path.exists(p) for p in ("/dev/nvidiactl", "/dev/nvidia0", "/dev/dxg")):
        return None
    try:
        import importlib

        mod, _, attr = BUILTIN[name].partition(":")
        devices = getattr(importlib.import_module(mod), attr).capabilities.devices
    except Exception:  # noqa: BLE001 - its worker will report whatever this is
        return None
    if set(devices) == {"cuda"}:
        return "needs a CUDA GPU: this machine has none (no /dev/nvidiactl)"
    return None


def _exit_reason(rc: int) -> str:
    if rc < 0:
        try:
            return f"worker killed by {signal.Signals(-rc).name}"
        except ValueError:
            return f"worker killed by signal {-rc}"
    return f"worker exited with status {rc}"


def _longest_first(names: list[str]) -> list[str]:
    """Workers start in order of their measured cost (conformance/costs.json, as the shard planner
    reads it), longest first, so the slowest adapter does not start last; unknown ones keep their order
    after the known ones.  Reports come back in ``names`` order whatever the start order."""
    from .shard import load_costs

    table = load_costs().get("adapters", {})

    def cost(n: str) -> float:
        a = table.get(n)
        return -1.0 if a is None else float(a.get("startup", 0.0)) + sum(a.get("cells", {}).values())

    return sorted(names, key=lambda n: -cost(n))  # stable: equal or unknown costs keep the given order


def run_isolated(names: list[str], cfg: RunConfig, jobs: int = 2,
                 progress: Callable[[str], None] | None = None,
                 configs: dict[str, RunConfig] | None = None) -> list[dict[str, Any]]:
    """Run each adapter in its own worker process; a crash or a hang becomes that adapter's error.

    Each worker is its own process group, killed whole on a timeout (``cfg.timeout`` per
    adapter, ``cfg.case_timeout`` per adapter call), when this process gets SIGTERM or
    SIGINT, and when it finishes; finished cells of a killed worker are kept.  The
    temporary directory is removed at the end.  ``configs`` gives an adapter its own
    config (a shard's cells); others use ``cfg``.  Each worker's thread pools get the machine's cores
    divided by the workers that run at once (``THREAD_VARS``; a value set in the environment wins).
    """
    configs = configs or {}
    workdir = Path(tempfile.mkdtemp(prefix="ropeconf-run-"))
    pending = _longest_first(names)
    threads = worker_threads(jobs, len(names))
    running: dict[str, _Worker] = {}
    reports: dict[str, dict[str, Any]] = {}

    def stop_all(signum=None, frame=None):
        for w in list(running.values()):
            w.kill()
        if signum is not None:
            raise SystemExit(128 + signum)

    for name in list(pending):  # GPU-only built-ins on a machine with no GPU at all: no worker to start
        why = _no_gpu_for(name, configs.get(name, cfg))
        if why:
            pending.remove(name)
            reports[name] = AdapterReport.not_run(name, cells_of(configs.get(name, cfg)), Outcome.UNAVAILABLE,
                                                  why).to_dict()
            if progress:
                progress(f"{name}: finished")
    old = {}
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGTERM, signal.SIGINT):
            old[sig] = signal.signal(sig, stop_all)
    try:
        while pending or running:
            while pending and len(running) < max(1, jobs):
                name = pending.pop(0)
                running[name] = _Worker(name, configs.get(name, cfg), workdir, threads)
            time.sleep(0.1)
            for name, w in list(running.items()):
                rc = w.proc.poll()
                report = None
                if rc is None:
                    state = w.state()
                    now = time.time()
                    if now - w.t0 > w.cfg.timeout:
                        w.kill()
                        report = w.broken(f"worker timed out after {w.cfg.timeout:g} s")
                    elif state.get("case") and now - state.get("since", now) > w.cfg.case_timeout:
                        w.kill()
                        report = w.broken(f"an adapter call hung for more than {w.cfg.case_timeout:g} s "
                                          "(--case-timeout)")
                    elif progress and state.get("progress"):
                        progress(state["progress"])
                    if report is None:
                        continue
                else:
                    w.kill()  # the group: children a library left behind
                    report = _read_report(w, rc)
                del running[name]
                reports[name] = report
                if progress:
                    c = report.get("seconds")
                    progress(f"{name}: finished" + (f" in {c:.1f} s" if c else ""))
    finally:
        stop_all()
        for sig, handler in old.items():
            signal.signal(sig, handler)
        shutil.rmtree(workdir, ignore_errors=True)
    return [reports[n] for n in names]


def _read_report(w: _Worker, rc: int) -> dict[str, Any]:
    if rc != 0:
        tail = w.tail()
        return w.broken(_exit_reason(rc) + (f": {tail}" if tail else ""))
    try:
        report = json.loads(w.out.read_text(encoding="utf-8"))
        if not isinstance(report, dict) or report.get("adapter") != w.name or not isinstance(report.get("cells"), list):
            raise ValueError("not an adapter report of this adapter")
        for c in report["cells"]:
            Outcome.of(c["outcome"])
            for k in ("variant", "dtype", "device"):
                if not isinstance(c[k], str):
                    raise ValueError(f"cell {k} is not a string")
        want = set(cells_of(w.cfg))
        got = {(c["variant"], c["dtype"], c["device"]) for c in report["cells"]}
        if got != want:
            raise ValueError(f"the report covers {len(got)} cells, the run {len(want)}")
        return report
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
        why = f"the worker's result file is unreadable ({type(e).__name__}: {str(e)[:200]})"
        return AdapterReport.not_run(w.name, cells_of(w.cfg), Outcome.ERROR, why).to_dict()


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
