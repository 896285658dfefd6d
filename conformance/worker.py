"""Worker process: runs one adapter's cells and writes its JSON report (see runner.run_isolated)."""

from __future__ import annotations

import argparse
import json
import sys
import time

from .config import RunConfig
from .outcome import Outcome
from .results import AdapterReport
from .runner import cells_of, run_adapter


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m ropeconf.conformance.worker")
    ap.add_argument("--adapter", required=True)
    ap.add_argument("--config", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--progress")
    a = ap.parse_args(argv)
    cfg = RunConfig.from_dict(json.loads(a.config))
    last = [0.0]

    def progress(msg: str) -> None:
        if a.progress and time.time() - last[0] > 0.5:
            last[0] = time.time()
            with open(a.progress, "w") as f:
                f.write(msg)

    try:
        report = run_adapter(a.adapter, cfg, progress)
    except Exception as e:  # loading the adapter failed: report it, do not crash the run
        report = AdapterReport.not_run(a.adapter, cells_of(cfg), Outcome.UNAVAILABLE,
                                       f"{type(e).__name__}: {e}").to_dict()
    with open(a.out, "w") as f:
        json.dump(report, f)
    return 0


if __name__ == "__main__":
    sys.exit(main())
