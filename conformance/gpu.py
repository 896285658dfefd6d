"""``ropeconf gpu-parity``: the reference on CuPy vs NumPy, and CUDA vs CPU for adapters.

The reference half is ``ropeconf parity --backend cupy --device cuda``
(``parity.py``: one implementation for every backend and device); this adds
the torch adapters on CUDA vs CPU.  Without CuPy or a CUDA device it says why
and exits 2 (it cannot check anything), so a GPU job that silently lost its
GPU fails loudly.
"""

from __future__ import annotations

import argparse
import sys
import time

from .parity import BOUND_ULP, gpu_unavailable_reason, parity, ulp_diff  # noqa: F401  (re-exported)

TORCH_ADAPTERS = ("hf", "rotary-torch", "torchtune", "torchtune-llama3", "torch-onnx")


def cmd_gpu_parity(args: argparse.Namespace) -> int:
    why = gpu_unavailable_reason()
    if why:
        print(f"gpu-parity: cannot run: {why}", file=sys.stderr)
        return 2
    t0 = time.time()
    par = parity("cupy", "cuda")
    tot = par["totals"]
    print(f"CuPy vs NumPy reference over {len(par['cases'])} golden cases: cos/sin max "
          f"{tot['cos_sin']['max_ulp']:.2f} ulp, xpos max {tot['xpos']['max_ulp']:.2f} ulp, apply max "
          f"{tot['apply']['max_ulp']:.2f} ulp of the pair norm ({tot['apply_net']['max_ulp']:.2f} beyond the "
          f"cos/sin tables' own difference) -> {'OK' if par['ok'] else 'MISMATCH'} (bound {BOUND_ULP:g} ulp; "
          f"`ropeconf parity --backend cupy --device cuda` has the per-case table)")
    from .config import RunConfig
    from .outcome import decide
    from .presentation import render_matrix
    from .runner import run_isolated

    names = list(args.adapter) if args.adapter else list(TORCH_ADAPTERS)
    cfg = RunConfig(dtypes=("float32", "bfloat16"), devices=("cpu", "cuda"), profile="ci")
    result = {"adapters": run_isolated(names, cfg, jobs=1), "seconds": time.time() - t0}
    print(render_matrix(result))
    return 0 if par["ok"] and decide(result).exit_code == 0 else 1
