"""Every speed figure of the project in one run (issue 12): ``python benchmarks/run_all.py``.

Prints one table of ratios measured in this run, side by side:

* reference ``apply`` / ``np.copyto`` on (4, 16, 2048, 128) float64, shipped and NumPy only
  (bench_reference.py; goal >= 0.25x, median of 11);
* the CPU-compiled fused kernel against ``apply`` and ``np.copyto`` (bench_kernel.py);
* what diagnosis costs (bench_diagnosis.py; wall ratio --diagnose / --no-diagnose);
* the slow adapters of the main job, as seconds over their goal (keras-jax < 30 s;
  MAX's part of scripts/main.sh cold <= 90 s, run with an empty compile cache, and warm);
* ``--matrix``: the main job's ci matrix (every built-in adapter of .venv but MAX and the tox-env peers)
  over the 3-minute goal, and the same run with every worker's thread pools sized to the whole machine
  (what the runner did before it divided the cores among the workers), as a wall-time ratio.

``--skip-adapters`` leaves out the adapter runs (the longest part); ``--json`` writes every
figure.  Absolute times on a shared 2-core machine are noisy; the ratios are the figures.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import bench_diagnosis  # noqa: E402
import bench_kernel  # noqa: E402
import bench_reference  # noqa: E402

# the main job's MAX command (scripts/main.sh), and keras-jax as the main job runs it
MAX_ARGS = ["--adapter", "max", "--only", "head_dim=64,layout=half", "--no-properties", "--dtype", "float32",
            "--timeout", "3600"]
KERAS_JAX_ARGS = ["--adapter", "keras-jax"]
# the main job's main part (scripts/main.sh): every built-in adapter but MAX and the peers in tox environments
MATRIX_ARGS = ["--skip-adapter", "max", "max-fused", "zeta", "mlx-fast", "mlx-lm", "ggml", "vllm-cpu-native",
               "vllm-cpu", "vllm-cpu-native-deepseek-yarn"]


def _children_cpu() -> float:
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime


def timed_run(args: list[str], env: dict[str, str] | None = None) -> tuple[float, int, dict]:
    """Wall seconds, exit code and results of one ``ropeconf run``; its CPU seconds (the run and its
    workers, user + system) in the results under ``cpu_s``."""
    with tempfile.TemporaryDirectory() as d:
        out = Path(d) / "r.json"
        t, c = time.perf_counter(), _children_cpu()
        p = subprocess.run([sys.executable, "-m", "ropeconf.conformance.cli", "run", *args, "--json", str(out)],
                           env={**os.environ, **(env or {})}, capture_output=True, text=True)
        secs = time.perf_counter() - t
        res = json.loads(out.read_text()) if out.exists() else {}
        res["cpu_s"] = _children_cpu() - c
    return secs, p.returncode, res


def adapters() -> dict[str, float]:
    figs: dict[str, float] = {}
    secs, rc, _ = timed_run(KERAS_JAX_ARGS)
    figs.update(keras_jax_s=secs, keras_jax_over_goal=secs / 30.0, keras_jax_exit=rc)
    with tempfile.TemporaryDirectory() as cache:
        for label in ("cold", "warm"):
            secs, rc, res = timed_run(MAX_ARGS, {"ROPECONF_CACHE_DIR": cache})
            cells = sum(len(a["cells"]) for a in res.get("adapters", []))
            figs.update({f"max_{label}_s": secs, f"max_{label}_over_goal": secs / 90.0, f"max_{label}_exit": rc,
                         "max_cells": cells})
    return figs


def matrix() -> dict[str, float]:
    from ropeconf.conformance.runner import THREAD_VARS, worker_threads

    cpus = worker_threads(1, 1)  # one worker: the whole machine
    shared, rc, r1 = timed_run(MATRIX_ARGS)
    whole, rc2, r2 = timed_run(MATRIX_ARGS, {v: str(cpus) for v in THREAD_VARS})
    return {"matrix_s": shared, "matrix_over_goal": shared / 180.0, "matrix_exit": rc,
            "matrix_whole_machine_threads_s": whole, "matrix_shared_over_whole": shared / whole,
            "matrix_cpu_s": r1["cpu_s"], "matrix_whole_machine_threads_cpu_s": r2["cpu_s"],
            "matrix_cpu_shared_over_whole": r1["cpu_s"] / r2["cpu_s"], "matrix_whole_exit": rc2}


def main(argv: list[str] | None = None) -> dict[str, float]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--skip-adapters", action="store_true", help="leave out the keras-jax and MAX runs")
    ap.add_argument("--matrix", action="store_true", help="also time the ci matrix, cores shared vs not")
    ap.add_argument("--json", help="write every figure here")
    a = ap.parse_args(argv)
    figs: dict[str, dict] = {}
    print("[bench] reference apply vs np.copyto ...", flush=True)
    figs["reference"] = bench_reference.main(["--skip-golden"])
    print("[bench] fused kernel (CPU build) ...", flush=True)
    figs["kernel"] = bench_kernel.main([])
    print("[bench] diagnosis ...", flush=True)
    figs["diagnosis"] = bench_diagnosis.main(["--repeat", "1"])
    if not a.skip_adapters:
        print(f"[bench] adapters: ropeconf run {shlex.join(KERAS_JAX_ARGS)}; {shlex.join(MAX_ARGS)} cold and warm",
              flush=True)
        figs["adapters"] = adapters()
    if a.matrix:
        print(f"[bench] ci matrix: ropeconf run {shlex.join(MATRIX_ARGS)}, cores shared and not", flush=True)
        figs["matrix"] = matrix()
    r, k, d = figs["reference"], figs["kernel"], figs["diagnosis"]
    rows = [("apply / np.copyto (shipped)", r.get("apply_ratio_to_copyto"), ">= 0.25"),
            ("apply(out=) / np.copyto (shipped)", r.get("apply_out_ratio_to_copyto"), ">= 0.25"),
            ("apply / np.copyto (NumPy only)", r.get("apply_numpy_ratio_to_copyto"), ""),
            ("fused kernel (CPU) / np.copyto", k.get("kernel_fused_ratio_to_copyto"), ""),
            ("table kernel (CPU) / np.copyto", k.get("kernel_table_ratio_to_copyto"), ""),
            ("--diagnose / --no-diagnose, nothing diverges", d.get("conforming_diagnose_over_no_diagnose"), "~1"),
            ("--diagnose / --no-diagnose, matrix with divergences", d.get("matrix_diagnose_over_no_diagnose"), ""),
            ("diagnosis s per diverging cell", d.get("matrix_diagnosis_seconds_per_cell"), "< a few s")]
    if "adapters" in figs:
        ad = figs["adapters"]
        rows += [("keras-jax run / 30 s goal", ad["keras_jax_over_goal"], "<= 1"),
                 (f"MAX main-job part cold / 90 s goal ({ad['max_cells']} cells)", ad["max_cold_over_goal"], "<= 1"),
                 ("MAX main-job part warm / 90 s goal", ad["max_warm_over_goal"], "")]
    if "matrix" in figs:
        m = figs["matrix"]
        rows += [("ci matrix / 180 s goal", m["matrix_over_goal"], "<= 1"),
                 ("ci matrix wall, cores shared / whole machine per worker", m["matrix_shared_over_whole"], "< 1"),
                 ("ci matrix CPU, cores shared / whole machine per worker", m["matrix_cpu_shared_over_whole"], "< 1")]
    print()
    print(f"{'figure':58s} {'value':>8s}  goal")
    for name, v, goal in rows:
        print(f"{name:58s} {('%.3g' % v) if isinstance(v, (int, float)) else 'n/a':>8s}  {goal}")
    if a.json:
        Path(a.json).write_text(json.dumps(figs, indent=1, default=str))
    return figs


if __name__ == "__main__":
    main(sys.argv[1:])
