"""What diagnosis costs (issue 9; run: python benchmarks/bench_diagnosis.py).

Diagnosis runs only on diverging and known cells, so a matrix where nothing diverges
pays nothing for it; a cell that diverges pays its budget (docs/diagnosis.md). Both are
measured side by side, the two settings interleaved, in one run:

1. ``ropeconf run`` (ci profile) of the given adapters with ``--diagnose`` and with
   ``--no-diagnose``: wall ratio, and how many cells were diagnosed and for how long
   (the ``seconds`` each diagnosis records).
2. The same for a matrix where nothing diverges (the conforming toy adapter): the ratio
   must stay near 1.

Ratios are reported; absolute times on this machine are noisy.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TOY = ROOT / "tests" / "toy_pkg"


def run(adapters: list[str], diagnose: bool, dtype: str, workdir: str) -> tuple[float, dict]:
    out = Path(workdir) / f"{'d' if diagnose else 'n'}-{time.monotonic_ns()}.json"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(TOY), os.environ.get("PYTHONPATH", "")])}
    cmd = [sys.executable, "-m", "ropeconf.conformance.cli", "run", "--adapter", *adapters, "--dtype", dtype,
           "--json", str(out), "--diagnose" if diagnose else "--no-diagnose"]
    t = time.perf_counter()
    subprocess.run(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=False)
    return time.perf_counter() - t, json.loads(out.read_text())


def diagnosed(result: dict) -> tuple[int, float]:
    cells = [c for a in result["adapters"] for c in a["cells"] if c.get("diagnosis")]
    return len(cells), sum(c["diagnosis"].get("seconds", 0.0) for c in cells)


def main(argv: list[str] | None = None) -> dict[str, float]:
    ap = argparse.ArgumentParser()
    ap.add_argument("--adapters", default="hf,rotary-torch,torchtune",
                    help="the matrix with known divergences (comma-separated)")
    ap.add_argument("--dtype", default="float32,bfloat16")
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--json", help="write the figures here")
    a = ap.parse_args([] if argv is None else argv)
    figures: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as d:
        for label, adapters in (("conforming", ["toy_rope:rope_adapter"]), ("matrix", a.adapters.split(","))):
            on, off, cells, secs = [], [], 0, 0.0
            for _ in range(a.repeat):                 # interleaved: on, off, on, off
                t, res = run(adapters, True, a.dtype, d)
                on.append(t)
                cells, secs = diagnosed(res)
                off.append(run(adapters, False, a.dtype, d)[0])
            figures[f"{label}_diagnose_over_no_diagnose"] = min(on) / min(off)
            figures[f"{label}_cells_diagnosed"] = cells
            figures[f"{label}_diagnosis_seconds_per_cell"] = secs / cells if cells else 0.0
            print(f"{label} ({','.join(adapters)}; {a.dtype}): --diagnose / --no-diagnose wall = "
                  f"{min(on) / min(off):.3f}; {cells} cells diagnosed, "
                  f"{(secs / cells if cells else 0.0):.2f} s each (recorded)")
    if a.json:
        Path(a.json).write_text(json.dumps(figures, indent=1))
    return figures


if __name__ == "__main__":
    main(sys.argv[1:])
