"""``ropeconf gpu-parity``: the reference on CuPy vs NumPy, and CUDA vs CPU for adapters.

Import-guarded: without CuPy or a CUDA device it says why and exits 2 (it
cannot check anything), so a GPU job that silently lost its GPU fails loudly.
"""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any

import numpy as np

TORCH_ADAPTERS = ("hf", "rotary-torch", "torchtune", "torchtune-llama3", "torch-onnx")


def gpu_unavailable_reason() -> str | None:
    try:
        import cupy
    except Exception as e:
        return f"CuPy not importable: {type(e).__name__}: {e}"
    try:
        if cupy.cuda.runtime.getDeviceCount() < 1:
            return "CuPy found no CUDA device"
    except Exception as e:
        return f"no CUDA device: {type(e).__name__}: {e}"
    return None


def ulp_diff(a: np.ndarray, b: np.ndarray, scale: np.ndarray) -> float:
    """max |a - b| in units of the ulp of ``scale`` (for cos/sin: of the value; for outputs: of the pair norm)."""
    return float(np.max(np.abs(a - b) / np.spacing(np.maximum(np.abs(scale), np.finfo(np.float64).tiny))))


def cupy_parity(golden_dir: str | None = None) -> dict[str, Any]:
    """Max ulp difference CuPy vs NumPy over every golden case, for cos, sin and apply (all input dtypes)."""
    import cupy

    from ropeconf.conformance.tolerance import pair_norm
    from ropeconf.golden_data import corpus
    from ropeconf.reference import RopeSpec, apply, cos_sin

    worst = {"cos_sin_ulp": 0.0, "apply_ulp": 0.0, "cases": 0}
    for case, arrays in corpus.iter_cases(golden_dir):
        spec = RopeSpec.from_dict(case["spec"])
        pos = arrays["positions"]
        c, s = cos_sin(spec, pos)
        cg, sg = cos_sin(spec, cupy.asarray(pos))
        worst["cos_sin_ulp"] = max(worst["cos_sin_ulp"], ulp_diff(cupy.asnumpy(cg), c, c),
                                   ulp_diff(cupy.asnumpy(sg), s, s))
        for dt in corpus.INPUT_DTYPES:
            x = corpus.input_array(arrays, dt).astype(np.float64)
            y = apply(spec, x, pos)
            yg = cupy.asnumpy(apply(spec, cupy.asarray(x), cupy.asarray(pos)))
            worst["apply_ulp"] = max(worst["apply_ulp"], ulp_diff(yg, y, pair_norm(y, spec.rotary_dim, spec.layout)))
        worst["cases"] += 1
    return worst


def cmd_gpu_parity(args: argparse.Namespace) -> int:
    why = gpu_unavailable_reason()
    if why:
        print(f"gpu-parity: cannot run: {why}", file=sys.stderr)
        return 2
    t0 = time.time()
    par = cupy_parity()
    ok = par["cos_sin_ulp"] <= 2 and par["apply_ulp"] <= 2
    print(f"CuPy vs NumPy reference over {par['cases']} golden cases: cos/sin max {par['cos_sin_ulp']:.2f} ulp, "
          f"apply max {par['apply_ulp']:.2f} ulp of the pair norm -> {'OK' if ok else 'MISMATCH'} (bound 2 ulp)")
    from .config import RunConfig
    from .outcome import decide
    from .presentation import render_matrix
    from .runner import run_isolated

    names = list(args.adapter) if args.adapter else list(TORCH_ADAPTERS)
    cfg = RunConfig(dtypes=("float32", "bfloat16"), devices=("cpu", "cuda"), profile="ci")
    result = {"adapters": run_isolated(names, cfg, jobs=1), "seconds": time.time() - t0}
    print(render_matrix(result))
    return 0 if ok and decide(result).exit_code == 0 else 1
