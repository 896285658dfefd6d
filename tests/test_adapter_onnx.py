"""ONNX-family adapters (adapters/onnx.py) against the float64 reference.

Error measure: for every rotated pair, |y_pair - ref_pair| / |ref_pair| (the
reference applied to the same, already rounded, input).  Bounds, with u the
unit roundoff of the tested dtype (2**-24 for float32):

* reference caches, any position: the cache entries are fl(att*cos), fl(att*sin)
  (one rounding each), then two products and one sum in the working precision.
  Per component |err| <= u*(2*(|c x1| + |s x2|) + |o|) + O(u**2); as a pair
  norm that is <= (2*sqrt(2) + 1) * u * |pair| ~= 3.83 u.  We assert 4 u at
  positions 0..15, 2**10 and 2**20 - 16 (measured max: 2.3 u).
* float32 caches, positions < 16: the float32 angle p*w is off by <= u*p*w <= 15 u,
  NumPy's float32 cos/sin add a few ulps, the application adds <= 4 u: we assert
  64 u (measured max: 6.5 u).  At 2**20 the angle error dominates: we assert it
  is visible (> 100 u) and below (p + 64) u (measured: 4.4e5 u ~ 0.42 p u).
"""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest

from ropeconf.conformance.adapter import load_adapter
from ropeconf.reference import RopeSpec, apply
from ropeconf.reference.dtypes import numpy_dtype

onnx_mod = pytest.importorskip("ropeconf.adapters.onnx")

U = {"float64": 2.0 ** -53, "float32": 2.0 ** -24, "float16": 2.0 ** -11, "bfloat16": 2.0 ** -8}

# adapter name -> libraries it needs
NEEDS = {
    "onnx-ref": ("onnx",),
    "onnx-ref-f32cache": ("onnx",),
    "ort": ("onnx", "onnxruntime"),
    "ort-f32cache": ("onnx", "onnxruntime"),
    "ort-contrib": ("onnx", "onnxruntime"),
    "ropeconf.adapters.onnx:OrtContribRotaryF32Cache": ("onnx", "onnxruntime"),
    "torch-onnx": ("torch",),
    "ropeconf.adapters.onnx:TorchOnnxRotaryF32Cache": ("torch",),
}
REASON = {
    "onnx": "onnx not installed (pip install 'rope-conformance[onnx]')",
    "onnxruntime": "onnxruntime not installed (pip install 'rope-conformance[onnx]')",
    "torch": "torch not installed (pip install torch==2.13.0)",
}
REF = ["onnx-ref", "ort", "ort-contrib", "torch-onnx"]
F32 = ["onnx-ref-f32cache", "ort-f32cache", "ropeconf.adapters.onnx:OrtContribRotaryF32Cache",
       "ropeconf.adapters.onnx:TorchOnnxRotaryF32Cache"]


def get(name: str):
    for mod in NEEDS[name]:
        if mod == "onnxruntime":
            try:  # import it with its cache redirected, before importorskip sees it
                onnx_mod._import_ort()
            except ImportError:
                pass
        pytest.importorskip(mod, reason=REASON[mod])
    return load_adapter(name)


def _bf16_safe(x, dtype):
    return x.astype(numpy_dtype(dtype))


def pair_error(spec: RopeSpec, y, ref) -> float:
    """max over pairs of |y - ref| / |ref| (pairs as the layout defines them)."""
    r, h = spec.rotary_dim, spec.n_pairs
    i1, i2 = (np.arange(h), np.arange(h) + h) if spec.layout == "half" else \
        (np.arange(0, r, 2), np.arange(1, r, 2))
    err = np.hypot(y[..., i1] - ref[..., i1], y[..., i2] - ref[..., i2])
    norm = np.hypot(ref[..., i1], ref[..., i2])
    return float(np.max(err / norm))


def run(adapter, spec, positions, dtype="float32", seed=0, heads=3, role="query"):
    rng = np.random.default_rng(seed)
    b, s = positions.shape[:2]
    x = _bf16_safe(rng.standard_normal((b, heads, s, spec.head_dim)), dtype)
    y = np.asarray(adapter.run(x, positions, spec, dtype=dtype, role=role), dtype=np.float64)
    ref = apply(spec, x.astype(np.float64), positions, role=role)
    assert y.shape == x.shape
    return x.astype(np.float64), y, ref


def positions_from(start: int, b: int = 2, s: int = 16):
    return start + np.arange(s)[None].repeat(b, 0)


# ---------------------------------------------------------------- reference caches
@pytest.mark.parametrize("layout", ["half", "interleaved"])
@pytest.mark.parametrize("start", [0, 2 ** 10, 2 ** 20 - 16])
@pytest.mark.parametrize("name", REF)
def test_ref_cache_float32_any_position(name, layout, start):
    a = get(name)
    spec = RopeSpec(head_dim=64, layout=layout)
    _, y, ref = run(a, spec, positions_from(start))
    assert pair_error(spec, y, ref) <= 4 * U["float32"]


@pytest.mark.parametrize("name", REF)
def test_ref_cache_arbitrary_positions_and_partial(name):
    a = get(name)
    rng = np.random.default_rng(5)
    pos = rng.integers(0, 2 ** 20, (3, 9))
    pos[1, :4] = pos[1, 4]                      # repeated positions: fewer cache rows than seq_len
    for layout in ("half", "interleaved"):
        spec = RopeSpec(head_dim=40, rotary_dim=24, layout=layout)
        x, y, ref = run(a, spec, pos, seed=1)
        assert pair_error(spec, y, ref) <= 4 * U["float32"]
        assert np.array_equal(y[..., 24:], x[..., 24:]), "the unrotated tail must pass through bit-exactly"


@pytest.mark.parametrize("name", REF)
@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_ref_cache_low_precision(name, dtype):
    a = get(name)
    spec = RopeSpec(head_dim=32, layout="interleaved")
    why = a.why_unsupported(spec, dtype, "cpu")
    if why:
        pytest.skip(why)
    _, y, ref = run(a, spec, positions_from(2 ** 20 - 16), dtype=dtype)
    assert pair_error(spec, y, ref) <= 4 * U[dtype]


@pytest.mark.parametrize("name", REF)
def test_ref_cache_variants(name):
    """Scaled and multi-stream variants: the op applies whatever the caches say."""
    a = get(name)
    cases = [
        (RopeSpec(head_dim=32, rope_type="yarn", factor=4.0, original_max_position_embeddings=64),
         positions_from(100)),
        (RopeSpec(head_dim=16, rope_type="longrope", original_max_position_embeddings=8, factor=4.0,
                  short_factor=[1.0 + i / 8 for i in range(8)], long_factor=[2.0 + i for i in range(8)],
                  longrope_switch="position"), positions_from(0)),
        (RopeSpec(head_dim=32, xpos=True), positions_from(0)),
        (RopeSpec(head_dim=32, axial_axes=2, layout="interleaved"),
         np.stack([positions_from(0), positions_from(7) // 3], -1)),
        (RopeSpec(head_dim=32, mrope_section=(8, 4, 4)),
         np.stack([positions_from(3), positions_from(0) % 4, positions_from(0) // 4], -1)),
    ]
    ran = 0
    for spec, pos in cases:
        for role in ("query", "key"):
            if a.why_unsupported(spec, "float32", "cpu", pos):
                continue
            _, y, ref = run(a, spec, pos, role=role)
            assert pair_error(spec, y, ref) <= 4 * U["float32"], spec
            ran += 1
    assert ran >= 4


def test_compact_cache_matches_full_cache():
    """Long/negative positions use a compact cache (distinct rows); same values as the full one."""
    a, b = get("onnx-ref"), get("onnx-ref")
    b.full_cache_max_elements = 0              # always compact
    spec = RopeSpec(head_dim=16, rotary_dim=8)
    x = np.random.default_rng(2).standard_normal((2, 2, 5, 16)).astype(np.float32)
    pos = np.array([[0, 3, 3, 9, 1], [4, 4, 4, 4, 4]])
    assert np.array_equal(np.asarray(a.run(x, pos, spec, dtype="float32")),
                          np.asarray(b.run(x, pos, spec, dtype="float32")))
    neg = pos - 6                                # negative positions: compact form only
    _, y, ref = run(a, spec, neg)
    assert pair_error(spec, y, ref) <= 4 * U["float32"]


# ---------------------------------------------------------------- float32 caches
@pytest.mark.parametrize("layout", ["half", "interleaved"])
@pytest.mark.parametrize("name", F32)
def test_f32_cache_short_and_long(name, layout):
    a = get(name)
    spec = RopeSpec(head_dim=64, layout=layout)
    _, y, ref = run(a, spec, positions_from(0))
    assert pair_error(spec, y, ref) <= 64 * U["float32"]
    p = 2 ** 20 - 16
    _, y, ref = run(a, spec, positions_from(p))
    e = pair_error(spec, y, ref)
    assert 100 * U["float32"] < e <= (p + 64) * U["float32"]


@pytest.mark.parametrize("name", F32)
def test_f32_cache_partial_tail(name):
    a = get(name)
    spec = RopeSpec(head_dim=24, rotary_dim=8, layout="interleaved")
    x, y, ref = run(a, spec, positions_from(3, b=1, s=5))
    assert np.array_equal(y[..., 8:], x[..., 8:])
    assert pair_error(spec, y, ref) <= 64 * U["float32"]


# ---------------------------------------------------------------- declarations
def test_declared_dtypes_and_features():
    spec = RopeSpec(head_dim=16)
    xpos = RopeSpec(head_dim=16, xpos=True)
    axial = RopeSpec(head_dim=16, axial_axes=2)
    mrope = RopeSpec(head_dim=16, mrope_section=(4, 2, 2))
    checked = 0
    for name in REF + F32:
        try:
            a = get(name)
        except pytest.skip.Exception:
            continue
        checked += 1
        assert a.why_unsupported(spec, "float32", "cpu") is None
        assert a.why_unsupported(RopeSpec(head_dim=16, rotary_dim=4), "float32", "cpu") is None
        f64 = a.why_unsupported(spec, "float64", "cpu")
        assert (f64 is None) == type(a).name.startswith("torch-onnx"), (a.name, f64)
        if type(a).name.startswith("ort"):
            assert a.why_unsupported(spec, "bfloat16", "cpu") is not None
            assert a.why_unsupported(spec, "float16", "cpu") is None
        else:
            assert a.why_unsupported(spec, "bfloat16", "cpu") is None
        assert (a.why_unsupported(xpos, "float32", "cpu") is None) == (a.cache == "ref"), a.name
        multi = type(a).name.startswith("ort-contrib")
        assert (a.why_unsupported(axial, "float32", "cpu") is None) != multi, a.name
        assert (a.why_unsupported(mrope, "float32", "cpu") is None) != multi, a.name
        with pytest.raises(ValueError, match="not supported"):
            a.run(np.zeros((1, 1, 2, 16), np.float32), np.zeros((1, 2), np.int64), spec, dtype="float64") \
                if f64 else a.run(np.zeros((1, 1, 2, 16)), np.zeros((1, 2), np.int64), spec,
                                  dtype="float64", device="nowhere")
    if not checked:
        pytest.skip("no ONNX-family library installed")


def test_ort_cuda_declared_only_with_provider():
    a = get("ort")
    ort = onnx_mod._import_ort()
    why = a.why_unsupported(RopeSpec(head_dim=16), "float32", "cuda")
    assert (why is None) == ("CUDAExecutionProvider" in ort.get_available_providers())


def test_onnxruntime_import_does_not_write_home(tmp_path):
    get("ort")
    env = dict(os.environ, HOME=str(tmp_path))
    env.pop("XDG_CACHE_HOME", None)
    subprocess.run([sys.executable, "-c", "from ropeconf.adapters.onnx import _import_ort; _import_ort()"],
                   env=env, check=True, timeout=60)
    assert not any(tmp_path.rglob("*")), sorted(str(p) for p in tmp_path.rglob("*"))
