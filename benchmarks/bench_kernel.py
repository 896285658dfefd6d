"""The CPU build of the fused kernel vs ``ropeconf.reference.apply`` vs ``np.copyto``, in the same run.

Run: python benchmarks/bench_kernel.py [--shape 4,16,2048,128] [--repeat 11] [--json out.json]

On a (4, 16, 2048, 128) float64 tensor (default RoPE, positions 0..2047 per batch row,
as benchmarks/bench_reference.py) it times, median of ``--repeat`` runs each, the
contenders interleaved round-robin (a change of machine load hits all alike):

* ``np.copyto(dst, x)``: the bandwidth yardstick (reads x, writes the output: the
  same bytes every RoPE moves);
* ``apply(spec, x, pos)`` (and ``out=buf``) as shipped: NumPy cos/sin, the rotation
  compiled (``kernel.rotate_native``, bit-identical to NumPy);
* ``apply_numpy`` (and ``_out``): ``ROPECONF_NATIVE=0``, NumPy only;
* ``kernel_fused`` (and ``_out``): ``apply_kernel(..., schedule='fused')``, the GPU
  kernel's per-(token, pair) body in a C loop, so the double-double cos/sin is
  recomputed for every (token, pair), as one GPU thread per (token, pair) does;
* ``kernel_table`` (and ``_out``): the same inline functions, cos/sin once per
  distinct position row (as the reference de-duplicates), then the rotation.

Ratios are the figures (this machine is shared and noisy): ``X_ratio_to_copyto`` =
t_copyto / t_X (1.0 would be copy bandwidth) and ``X_vs_apply`` = t_apply / t_X.  The
kernel's agreement with ``apply`` on the benchmarked tensor (max ulp of the pair norm,
bit-identical share) is reported too, so a fast wrong kernel cannot pass unnoticed.

``main()`` returns the figures as a dict (an aggregating script calls it); when the
kernel cannot be built it returns ``{"unavailable": reason}``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_reference import native, side_by_side, workload  # noqa: E402  (the sibling benchmark's helpers)


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeat", type=int, default=11)
    ap.add_argument("--shape", default="4,16,2048,128", help="batch,heads,seq,head_dim")
    ap.add_argument("--threads", type=int, default=None, help="kernel threads (default min(8, cpu_count))")
    ap.add_argument("--json", help="write the figures here")
    a = ap.parse_args([] if argv is None else argv)

    from ropeconf.reference import apply, kernel

    why = kernel.kernel_unavailable_reason()
    if why:
        print(f"bench_kernel: cannot run: {why}", file=sys.stderr)
        return {"unavailable": why}

    x, pos, spec, dst, buf = workload(a.shape)

    with native(None):
        ref = apply(spec, x, pos)  # warms the frequency cache
    with native("0"):
        ref_numpy = apply(spec, x, pos)
    fused = kernel.apply_kernel(spec, x, pos, schedule="fused", threads=a.threads)
    table = kernel.apply_kernel(spec, x, pos, schedule="table", threads=a.threads)
    h = spec.rotary_dim // 2
    norm = np.hypot(ref[..., :h], ref[..., h:spec.rotary_dim])
    norm = np.concatenate([norm, norm, np.abs(ref[..., spec.rotary_dim:])], axis=-1)
    ulp = float(np.max(np.abs(fused - ref) / np.spacing(np.maximum(norm, np.finfo(np.float64).tiny))))
    out: dict[str, float | str | bool | int] = {
        "shape": a.shape, "repeat": a.repeat, "statistic": "median", "cpu_count": os.cpu_count() or 0,
        "threads": a.threads or min(8, os.cpu_count() or 1),
        "apply_native_bit_identical": bool(np.array_equal(ref.view(np.uint64), ref_numpy.view(np.uint64))),
        "fused_max_ulp_vs_apply": ulp,
        "fused_bit_identical_share": float(np.mean(fused.view(np.uint64) == ref.view(np.uint64))),
        "schedules_bit_identical": bool(np.array_equal(fused.view(np.uint64), table.view(np.uint64))),
    }
    del ref, ref_numpy, fused, table, norm

    def numpy_apply(**kw):
        with native("0"):
            return apply(spec, x, pos, **kw)

    def kern(schedule, **kw):
        return lambda: kernel.apply_kernel(spec, x, pos, schedule=schedule, threads=a.threads, **kw)

    with native(None):
        t = side_by_side({
            "copyto": lambda: np.copyto(dst, x),
            "apply": lambda: apply(spec, x, pos),
            "apply_out": lambda: apply(spec, x, pos, out=buf),
            "apply_numpy": numpy_apply,
            "apply_numpy_out": lambda: numpy_apply(out=buf),
            "kernel_fused": kern("fused"),
            "kernel_fused_out": kern("fused", out=buf),
            "kernel_table": kern("table"),
            "kernel_table_out": kern("table", out=buf),
        }, a.repeat)
    out["copyto_GBps"] = 2 * x.nbytes / t["copyto"] / 1e9
    for k, v in t.items():
        out[f"{k}_s"] = v
    for k in t:
        if k != "copyto":
            out[f"{k}_ratio_to_copyto"] = t["copyto"] / t[k]
    for k in ("apply_numpy", "kernel_fused", "kernel_table"):
        out[f"{k}_vs_apply"] = t["apply"] / t[k]
        out[f"{k}_out_vs_apply_out"] = t["apply_out"] / t[f"{k}_out"]
    for k, v in out.items():
        print(f"{k:34} {v:10.4f}" if isinstance(v, float) else f"{k:34} {v!s:>10}")
    if a.json:
        with open(a.json, "w") as f:
            json.dump(out, f, indent=1)
    return out


if __name__ == "__main__":
    res = main(sys.argv[1:])
    sys.exit(2 if "unavailable" in res else 0)
