"""Shared by the GPU-only adapter tests (tests/test_adapter_{flash_attn,liger,vllm,transformer_engine}.py).

Three kinds of tests there:

* pure mapping functions and declarations (run everywhere; no GPU, no GPU library):
  the spec -> library-argument mappings, checked against what the upstream sources read
  (cited per test), the availability / unsupported reasons;
* plumbing with stand-in libraries (run where torch imports, on the CPU): tiny torch
  implementations of each library's documented contract (written from the sources cited
  in the adapter modules, not from our reference) are put in ``sys.modules`` and the
  adapter's own ``_call`` runs against them; the result is judged by the tolerance model.
  This checks the adapter's translation (layouts, offsets, tables, reshapes), not the library;
* real GPU tests (skipped with "needs a CUDA GPU ..." without one, or with the library's
  import error when it is missing): every adapter judged with ``judge_case`` against the
  float64 reference on device="cuda".  scripts/gpu-check.sh runs them on a GPU machine.

Here: the specs and positions they share, the stand-in plumbing, and the checks every
library's file runs on its own adapters (``check_*``).
"""

from __future__ import annotations

import os
import subprocess
import sys
import types
from pathlib import Path

import numpy as np
import pytest

from ropeconf.adapters import BUILTIN, _gpu
from ropeconf.adapters._torch import cuda_available
from ropeconf.conformance.adapter import load_adapter
from ropeconf.conformance.judge import compare, judge_case, make_input, precision_for
from ropeconf.reference import RopeSpec, apply

ROOT = Path(__file__).resolve().parents[1]

_N = 32
_SF = [1.0 + 0.05 * i / _N for i in range(_N)]
_LF = [1.0 + 20.0 * i / _N for i in range(_N)]
SPECS = {
    "default": RopeSpec(head_dim=64),
    "interleaved": RopeSpec(head_dim=64, layout="interleaved"),
    "partial": RopeSpec(head_dim=80, rotary_dim=32),
    "linear": RopeSpec(head_dim=64, rope_type="linear", factor=4.0),
    "ntk": RopeSpec(head_dim=64, rope_type="ntk", factor=4.0),
    "dynamic": RopeSpec(head_dim=64, rope_type="dynamic", factor=4.0, original_max_position_embeddings=2048),
    "yarn": RopeSpec(head_dim=64, rope_type="yarn", factor=8.0, original_max_position_embeddings=4096),
    "yarn-deepseek": RopeSpec(head_dim=64, rope_type="yarn", factor=40.0, original_max_position_embeddings=4096,
                              mscale=1.0, mscale_all_dim=0.707),
    "yarn-notrunc": RopeSpec(head_dim=64, rope_type="yarn", factor=32.0, original_max_position_embeddings=4096,
                             truncate=False, attention_factor=1.25),
    # L0 = 8, factor 16: vLLM (max_model_len = 128 > L0: long factors) and the reference (positions reach
    # past L0: long factors for the call) agree
    "longrope": RopeSpec(head_dim=64, rope_type="longrope", factor=16.0, original_max_position_embeddings=8,
                         short_factor=_SF, long_factor=_LF),
    "llama3": RopeSpec(head_dim=64, rope_type="llama3", factor=8.0, original_max_position_embeddings=64,
                       low_freq_factor=1.0, high_freq_factor=4.0),
    "xpos": RopeSpec(head_dim=64, xpos=True),
    "mrope": RopeSpec(head_dim=64, rope_theta=1e6, mrope_section=[8, 12, 12]),
    "mrope-interleaved": RopeSpec(head_dim=64, rope_theta=1e6, mrope_section=[12, 10, 10], mrope_interleaved=True),
}


def _range(batch=2, seq=16, start=0):
    return np.broadcast_to(np.arange(start, start + seq, dtype=np.int64), (batch, seq)).copy()


def _streams(p):
    return np.stack([p, p // 2, p % 5], axis=-1)


PER_BATCH = np.stack([np.arange(5, 17), np.arange(300, 312)]).astype(np.int64)
ARBITRARY = np.array([[0, 7, 3, 3, 12, 40], [5, 1, 2, 99, 4, 6]], dtype=np.int64)

FA_POSITIONS = {"range": _range(), "offset": _range(start=37), "per-batch": PER_BATCH,
                "long": _range(2, 8, start=2 ** 20 - 8), "long-per-batch": np.stack([np.arange(9, 17),
                                                                                     np.arange(2 ** 19, 2 ** 19 + 8)])}
# apply-only libraries with caller tables (flash-attn, Liger, TE): every rope_type through reference tables
CALLER_TABLE_ROPE_TYPES = {"default", "linear", "ntk", "dynamic", "yarn", "longrope", "llama3"}


def gpu_builtin(family: str) -> dict[str, str]:
    """Built-in name -> ``module:attribute`` of one GPU family's CUDA adapters (a family may also have CPU
    adapters: vllm's ``vllm-cpu*``, tested in its own file)."""
    return {k: v for k, v in BUILTIN.items()
            if v.startswith(f"ropeconf.adapters.{family}:") and "cuda" in load_adapter(v).capabilities.devices}


# =========================================================================== declarations and reasons
def check_registry(family, classes):
    """test_registry_names_and_classes for one family."""
    GPU_BUILTIN = gpu_builtin(family)
    assert set(GPU_BUILTIN) == {a().name for a in classes} == {load_adapter(n).name for n in GPU_BUILTIN}
    for name, path in GPU_BUILTIN.items():
        a = load_adapter(name)
        assert a.name == name and load_adapter(path).name == path and a.capabilities.devices == ("cuda",)
        assert set(a.capabilities.dtypes) == {"float32", "float16", "bfloat16"}


def check_availability_reasons(monkeypatch, classes, library_cls, mod):
    """test_availability_names_the_missing_gpu_and_library: ``library_cls`` names ``mod`` once a GPU is there."""
    monkeypatch.setattr(_gpu, "cuda_available", lambda: False)
    for cls in classes:
        why = cls().availability()
        assert why is not None and why.startswith(_gpu.NO_GPU), (cls, why)
    # with a GPU but without the library: the import error alone
    monkeypatch.setattr(_gpu, "cuda_available", lambda: True)
    real_import = _gpu.importlib.import_module

    def fake_import(name, *a):
        if name.split(".")[0] in ("flash_attn", "liger_kernel", "vllm", "transformer_engine"):
            raise ModuleNotFoundError(f"No module named {name.split('.')[0]!r}")
        if name == "torch":  # torch present (also where this test runs without it)
            return types.ModuleType("torch")
        return real_import(name, *a)

    monkeypatch.setattr(_gpu.importlib, "import_module", fake_import)
    why = library_cls().availability()
    assert _gpu.NO_GPU not in why and mod in why and "ModuleNotFoundError" in why, why


def check_no_gpu_only(monkeypatch, classes):
    """test_availability_without_a_gpu_only (the library itself already patched in by the caller where needed)."""
    monkeypatch.setattr(_gpu, "cuda_available", lambda: False)
    monkeypatch.setattr(_gpu, "_import_reasons", lambda mods: [])
    for cls in classes:
        assert cls().availability() == _gpu.NO_GPU


def check_no_gpu_refusal(monkeypatch, cls, spec):
    """test_no_gpu_means_cuda_unavailable_and_cpu_unsupported for one class."""
    monkeypatch.setattr(_gpu, "cuda_available", lambda: False)
    a = cls()
    import ropeconf.conformance.adapter as adapter_mod

    monkeypatch.setattr(adapter_mod, "cuda_unavailable", lambda: "no CUDA device: torch.cuda.is_available() is False")
    assert "device=cpu not supported" in a.why_unsupported(spec, "float32", "cpu", _range())
    assert a.why_unsupported(spec, "float32", "cuda", _range()) is None  # declared; the machine lacks it
    assert "torch.cuda.is_available() is False" in a.device_unavailable("cuda")
    assert "dtype=float64 not supported" in a.why_unsupported(spec, "float64", "cuda", _range())
    x = make_input(spec, 2, 1, 16, "float32", 0)
    with pytest.raises(ValueError, match="torch.cuda.is_available"):  # refuses before touching a GPU library
        a.run(x, _range(), spec, dtype="float32", device="cuda")


def check_gpu_check_plan(family):
    """test_gpu_check_script_plans_every_step_and_adapter: every step, and ``family``'s adapters in the run."""
    GPU_BUILTIN = gpu_builtin(family)
    script = ROOT / "scripts" / "gpu-check.sh"
    assert os.access(script, os.X_OK)
    assert subprocess.run(["bash", "-n", str(script)]).returncode == 0
    env = {**os.environ, "ROPE_GPU_CHECK_DRY_RUN": "1", "ROPE_VENV": str(Path(sys.executable).parents[1])}
    out = subprocess.run(["bash", str(script)], capture_output=True, text=True, env=env, timeout=120)
    assert out.returncode == 0, out.stderr
    text = out.stdout
    for needle in ("setup-venv.sh", "download.pytorch.org/whl/", "cupy-cuda1", "flash-attn --no-build-isolation",
                   "liger-kernel", " vllm ", "transformer_engine[pytorch]", "gpu-parity",
                   "tests/test_adapter_flash_attn.py tests/test_adapter_liger.py tests/test_adapter_vllm.py "
                   "tests/test_adapter_transformer_engine.py tests/test_reference_properties.py "
                   "-k cuda\\ or\\ cupy\\ or\\ gpu",
                   "--device cuda", "--json out/gpu.json --report out/gpu.html"):
        assert needle in text, needle
    run_line = [ln for ln in text.splitlines() if " run --device cuda " in ln][0]
    for name, path in GPU_BUILTIN.items():
        assert (f" {name} " in run_line) if name in BUILTIN else (f" {path} " in run_line), name
    for name in ("hf", "rotary-torch", "torchtune", "torch-onnx"):
        assert f" {name} " in run_line


# =========================================================================== plumbing with stand-in libraries
try:
    import torch
except Exception:  # the pure tests run without torch
    torch = None
needs_torch = pytest.mark.skipif(torch is None, reason="torch not installed (the stand-in plumbing tests need it)")


def _install(monkeypatch, name: str, **attrs):
    """Put a stand-in module and its parents in sys.modules."""
    parts = name.split(".")
    for i in range(1, len(parts) + 1):
        mod_name = ".".join(parts[:i])
        mod = types.ModuleType(mod_name)
        monkeypatch.setitem(sys.modules, mod_name, mod)
        if i > 1:
            setattr(sys.modules[".".join(parts[:i - 1])], parts[i - 1], mod)
    for k, v in attrs.items():
        setattr(sys.modules[name], k, v)
    return sys.modules[name]


def _pairs(x, r, interleaved):
    return (x[..., 0:r:2], x[..., 1:r:2]) if interleaved else (x[..., : r // 2], x[..., r // 2: r])


def _join(o1, o2, interleaved):
    return torch.stack([o1, o2], -1).flatten(-2) if interleaved else torch.cat([o1, o2], -1)


def _judge_cpu(adapter, spec, positions, dtype="float32", heads=3, role="query"):
    """The adapter's own _call on the CPU (stand-in library), judged by the tolerance model."""
    from ropeconf.adapters._torch import to_numpy

    positions = np.asarray(positions, dtype=np.int64)
    x = make_input(spec, positions.shape[0], heads, positions.shape[1], dtype, 1)
    with torch.no_grad():
        y = to_numpy(adapter._call(x, positions, spec, dtype, "cpu", role))
    expected = np.asarray(apply(spec, np.asarray(x).astype(np.float64), positions, role=role))
    ratio, *_ = compare(spec, y, expected, positions, precision_for(adapter, dtype))
    return ratio


# =========================================================================== real GPU tests
needs_gpu = pytest.mark.skipif(not cuda_available(), reason="needs a CUDA GPU (torch.cuda.is_available() is False)")


def _gpu_adapter(cls):
    a = cls()
    why = a.availability()
    if why:
        pytest.skip(f"{a.name} unavailable: {why}")
    return a


def _assert_conforms_gpu(a, spec, positions, dtype):
    res = judge_case(a, spec, positions, dtype=dtype, device="cuda", heads=3, seed=7)
    assert res.outcome == "conforms", f"{a.name} {dtype}: {res.outcome}: {res.message}"
    return res


GPU_DTYPES = ["float32", "bfloat16"]
