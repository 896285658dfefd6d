"""Worker process: runs one adapter's cells and writes its JSON report (see runner.run_isolated)."""

from __future__ import annotations

import argparse
import json
import sys
import time

from ropeconf.reference.variants import VARIANTS

from .runner import RunConfig, run_adapter


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m ropeconf.conformance.worker")
    ap.add_argument("--adapter", required=True)
    ap.add_argument("--config", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--progress")
    a = ap.parse_args(argv)
    cfg_d = json.loads(a.config)
    cfg = RunConfig(**{k: tuple(v) if isinstance(v, list) and k != "only" else v for k, v in cfg_d.items()})
    last = [0.0]

    def progress(msg: str) -> None:
        if a.progress and time.time() - last[0] > 0.5:
            last[0] = time.time()
            with open(a.progress, "w") as f:
                f.write(msg)

    try:
        report = run_adapter(a.adapter, cfg, progress)
    except Exception as e:  # loading the adapter failed: report it, do not crash the run
        report = {"adapter": a.adapter, "library": "?", "version": "?", "cases": [],
                  "unavailable": f"{type(e).__name__}: {e}",
                  "cells": [{"variant": v, "dtype": dt, "device": dev, "outcome": "unavailable", "counts": {},
                             "message": f"{type(e).__name__}: {e}"}
                            for v in (cfg.variants or VARIANTS)
                            for dt in cfg.dtypes for dev in cfg.devices]}
    with open(a.out, "w") as f:
        json.dump(report, f)
    return 0


if __name__ == "__main__":
    sys.exit(main())
