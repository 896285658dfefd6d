"""Benchmarks for issue 2 (run: python benchmarks/bench_reference.py).

1. Golden-corpus regeneration time (target <= 15 s on 2 cores).
2. Reference ``apply`` throughput on a (4, 16, 2048, 128) float64 tensor as a ratio to
   ``np.copyto`` bandwidth measured in the same run (target >= 0.25x; naive NumPy ~0.06x).
   Both move the same bytes (read x, write out); the ratio is copy_time / apply_time.
   ``np.copyto`` writes into a preallocated array, so ``apply(..., out=buf)`` is the like-for-like
   figure; plain ``apply`` also pays for allocating (and page-faulting) its 134 MB result.
Ratios are reported, measured side by side; absolute times on this machine are noisy.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time

import numpy as np


def best_of(fn, repeat: int) -> float:
    ts = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t)
    return min(ts)


def naive_apply(x, pos, theta=10000.0):
    """Textbook float64 NumPy RoPE (half layout), the baseline the issue quotes."""
    d = x.shape[-1]
    inv = 1.0 / theta ** (np.arange(0, d, 2) / d)
    ang = pos[..., None] * inv
    cos, sin = np.cos(ang)[:, None], np.sin(ang)[:, None]
    cos, sin = np.concatenate([cos, cos], -1), np.concatenate([sin, sin], -1)
    rot = np.concatenate([-x[..., d // 2:], x[..., : d // 2]], -1)
    return x * cos + rot * sin


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--shape", default="4,16,2048,128")
    ap.add_argument("--json", help="write the figures here")
    a = ap.parse_args()
    from ropeconf.golden_data import corpus
    from ropeconf.reference import RopeSpec, apply

    out: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as d:
        t = time.perf_counter()
        corpus.regenerate(d, jobs=2)
        out["golden_regenerate_s"] = time.perf_counter() - t

    shape = tuple(int(v) for v in a.shape.split(","))
    rng = np.random.default_rng(0)
    x = rng.standard_normal(shape)
    pos = np.broadcast_to(np.arange(shape[2]), (shape[0], shape[2])).astype(np.int64)
    spec = RopeSpec(head_dim=shape[-1])
    dst = np.empty_like(x)
    apply(spec, x, pos)  # warm the frequency cache
    t_copy = best_of(lambda: np.copyto(dst, x), a.repeat)
    t_apply = best_of(lambda: apply(spec, x, pos), a.repeat)
    buf = np.empty_like(x)
    t_apply_out = best_of(lambda: apply(spec, x, pos, out=buf), a.repeat)
    t_naive = best_of(lambda: naive_apply(x, pos), a.repeat)
    out.update({"copyto_GBps": 2 * x.nbytes / t_copy / 1e9, "apply_ratio_to_copyto": t_copy / t_apply,
                "apply_out_ratio_to_copyto": t_copy / t_apply_out,
                "naive_ratio_to_copyto": t_copy / t_naive, "apply_s": t_apply, "copyto_s": t_copy})
    for k, v in out.items():
        print(f"{k:28} {v:10.3f}")
    if a.json:
        with open(a.json, "w") as f:
            json.dump(out, f, indent=1)


if __name__ == "__main__":
    main()
