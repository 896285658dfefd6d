"""Worker process: runs one adapter's cells and writes its JSON report (see runner.run_isolated).

It imports the adapter itself (never the parent), limits its own address space
(``--memory-limit``), and keeps two files the parent reads when it has to kill
it or when it dies: ``--status`` (the cell and case running now, rewritten
atomically before each adapter call) and ``--journal`` (one JSON line per
finished cell).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

from .config import RunConfig, memory_bytes
from .outcome import Outcome
from .results import AdapterReport
from .runner import cells_of, run_adapter


def apply_memory_limit(cfg: RunConfig) -> int | None:
    """Set RLIMIT_AS from ``cfg.memory_limit`` ('auto': 3/4 of physical memory, off for CUDA runs)."""
    import resource

    spec = cfg.memory_limit
    if spec == "off" or (spec == "auto" and "cuda" in cfg.devices):  # CUDA maps device memory into the space
        return None
    if spec == "auto":
        try:
            limit = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") * 3 // 4
        except (ValueError, OSError):
            return None
    else:
        limit = memory_bytes(spec)
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    if hard != resource.RLIM_INFINITY:
        limit = min(limit, hard)
    resource.setrlimit(resource.RLIMIT_AS, (limit, hard))
    return limit


class _Files:
    def __init__(self, status: str | None, journal: str | None):
        self.status, self.journal = status, journal
        self.state: dict = {"since": time.time()}

    def write_status(self, **changes) -> None:
        self.state.update(changes)
        if not self.status:
            return
        tmp = f"{self.status}.tmp"
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(self.state, f)
        os.replace(tmp, self.status)

    def on_case(self, case: dict) -> None:
        self.write_status(case=case, cell=[case["variant"], case["dtype"], case["device"]], since=time.time())

    def on_cell(self, entry: dict) -> None:
        if self.journal:
            with open(self.journal, "a", encoding="utf-8") as f:
                f.write(json.dumps(entry) + "\n")
        self.write_status(case=None)


_ENV_APPLIED = "ROPECONF_ADAPTER_ENV_APPLIED"


def reexec_with_adapter_env(name: str, argv: list[str]) -> None:
    """Apply the adapter's declared ``env`` to this process, whatever the adapter's form.

    A built-in adapter's env is known without importing it and set by the parent; a
    ``module:attr`` or entry-point adapter's (``Adapter.env``, ``f.ropeconf_env``) is only
    known once it is imported, which may already be too late (KERAS_BACKEND, JAX x64 are read
    at import).  So the worker imports it, and if its env differs from this process's,
    starts over with it (once).
    """
    from .adapter import load_adapter

    if os.environ.get(_ENV_APPLIED):
        return
    try:
        env = dict(getattr(load_adapter(name), "env", {}) or {})
    except BaseException:  # noqa: BLE001 - loading fails again in run_adapter, which reports it
        return
    if any(os.environ.get(k) != v for k, v in env.items()):
        os.execve(sys.executable, [sys.executable, "-m", "ropeconf.conformance.worker", *argv],
                  {**os.environ, **env, _ENV_APPLIED: "1"})


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m ropeconf.conformance.worker")
    ap.add_argument("--adapter", required=True)
    ap.add_argument("--config", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--status")
    ap.add_argument("--journal")
    a = ap.parse_args(argv)
    cfg = RunConfig.from_dict(json.loads(a.config))
    files = _Files(a.status, a.journal)
    limit = apply_memory_limit(cfg)
    reexec_with_adapter_env(a.adapter, argv if argv is not None else sys.argv[1:])
    files.write_status(memory_limit=limit)
    last = [0.0]

    def progress(msg: str) -> None:
        if time.time() - last[0] > 0.5:
            last[0] = time.time()
            files.write_status(progress=msg)

    try:
        report = run_adapter(a.adapter, cfg, progress, on_case=files.on_case, on_cell=files.on_cell)
    except BaseException as e:  # noqa: BLE001 - run_adapter reports adapter failures itself; this is ours
        report = AdapterReport.not_run(a.adapter, cells_of(cfg), Outcome.ERROR,
                                       f"the suite failed: {type(e).__name__}: {e}").to_dict()
    tmp = f"{a.out}.tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(report, f)
    os.replace(tmp, a.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
