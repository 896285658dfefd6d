"""Benchmarks for issues 2 and 12 (run: python benchmarks/bench_reference.py [--json out.json]).

1. Golden-corpus regeneration time (target <= 15 s on 2 cores; ``--skip-golden`` leaves it out).
2. Reference ``apply`` throughput on a (4, 16, 2048, 128) float64 tensor as a ratio to
   ``np.copyto`` bandwidth measured in the same run (target >= 0.25x; naive NumPy ~0.06x).
   Both move the same bytes (read x, write out); the ratio is copy_time / apply_time.
   ``np.copyto`` writes into a preallocated array, so ``apply(..., out=buf)`` is the like-for-like
   figure; plain ``apply`` also pays for allocating (and page-faulting) its 134 MB result.

``apply`` is timed as shipped (``$ROPECONF_NATIVE`` unset: the compiled rotation of
``ropeconf.reference.kernel`` for large NumPy inputs when a C compiler is there, bit-identical
to NumPy) and with NumPy only (``ROPECONF_NATIVE=0``, ``apply_numpy*``).  The contenders run
round-robin, ``--repeat`` times each (median reported), so a change of machine load hits all of
them alike.  Ratios are the figures; absolute times on a shared machine are noisy.

``main()`` returns the figures as a dict (for an aggregating script); ``--json`` also writes them.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import sys
import tempfile
import time
from typing import Callable

import numpy as np


def side_by_side(fns: dict[str, Callable[[], object]], repeat: int) -> dict[str, float]:
    """Median seconds per contender, the contenders interleaved round-robin ``repeat`` times."""
    ts: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(repeat):
        for k, fn in fns.items():
            t = time.perf_counter()
            fn()
            ts[k].append(time.perf_counter() - t)
    return {k: statistics.median(v) for k, v in ts.items()}


def workload(shape_text: str):
    """The benchmarked tensor: (x, positions 0..S-1 per row, default spec, two output buffers)."""
    from ropeconf.reference import RopeSpec

    shape = tuple(int(v) for v in shape_text.split(","))
    x = np.random.default_rng(0).standard_normal(shape)
    pos = np.broadcast_to(np.arange(shape[2]), (shape[0], shape[2])).astype(np.int64)
    return x, pos, RopeSpec(head_dim=shape[-1]), np.empty_like(x), np.empty_like(x)


@contextlib.contextmanager
def native(mode: str | None):
    """``$ROPECONF_NATIVE`` set to ``mode`` (None: unset) for the duration."""
    old = os.environ.get("ROPECONF_NATIVE")
    if mode is None:
        os.environ.pop("ROPECONF_NATIVE", None)
    else:
        os.environ["ROPECONF_NATIVE"] = mode
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("ROPECONF_NATIVE", None)
        else:
            os.environ["ROPECONF_NATIVE"] = old


def naive_apply(x, pos, theta=10000.0):
    """Textbook float64 NumPy RoPE (half layout), the baseline the issue quotes."""
    d = x.shape[-1]
    inv = 1.0 / theta ** (np.arange(0, d, 2) / d)
    ang = pos[..., None] * inv
    cos, sin = np.cos(ang)[:, None], np.sin(ang)[:, None]
    cos, sin = np.concatenate([cos, cos], -1), np.concatenate([sin, sin], -1)
    rot = np.concatenate([-x[..., d // 2:], x[..., : d // 2]], -1)
    return x * cos + rot * sin


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeat", type=int, default=11)
    ap.add_argument("--shape", default="4,16,2048,128", help="batch,heads,seq,head_dim")
    ap.add_argument("--skip-golden", action="store_true", help="do not time the golden-corpus regeneration")
    ap.add_argument("--json", help="write the figures here")
    a = ap.parse_args([] if argv is None else argv)
    from ropeconf.golden_data import corpus
    from ropeconf.reference import apply, kernel

    out: dict[str, float | str | bool | None] = {}
    if not a.skip_golden:
        with tempfile.TemporaryDirectory() as d:
            t = time.perf_counter()
            corpus.regenerate(d, jobs=2)
            out["golden_regenerate_s"] = time.perf_counter() - t

    x, pos, spec, dst, buf = workload(a.shape)
    with native(None):
        shipped = apply(spec, x, pos)  # warms the frequency cache; builds the C rotation (cached on disk)
    with native("0"):
        numpy_only = apply(spec, x, pos)
    out["native_unavailable_reason"] = kernel.native_unavailable_reason()
    out["native_used"] = x.size >= kernel.NATIVE_MIN and out["native_unavailable_reason"] is None
    out["apply_native_bit_identical"] = bool(np.array_equal(shipped.view(np.uint64), numpy_only.view(np.uint64)))
    del shipped, numpy_only

    def numpy_apply(**kw):
        with native("0"):
            return apply(spec, x, pos, **kw)

    t = side_by_side({
        "copyto": lambda: np.copyto(dst, x),
        "apply": lambda: apply(spec, x, pos),
        "apply_out": lambda: apply(spec, x, pos, out=buf),
        "apply_numpy": numpy_apply,
        "apply_numpy_out": lambda: numpy_apply(out=buf),
        "naive": lambda: naive_apply(x, pos),
    }, a.repeat)
    out.update({"shape": a.shape, "repeat": a.repeat, "statistic": "median", "cpu_count": os.cpu_count() or 0,
                "copyto_GBps": 2 * x.nbytes / t["copyto"] / 1e9})
    for k, v in t.items():
        out[f"{k}_s"] = v
    for k in ("apply", "apply_out", "apply_numpy", "apply_numpy_out", "naive"):
        out[f"{k}_ratio_to_copyto"] = t["copyto"] / t[k]
    for k, v in out.items():
        print(f"{k:34} {v:10.3f}" if isinstance(v, float) else f"{k:34} {v!s:>10}")
    if a.json:
        with open(a.json, "w") as f:
            json.dump(out, f, indent=1)
    return out


if __name__ == "__main__":
    main(sys.argv[1:])
    sys.exit(0)
