"""The fused kernel (reference/kernel/rope_dd.cuh), compiled for the CPU, against the reference and the golden corpus.

The GPU kernel and the CPU build are the same inline functions, so what is proved
here about the arithmetic holds for the GPU build too, provided NVRTC honours
``--fmad=false`` (not yet checked on a GPU: docs/kernel.md).

* Golden corpus, every case: cos/sin within 2 ulp of the value, ``apply`` (every
  input dtype, both roles for xPos, both CPU schedules) within 2 ulp of the pair
  norm (conformance/gpu.py ``ulp_diff`` convention); the counts of bit-identical
  values are printed.
* Hypothesis: random specs of every variant and positions up to 2**24 (the
  reference's own strategies), kernel vs reference; kernel vs the mpmath oracle
  (the reference's 2**-52 bound).
* Exactness: the compiled constants are the reference's bit for bit; the Dekker
  product is exact on hard inputs (checked with fractions), alone and inside the
  angle pipeline; ``dd_angle`` is bit-identical to the reference's.
* Planted changes are detected: the source with a contracted (fused) product, and
  the real source built with ``-ffp-contract=fast`` (FMA hardware).

Skipped, with the reason, where there is no C compiler.
"""

from __future__ import annotations

import math
import platform
import sys
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ropeconf.golden_data import corpus
from ropeconf.reference import RopeSpec, _dd, apply, cos_sin, kernel

REASON = kernel.kernel_unavailable_reason()
pytestmark = pytest.mark.skipif(REASON is not None, reason=REASON or "")

BOUND_ULP = 2.0
TINY = np.finfo(np.float64).tiny
FAST = settings(derandomize=True, deadline=None, database=None, print_blob=True,
                suppress_health_check=list(HealthCheck))


# =============================================================================== helpers
def ulp_diff(a, b, scale) -> float:
    """max |a - b| in ulps of ``scale`` (conformance/gpu.py ``ulp_diff``); NaN/inf must match exactly."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    fin = np.isfinite(b)
    if not np.array_equal(np.isnan(a), np.isnan(b)) or not np.array_equal(a[~fin & ~np.isnan(b)],
                                                                          b[~fin & ~np.isnan(b)]):
        return math.inf
    if not fin.any():
        return 0.0
    with np.errstate(over="ignore", invalid="ignore"):  # a planted build may be off by 1e300 ulps
        d = np.abs(a[fin] - b[fin]) / np.spacing(np.maximum(np.abs(np.asarray(scale, dtype=np.float64)[fin]), TINY))
    return float(np.max(d))


def pair_norm(y, rotary_dim: int, layout: str) -> np.ndarray:
    """Per-element norm of the rotated pair (tail: |y|) (conformance/tolerance.py ``pair_norm``)."""
    y = np.asarray(y, dtype=np.float64)
    out = np.abs(y).copy()
    h = rotary_dim // 2
    sl = (slice(0, h), slice(h, rotary_dim)) if layout == "half" else (slice(0, rotary_dim, 2),
                                                                     slice(1, rotary_dim, 2))
    n = np.hypot(y[..., sl[0]], y[..., sl[1]])
    out[..., sl[0]], out[..., sl[1]] = n, n
    return out


def same_bits(a, b) -> bool:
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return a.shape == b.shape and np.array_equal(a.view(np.uint64), b.view(np.uint64))


def golden_comparison(lib=None, schedules=kernel.SCHEDULES) -> dict:
    """Kernel vs every golden case: worst ulps and bit-identical counts (also used by the planted tests)."""
    st_ = {"cases": 0, "cos_sin_ulp": 0.0, "cos_sin_worst": "", "cos_sin_identical": 0, "cos_sin_values": 0,
           "apply_ulp": 0.0, "apply_worst": "", "apply_identical": 0, "apply_values": 0, "schedules_differ": []}
    for case, arrays in corpus.iter_cases():
        spec = RopeSpec.from_dict(case["spec"])
        pos = arrays["positions"]
        c, s = kernel.cos_sin_kernel(spec, pos, lib=lib)
        for got, name in ((c, "cos"), (s, "sin")):
            u = ulp_diff(got, arrays[name], arrays[name])
            if u > st_["cos_sin_ulp"]:
                st_["cos_sin_ulp"], st_["cos_sin_worst"] = u, f"{case['id']} {name}"
            st_["cos_sin_identical"] += int(np.sum(got.view(np.uint64) == arrays[name].view(np.uint64)))
            st_["cos_sin_values"] += got.size
        for dt in corpus.INPUT_DTYPES:
            x = corpus.input_array(arrays, dt)
            roles = [("query", f"expected_{dt}")] + ([("key", f"expected_key_{dt}")] if spec.xpos else [])
            for role, key in roles:
                exp = arrays[key]
                outs = {sch: kernel.apply_kernel(spec, x, pos, role=role, schedule=sch, lib=lib) for sch in schedules}
                first = outs[schedules[0]]
                if any(not same_bits(o, first) for o in outs.values()):
                    st_["schedules_differ"].append(f"{case['id']} {dt} {role}")
                u = ulp_diff(first, exp, pair_norm(exp, spec.rotary_dim, spec.layout))
                if u > st_["apply_ulp"]:
                    st_["apply_ulp"], st_["apply_worst"] = u, f"{case['id']} {dt} {role}"
                st_["apply_identical"] += int(np.sum(first.view(np.uint64) == exp.view(np.uint64)))
                st_["apply_values"] += first.size
        st_["cases"] += 1
    return st_


# =============================================================================== golden corpus
@pytest.fixture(scope="module")
def golden():
    return golden_comparison()


def test_golden_corpus_within_2_ulp(golden, capsys, record_property):
    g = golden
    record_property("kernel_golden", {k: v for k, v in g.items() if k != "schedules_differ"})
    with capsys.disabled():
        print(f"\n[kernel vs golden] {g['cases']} cases: cos/sin max {g['cos_sin_ulp']:.2f} ulp "
              f"({g['cos_sin_identical']}/{g['cos_sin_values']} bit-identical), apply max {g['apply_ulp']:.2f} "
              f"ulp of the pair norm ({g['apply_identical']}/{g['apply_values']} bit-identical)")
    assert g["cases"] == len(corpus.read_manifest()["cases"]) > 0
    assert g["cos_sin_ulp"] <= BOUND_ULP, g["cos_sin_worst"]
    assert g["apply_ulp"] <= BOUND_ULP, g["apply_worst"]


def test_golden_schedules_bit_identical(golden):
    """The fused (GPU) loop and the CPU table schedule compute the same bits."""
    assert golden["schedules_differ"] == []


# =============================================================================== exactness
def test_compile_flags_forbid_contraction():
    lib = kernel.build_library()
    cmd = lib.rope_build_command
    assert "-ffp-contract=off" in cmd and "-fno-fast-math" in cmd
    assert not any(f in cmd for f in ("-ffast-math", "-Ofast", "-ffp-contract=fast", "-ffp-contract=on"))
    assert "--fmad=false" in kernel.NVRTC_OPTIONS
    src = kernel.kernel_source()
    assert "__device__ __forceinline__" in src and "extern \"C\" __global__ void rope_apply_fused_kernel" in src


def test_header_refuses_fast_math():
    with pytest.raises(RuntimeError, match="fast-math"):
        kernel.build_library(flags=kernel.CFLAGS + ("-ffast-math",))


def test_constants_are_the_references_bit_for_bit():
    got = kernel.compiled_constants()
    want = {m: float(getattr(_dd, n)) for m, n in kernel._CONSTANTS}
    assert {k: v.hex() for k, v in got.items()} == {k: v.hex() for k, v in want.items()}
    # and the split halves are what the reference's split gives
    assert (_dd._C1H, _dd._C1L) == _dd._split_scalar(_dd._C1)


def hard_products(n: int = 3000, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Operands whose exact product needs all 106 bits, plus the split's edge cases."""
    rng = np.random.default_rng(seed)
    odd = (rng.integers(2 ** 52, 2 ** 53, n) | 1).astype(np.float64)   # full 53-bit odd significands
    a = np.ldexp(odd, rng.integers(-200, 150, n)) * rng.choice([-1.0, 1.0], n)
    b = np.ldexp((rng.integers(2 ** 52, 2 ** 53, n) | 1).astype(np.float64), rng.integers(-200, 150, n))
    edges = [2.0 ** 53 - 1, 1 + 2.0 ** -52, 1 - 2.0 ** -53, np.nextafter(2.0, 0), 2.0 ** 27 - 1, 2.0 ** 27 + 1,
             134217729.0, *map(float.fromhex, ("0x1.fffffffp0", "0x1.0000001p0", "0x1.ffffffe000001p0",
                                               "0x1.0000003ffffffp0")),
             _dd._C1, _dd._C2, _dd._TWO_OVER_PI, 2.0 ** 24 - 1, 16777213.0, np.pi, 1 / 3]
    e = np.array(edges)
    ea, eb = np.meshgrid(np.concatenate([e, -e]), e)
    # positions up to 2**24 times frequencies, as the kernel multiplies them
    p = rng.integers(0, 2 ** 24, n).astype(np.float64)
    w = 10000.0 ** -(rng.integers(0, 64, n) / 64.0)
    return np.concatenate([a, ea.ravel(), p]), np.concatenate([b, eb.ravel(), w])


def inexact_products(lib) -> int:
    """How many hard products the build gets wrong: p + e != a*b, as a hook and inside dd_angle (w_lo = 0)."""
    a, b = hard_products()
    p, e = kernel.two_prod(a, b, lib=lib)
    hi, lo = kernel.dd_angle(a, b, np.zeros_like(b), lib=lib)
    bad = 0
    for x, y, p1, e1, h2, l2 in zip(a.tolist(), b.tolist(), p.tolist(), e.tolist(), hi.tolist(), lo.tolist()):
        exact = Fraction(x) * Fraction(y)
        bad += (Fraction(p1) + Fraction(e1) != exact) + (Fraction(h2) + Fraction(l2) != exact)
    return bad


def test_two_prod_exact_on_hard_inputs():
    assert inexact_products(kernel.build_library()) == 0


def test_dd_angle_bit_identical_to_reference():
    """No libm in the angle: the kernel's dd angle is the reference's, bit for bit."""
    rng = np.random.default_rng(3)
    n = 20000
    p = np.concatenate([rng.integers(0, 2 ** 24, n).astype(np.float64), rng.uniform(-2.0 ** 24, 2.0 ** 24, n)])
    w_hi = 10000.0 ** -(rng.uniform(0, 1, 2 * n)) * rng.uniform(0.5, 4, 2 * n)
    w_lo = w_hi * 2.0 ** -54 * rng.uniform(-1, 1, 2 * n)
    hi, lo = kernel.dd_angle(p, w_hi, w_lo)
    rh, rl = _dd.dd_angle(p, w_hi, w_lo)
    assert same_bits(hi, rh) and same_bits(lo, rl)


@pytest.mark.parametrize("top", [2.0 ** 25, 2.0 ** 40])
def test_cos_sin_dd_paths_agree_and_match_reference(top):
    """The |k| < 2**26 split path and the two_prod path give the same bits (the kernel decides per
    element, the reference per array); the result is within 1 ulp of the reference (libm)."""
    rng = np.random.default_rng(4)
    a_hi = rng.uniform(-top, top, 20000)
    a_lo = np.spacing(a_hi) * rng.uniform(-0.5, 0.5, a_hi.size)
    if top < _dd._SMALL_K:
        c1, s1 = kernel.cos_sin_dd(a_hi, a_lo, path=1)
        c2, s2 = kernel.cos_sin_dd(a_hi, a_lo, path=2)
        assert same_bits(c1, c2) and same_bits(s1, s2)
    c, s = kernel.cos_sin_dd(a_hi, a_lo)
    rc, rs = _dd.cos_sin_dd(np, a_hi, a_lo)
    assert ulp_diff(c, rc, rc) <= 1 and ulp_diff(s, rs, rs) <= 1


def test_kernel_polynomials_within_1_ulp():
    """fdlibm k_cos/k_sin on [-pi/4, pi/4] against mpmath: < 1 ulp (docs/kernel.md: measured 0.74 / 0.72)."""
    mpmath = pytest.importorskip("mpmath")
    rng = np.random.default_rng(5)
    r = np.concatenate([rng.uniform(-np.pi / 4, np.pi / 4, 3000), [np.pi / 4, -np.pi / 4, 0.3, 2.0 ** -27, 1e-300]])
    c, s = kernel.kernel_cos_sin(r)
    ctx = mpmath.mp.clone()
    ctx.prec = 160
    worst = 0.0
    for x, cv, sv in zip(r.tolist(), c.tolist(), s.tolist()):
        for got, exact in ((cv, ctx.cos(ctx.mpf(x))), (sv, ctx.sin(ctx.mpf(x)))):
            worst = max(worst, float(abs(ctx.mpf(got) - exact) / np.spacing(abs(float(exact)))))
    assert worst < 1.0, worst
    assert math.copysign(1.0, kernel.kernel_cos_sin(np.array([-0.0]))[1][0]) == -1.0  # sin(-0) = -0


# =============================================================================== planted changes
# What a contracting compiler emits for `ah * bh - pp` with pp = a * b: the product a*b fused
# into the subtraction, so the error term no longer matches the rounded pp.
CONTRACTED = ("*e = (((ah * bh - pp) + ah * bl) + al * bh) + al * bl;",
              "*e = (((fma(-a, b, ah * bh)) + ah * bl) + al * bh) + al * bl;")


def test_planted_contracted_source_is_detected():
    src = kernel.kernel_source()
    assert CONTRACTED[0] in src, "the planted edit no longer applies: update CONTRACTED"
    planted = kernel.build_library(source=src.replace(*CONTRACTED))
    assert inexact_products(planted) > 0
    g = golden_comparison(lib=planted, schedules=("fused",))
    assert g["cos_sin_ulp"] > 1000 and g["apply_ulp"] > 1000


def _fma_flags() -> tuple[str, ...] | None:
    m = platform.machine().lower()
    if m in ("x86_64", "amd64"):
        try:
            flags = Path("/proc/cpuinfo").read_text().split()
        except OSError:
            return None
        return ("-mfma",) if "fma" in flags else None
    if m in ("aarch64", "arm64", "ppc64le", "s390x"):
        return ()  # FMA is in the base ISA
    return None


def test_planted_contracting_build_is_detected():
    """The real source built with -ffp-contract=fast on FMA hardware: the checks above catch it."""
    extra = _fma_flags()
    if extra is None:
        pytest.skip(f"no FMA instructions known on this CPU ({platform.machine()}): cannot build the planted variant")
    flags = tuple("-ffp-contract=fast" if f == "-ffp-contract=off" else f for f in kernel.CFLAGS) + extra
    planted = kernel.build_library(flags=flags)
    caught = inexact_products(planted) > 0
    g = golden_comparison(lib=planted, schedules=("fused",))
    assert caught or g["cos_sin_ulp"] > BOUND_ULP or g["apply_ulp"] > BOUND_ULP


# =============================================================================== hypothesis vs reference
tra = None
try:  # the reference's own strategies (tests/ is on sys.path under pytest)
    import test_reference_accuracy as tra
except ImportError:
    pass

if tra is not None:
    CASES = tra.cases(max_tokens=6)
    ROLES = st.sampled_from(["query", "key"])
else:  # pragma: no cover - only when the shared strategies are missing
    CASES = st.nothing()
    ROLES = st.nothing()


@pytest.mark.skipif(tra is None, reason="tests/test_reference_accuracy.py (shared strategies) not importable")
@settings(FAST, max_examples=300)
@given(case=CASES)
def test_cos_sin_matches_reference(case):
    """Random specs of every variant, positions up to 2**24 (near it, at thresholds, real, negative)."""
    spec, pos, seq_len = case
    c, s = kernel.cos_sin_kernel(spec, pos, seq_len)
    rc, rs = cos_sin(spec, pos, seq_len)
    assert c.shape == rc.shape and s.shape == rs.shape
    assert ulp_diff(c, rc, rc) <= BOUND_ULP and ulp_diff(s, rs, rs) <= BOUND_ULP


def diff_bound_ulps(spec, positions, seq_len, role) -> float:
    """How far the kernel's apply may be from the reference's, in ulps of the output pair norm.

    The two differ only in cos/sin of the reduced argument (fdlibm polynomials vs libm), by at
    most 1 ulp <= u = 2**-53 each (|cos|, |sin| < 1).  Per pair (a, b), magnitude m:
    out = fl(fl(a fl(c m)) -+ fl(b fl(s m))).  Each side rounds c m, s m (absent when m == 1),
    the two products and the sum: <= u m (2 (|a c| + |b s|) + |out|) <= 3 u m |pair| (2 without
    a magnitude); the cos/sin difference moves the exact value by <= sqrt(2) u m |pair|.  Sum over
    both sides: 6 + 1.42 -> 8 (5.42 -> 6 with m == 1), in u m |pair| <= ulps of the output norm.
    The golden corpus meets 2 ulp (test_golden_corpus_within_2_ulp); the 614 400 values of
    test_threads_do_not_change_bits reach 3 (1-ulp cos/sin differences times an attention
    factor of 1.19).
    """
    plan = kernel._plan(spec, positions, seq_len, role)
    return 6.0 if plan.mag_strides == (0, 0) and plan.mag[0] == 1.0 else 8.0


@pytest.mark.skipif(tra is None, reason="tests/test_reference_accuracy.py (shared strategies) not importable")
@settings(FAST, max_examples=200)
@given(case=CASES, role=ROLES, data=st.data())
def test_apply_matches_reference(case, role, data):
    spec, pos, seq_len = case
    rng = np.random.default_rng(data.draw(st.integers(0, 2 ** 32 - 1)))
    heads = data.draw(st.sampled_from([None, 1, 3]))
    if heads is None:
        x = rng.standard_normal(pos.shape[:1] + (spec.head_dim,))
        p = pos
    else:  # positions (batch, seq) against x (batch, heads, seq, head_dim): the heads axis is inserted
        p = pos[None]
        x = rng.standard_normal((1, heads, pos.shape[0], spec.head_dim))
    ref = apply(spec, x, p, seq_len, role=role)
    bound = diff_bound_ulps(spec, p, seq_len, role)
    for sch in kernel.SCHEDULES:
        got = kernel.apply_kernel(spec, x, p, seq_len, role=role, schedule=sch)
        assert got.shape == ref.shape
        assert ulp_diff(got, ref, pair_norm(ref, spec.rotary_dim, spec.layout)) <= bound
        assert same_bits(got[..., spec.rotary_dim:], ref[..., spec.rotary_dim:])  # the tail passes through


@pytest.mark.skipif(tra is None, reason="tests/test_reference_accuracy.py (shared strategies) not importable")
@settings(FAST, max_examples=60)
@given(case=CASES, role=ROLES, data=st.data())
def test_apply_within_the_references_bound_of_exact(case, role, data):
    """The kernel's apply meets the reference's own documented bound against the mpmath oracle
    (tests/test_reference_accuracy.py ``check_apply_against``: K u M |pair|, K = 5/8/12)."""
    spec, pos, seq_len = case
    xs = data.draw(tra.x_rows(spec.head_dim, pos.shape[0]))
    out = kernel.apply_kernel(spec, xs, pos, seq_len, role=role)
    tra.check_apply_against(spec, out, pos, tra._eff_seq_len(pos, seq_len), xs, role)


@pytest.mark.skipif(tra is None, reason="tests/test_reference_accuracy.py (shared strategies) not importable")
@settings(FAST, max_examples=40)
@given(case=CASES)
def test_cos_sin_within_2_pow_m52_of_exact(case):
    """The kernel meets the reference's documented bound against the mpmath oracle on its own."""
    from oracle import mpf, oracle_cos_sin, oracle_default_seq_len

    spec, pos, seq_len = case
    c, s = kernel.cos_sin_kernel(spec, pos, seq_len)
    L = seq_len if seq_len is not None else oracle_default_seq_len(pos.tolist())
    bound = mpf(2) ** -52
    for i in range(pos.shape[0]):
        coords = pos[i].item() if spec.n_streams == 1 else [v.item() for v in pos[i]]
        ec, es = oracle_cos_sin(spec, coords, L)
        for j in range(spec.n_pairs):
            assert abs(mpf(float(c[i, j])) - ec[j]) <= bound and abs(mpf(float(s[i, j])) - es[j]) <= bound


# =============================================================================== semantics
def test_shapes_broadcasting_and_out():
    spec = RopeSpec(head_dim=96, rotary_dim=64, layout="interleaved", rope_type="yarn", factor=8.0,
                    original_max_position_embeddings=4096)
    rng = np.random.default_rng(6)
    pos = rng.integers(0, 2 ** 20, (2, 5))
    for x, p in ((rng.standard_normal((2, 3, 5, 96)), pos),          # heads axis inserted
                 (rng.standard_normal((5, 96)), pos),                # x broadcast against positions
                 (rng.standard_normal((4, 96)), np.int64(77)),       # 0-d positions
                 (rng.standard_normal((2, 5, 96)).astype(np.float32), pos)):
        ref = apply(spec, x, p)
        got = kernel.apply_kernel(spec, x, p)
        assert got.shape == ref.shape
        bound = diff_bound_ulps(spec, p, None, "query")
        assert ulp_diff(got, ref, pair_norm(ref, spec.rotary_dim, spec.layout)) <= bound
    x = rng.standard_normal((2, 3, 5, 96))
    buf = np.empty_like(x)
    assert kernel.apply_kernel(spec, x, pos, out=buf) is buf
    with pytest.raises(ValueError, match="out must be"):
        kernel.apply_kernel(spec, x, pos, out=np.empty((2, 3, 5, 95)))
    c, s = kernel.cos_sin_kernel(spec, pos)
    assert c.shape == cos_sin(spec, pos)[0].shape == (2, 5, 32)
    empty = kernel.apply_kernel(spec, np.zeros((0, 96)), np.zeros((0,), dtype=np.int64))
    assert empty.shape == (0, 96)


def test_nan_propagates_and_errors_match_reference():
    spec = RopeSpec(head_dim=8)
    x = np.ones((3, 8))
    x[1, 2] = np.nan
    y = kernel.apply_kernel(spec, x, np.arange(3))
    assert np.array_equal(np.isnan(y), np.isnan(apply(spec, x, np.arange(3))))
    with pytest.raises(ValueError, match="head_dim=8"):
        kernel.apply_kernel(spec, np.ones((3, 7)), np.arange(3))
    dyn = RopeSpec(head_dim=8, rope_type="dynamic", factor=2.0, original_max_position_embeddings=16)
    with pytest.raises(ValueError, match="must be integers"):
        kernel.apply_kernel(dyn, x, np.array([0.5, 1.0, 2.0]))
    with pytest.raises(ValueError, match="role"):
        kernel.apply_kernel(spec, x, np.arange(3), role="value")
    with pytest.raises(ValueError, match="schedule"):
        kernel.apply_kernel(spec, x, np.arange(3), schedule="gpu")


def test_threads_do_not_change_bits():
    spec = RopeSpec(head_dim=128, rope_type="longrope", longrope_switch="position", factor=32.0,
                    original_max_position_embeddings=4096, short_factor=[1.0 + i / 256 for i in range(64)],
                    long_factor=[1.0 + 3 * i * i / 4096 for i in range(64)], xpos=False)
    rng = np.random.default_rng(7)
    x = rng.standard_normal((2, 4, 600, 128))
    pos = np.broadcast_to(np.arange(3800, 4400), (2, 600))
    ys = [kernel.apply_kernel(spec, x, pos, schedule=s, threads=t) for s in kernel.SCHEDULES for t in (1, 3)]
    assert all(same_bits(y, ys[0]) for y in ys)
    ref = apply(spec, x, pos)
    assert ulp_diff(ys[0], ref, pair_norm(ref, 128, "half")) <= diff_bound_ulps(spec, pos, None, "query")


def test_no_compiler_gives_a_reason(tmp_path):
    """Without a C compiler the module still imports and says why (the tests then skip with it)."""
    import os
    import subprocess

    code = ("import numpy as np\n"
            "from ropeconf.reference import RopeSpec, apply, kernel\n"
            "print(kernel.kernel_unavailable_reason())\n"
            "x = np.ones((2, 4, 2048, 8)); spec = RopeSpec(head_dim=8)\n"  # a large x: apply falls back to NumPy
            "assert kernel.rotate_native(x, *[np.ones((2048, 4))] * 2, 8, True) is None\n"
            "print(apply(spec, x, np.arange(2048)).shape)\n")
    env = {**os.environ, "CC": "/nonexistent/cc", "ROPECONF_CACHE_DIR": str(tmp_path)}
    r = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert "no C compiler found" in r.stdout and "(2, 4, 2048, 8)" in r.stdout


def test_cupy_path_is_guarded():
    """The GPU entry points exist; without CuPy/GPU they say why (they have never run: docs/kernel.md)."""
    reason = kernel.cupy_unavailable_reason()
    if reason is not None:
        assert isinstance(reason, str) and reason
        with pytest.raises(Exception):
            kernel.cupy_apply_kernel(RopeSpec(head_dim=8), np.ones((1, 8)), np.arange(1))
    else:  # pragma: no cover - needs a CUDA GPU
        import cupy

        spec = RopeSpec(head_dim=64, rope_type="yarn", factor=8.0, original_max_position_embeddings=4096)
        x = np.random.default_rng(8).standard_normal((2, 3, 17, 64))
        pos = np.broadcast_to(np.arange(2 ** 20 - 17, 2 ** 20), (2, 17))
        got = cupy.asnumpy(kernel.cupy_apply_kernel(spec, x, pos))
        assert same_bits(got, kernel.apply_kernel(spec, x, pos))


# =============================================================================== apply's compiled fast path
@pytest.fixture
def native_calls(monkeypatch):
    """Counts the calls in which apply's rotation really ran in C (rotate_native returned an array)."""
    calls = {"native": 0, "numpy": 0}
    real = kernel.rotate_native

    def spy(*args, **kw):
        res = real(*args, **kw)
        calls["native" if res is not None else "numpy"] += 1
        return res

    monkeypatch.setattr(kernel, "rotate_native", spy)
    return calls


@pytest.mark.parametrize("mode", ["1", "0"])
def test_apply_reproduces_golden_corpus_bit_for_bit(mode, monkeypatch, native_calls):
    """apply with the compiled rotation forced on every size ('1') and with NumPy only ('0'): every golden
    expected array (every case, input dtype, role), bit for bit, and out= too."""
    monkeypatch.setenv(kernel.NATIVE_ENV, mode)
    n = 0
    for case, arrays in corpus.iter_cases():
        spec = RopeSpec.from_dict(case["spec"])
        pos = arrays["positions"]
        for dt in corpus.INPUT_DTYPES:
            x = corpus.input_array(arrays, dt)
            roles = [("query", f"expected_{dt}")] + ([("key", f"expected_key_{dt}")] if spec.xpos else [])
            for role, key in roles:
                got = apply(spec, x, pos, role=role)
                assert same_bits(got, arrays[key]), f"{case['id']} {dt} {role}"
                buf = np.full_like(arrays[key], np.nan)
                assert apply(spec, x, pos, role=role, out=buf) is buf and same_bits(buf, arrays[key])
                n += 2
    assert n > 0
    if mode == "1":
        assert native_calls == {"native": n, "numpy": 0}
    else:
        assert native_calls["native"] == 0


@pytest.mark.skipif(tra is None, reason="tests/test_reference_accuracy.py (shared strategies) not importable")
@settings(FAST, max_examples=150)
@given(case=CASES, role=ROLES, data=st.data())
def test_apply_native_is_bit_identical_to_numpy(case, role, data):
    """Random specs of every variant, heads axis or not, edge values, NaN and inf in x."""
    spec, pos, seq_len = case
    heads = data.draw(st.sampled_from([None, 1, 3]))
    rows = pos.shape[0] * (heads or 1)
    x = data.draw(tra.x_rows(spec.head_dim, rows, specials=(math.nan, math.inf, -math.inf)))
    if heads is None:
        p = pos
    else:
        p = pos[None]
        x = x.reshape(1, heads, pos.shape[0], spec.head_dim)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(kernel.NATIVE_ENV, "0")
        ref = apply(spec, x, p, seq_len, role=role)
        mp.setenv(kernel.NATIVE_ENV, "1")
        got = apply(spec, x, p, seq_len, role=role)
    assert got.shape == ref.shape
    nan = np.isnan(ref)
    assert np.array_equal(np.isnan(got), nan)  # NaN payloads are not compared: IEEE leaves them open
    assert same_bits(np.where(nan, 0.0, got), np.where(nan, 0.0, ref))


def test_apply_native_dispatch(monkeypatch, native_calls):
    """'auto' (the default): C for large x only; '0' never; views and odd out= arrays fall back to NumPy."""
    spec = RopeSpec(head_dim=128, rotary_dim=96, layout="interleaved", rope_type="yarn", factor=8.0,
                    original_max_position_embeddings=4096)
    rng = np.random.default_rng(9)
    pos = np.broadcast_to(np.arange(1000, 1300), (2, 300))
    x = rng.standard_normal((2, 4, 300, 128))  # 307 200 elements >= NATIVE_MIN
    assert x.size >= kernel.NATIVE_MIN
    monkeypatch.setenv(kernel.NATIVE_ENV, "0")
    ref = apply(spec, x, pos)
    ref_small = apply(spec, x[:, :1, :100], pos[:, :100])
    assert native_calls["native"] == 0
    monkeypatch.delenv(kernel.NATIVE_ENV)
    assert kernel.native_mode() == "auto"
    assert same_bits(apply(spec, x, pos), ref) and native_calls["native"] == 1
    assert same_bits(apply(spec, x[:, :1, :100].copy(), pos[:, :100]), ref_small) and native_calls["native"] == 1
    xt = np.ascontiguousarray(x.transpose(0, 2, 1, 3)).transpose(0, 2, 1, 3)  # same values, not C-contiguous
    assert same_bits(apply(spec, xt, pos), ref) and native_calls["native"] == 1
    buf = np.empty((2, 4, 300, 256))[..., :128]  # a strided out=
    assert same_bits(apply(spec, x, pos, out=buf), ref) and native_calls["native"] == 1
    xc = x.copy()
    apply(spec, xc, pos, out=xc)  # out= overlapping x: NumPy's order of operations, as before
    assert native_calls["native"] == 1
    assert same_bits(apply(spec, x.astype(np.float32).astype(np.float64), pos),
                     apply(spec, x.astype(np.float32), pos))


def test_native_bench_shape_bit_identical(monkeypatch):
    """The benchmarked case of benchmarks/bench_reference.py at a quarter of its size: C and NumPy agree."""
    spec = RopeSpec(head_dim=128)
    x = np.random.default_rng(0).standard_normal((1, 16, 2048, 128))
    pos = np.broadcast_to(np.arange(2048), (1, 2048))
    monkeypatch.setenv(kernel.NATIVE_ENV, "0")
    ref = apply(spec, x, pos)
    monkeypatch.setenv(kernel.NATIVE_ENV, "1")
    assert same_bits(apply(spec, x, pos), ref)
