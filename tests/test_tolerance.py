"""The tolerance model, validated both ways (docs/tolerance.md).

1. A correct implementation written the conventional way (float32 pow for the
   frequencies, float32 angles, cos/sin and rotation in the tested dtype)
   conforms at every position up to 2**20, for float32, float16 and bfloat16.
2. Each planted bug diverges: wrong pairing, off-by-one position, exponent
   over head_dim instead of rotary_dim, wrong YaRN / LongRoPE / Llama 3 factor,
   positions or angles formed in bf16/fp16, and a sign flip.
The expected values come from the float64 reference, which tests/
test_reference_accuracy.py proves against the mpmath oracle.
"""

from __future__ import annotations

import functools

import ml_dtypes
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from toy_rope import rope_adapter, toy_rotary

from ropeconf.conformance.adapter import FunctionAdapter
from ropeconf.conformance.judge import judge_case
from ropeconf.conformance.tolerance import UNIT_ROUNDOFF, Precision, bound
from ropeconf.golden_data.corpus import round_to
from ropeconf.reference import RopeSpec, apply
from ropeconf.reference.variants import VARIANTS

TOY = FunctionAdapter(rope_adapter, "toy")


@settings(max_examples=60)
@given(start=st.integers(0, 2 ** 20 - 16), dims=st.sampled_from([(64, 64), (128, 128), (96, 64), (80, 48)]),
       dtype=st.sampled_from(["float32", "float16", "bfloat16"]), theta=st.sampled_from([1e4, 5e5, 1e6]),
       seed=st.integers(0, 1000))
def test_conventional_float32_conforms_up_to_2_20(start, dims, dtype, theta, seed):
    spec = RopeSpec(head_dim=dims[0], rotary_dim=dims[1], rope_theta=theta)
    pos = np.stack([np.arange(start, start + 16), np.arange(start, start + 16)[::-1]])
    r = judge_case(TOY, spec, pos, dtype=dtype, seed=seed)
    assert r.outcome == "conforms", r.message
    assert r.max_ratio > 0.01  # the bound is not vacuous: real rounding uses a visible share of it


@pytest.mark.parametrize("start", [2 ** 20 - 16, 2 ** 19 + 3, 4096, 0])
def test_bound_not_loose_at_long_positions(start):
    # The float32 error grows ~ p * 2**-24; the bound must grow the same way, not be a flat constant:
    # the error ratio stays in a narrow band across positions 0 .. 2**20.
    spec = RopeSpec(head_dim=128)
    pos = np.arange(start, start + 16)[None]
    r = judge_case(TOY, spec, pos, dtype="float32")
    assert 0.03 < r.max_ratio <= 1.0


def _toy_with(**kw):
    f = functools.partial(toy_rotary, **kw)

    def adapter(x, positions, spec):
        return f(x, positions, theta=spec.get("rope_theta", 1e4), rotary_dim=spec["rotary_dim"])

    adapter.ropeconf_capabilities = rope_adapter.ropeconf_capabilities
    return FunctionAdapter(adapter, "planted")


def _reference_bug(mutate, angle_dtype=None):
    """A 'library' that is the reference with one planted mistake, rounded to the tested dtype."""

    def adapter(x, positions, spec):
        wrong = mutate(RopeSpec.from_dict(spec), x, positions)
        return round_to(np.asarray(wrong), x.dtype.name)

    adapter.ropeconf_capabilities = {"rope_types": ["default", "yarn", "longrope", "llama3"],
                                     "layouts": ["half", "interleaved"], "dtypes": ["float32", "bfloat16"],
                                     "partial": True}
    return FunctionAdapter(adapter, "planted")


def _pairing(spec, x, p):
    return apply(spec.replace(layout="interleaved" if spec.layout == "half" else "half"), x.astype(float), p)


def _off_by_one(spec, x, p):
    return apply(spec, x.astype(float), p + 1)


def _sign_flip(spec, x, p):
    return apply(spec, x.astype(float), -p)


def _head_dim_exponent(spec, x, p):
    # omega_i = theta^(-2i/head_dim) instead of theta^(-2i/rotary_dim): the same as a larger theta
    r, d = spec.rotary_dim, spec.head_dim
    return apply(spec.replace(rope_theta=spec.rope_theta ** (r / d)), x.astype(float), p)


def _factor_times(k):
    def mutate(spec, x, p):
        return apply(spec.replace(factor=spec.factor * k), x.astype(float), p)
    return mutate


def _yarn_no_attention_factor(spec, x, p):
    return apply(spec.replace(attention_factor=1.0), x.astype(float), p)


PLANTED = [
    ("pairing", _pairing, "default", [(0, 8)], "float32"),
    ("pairing-bf16", _pairing, "default", [(0, 8)], "bfloat16"),
    ("off-by-one", _off_by_one, "default", [(0, 8), (1000, 8)], "float32"),
    ("off-by-one-bf16", _off_by_one, "default", [(1000, 8)], "bfloat16"),
    ("sign-flip", _sign_flip, "default", [(1, 8)], "bfloat16"),
    ("yarn-factor", _factor_times(1.25), "yarn", [(100, 8)], "float32"),
    ("yarn-attention", _yarn_no_attention_factor, "yarn", [(0, 8)], "float32"),
    ("llama3-factor", _factor_times(2.0), "llama3", [(5000, 8)], "float32"),
]


@pytest.mark.parametrize("name,mutate,variant,ranges,dtype", PLANTED, ids=[p[0] for p in PLANTED])
def test_planted_bug_diverges(name, mutate, variant, ranges, dtype):
    spec = VARIANTS[variant].spec(head_dim=96, rotary_dim=64)
    adapter = _reference_bug(mutate)
    for start, n in ranges:
        r = judge_case(adapter, spec, np.arange(start, start + n)[None], dtype=dtype)
        assert r.outcome == "diverges", (name, r.max_ratio)


def test_planted_head_dim_exponent_diverges():
    spec = RopeSpec(head_dim=128, rotary_dim=64)
    r = judge_case(_reference_bug(_head_dim_exponent), spec, np.arange(100, 108)[None], dtype="float32")
    assert r.outcome == "diverges"


def test_planted_longrope_wrong_factor_set_diverges():
    # using the short factors past the threshold (a wrong switch) is caught just above L0
    spec = VARIANTS["longrope"].spec(head_dim=64)
    L0 = spec.original_max_position_embeddings

    def short_always(sp, x, p):
        return apply(sp.replace(long_factor=list(sp.short_factor)), x.astype(float), p)

    r = judge_case(_reference_bug(short_always), spec, np.arange(L0 - 6, L0 + 2)[None], dtype="float32")
    assert r.outcome == "diverges"
    r = judge_case(_reference_bug(short_always), spec, np.arange(0, 8)[None], dtype="float32")
    assert r.outcome == "conforms"  # below the threshold the two agree: the check is specific


@pytest.mark.parametrize("kw,dtype,start", [
    ({"pos_dtype": ml_dtypes.bfloat16}, "bfloat16", 300),
    ({"pos_dtype": ml_dtypes.bfloat16}, "float32", 300),
    ({"pos_dtype": np.float16}, "float16", 5000),
    ({"pos_dtype": np.float16}, "float32", 70000),   # fp16 positions overflow above 65504
])
def test_planted_low_precision_positions_diverge(kw, dtype, start):
    r = judge_case(_toy_with(**kw), RopeSpec(head_dim=64), np.arange(start, start + 8)[None], dtype=dtype)
    assert r.outcome == "diverges", r.max_ratio


def test_planted_bf16_angles_diverge():
    def bf16_angles(x, positions, spec):
        r = spec["rotary_dim"]
        inv = (1.0 / (np.float32(spec.get("rope_theta", 1e4)) ** (np.arange(0, r, 2, dtype=np.float32) / r)))
        ang = (positions.astype(np.float32)[..., None] * inv.astype(np.float32)).astype(ml_dtypes.bfloat16)
        c = np.cos(ang.astype(np.float32))[:, None]
        s = np.sin(ang.astype(np.float32))[:, None]
        x1, x2 = x[..., : r // 2].astype(np.float32), x[..., r // 2: r].astype(np.float32)
        return np.concatenate([x1 * c - x2 * s, x2 * c + x1 * s, x[..., r:].astype(np.float32)], -1).astype(x.dtype)

    bf16_angles.ropeconf_capabilities = rope_adapter.ropeconf_capabilities
    r = judge_case(FunctionAdapter(bf16_angles), RopeSpec(head_dim=64), np.arange(500, 508)[None], dtype="bfloat16")
    assert r.outcome == "diverges"


def test_bound_components_follow_the_formula():
    # one element, worked by hand: |pair| = 5 (3-4-5), phi = 1000, float32
    y = np.array([[[[3.0, 4.0]]]])  # half layout, r = 2: pair (y0, y1)
    phi = np.full(y.shape, 1000.0)
    u32 = UNIT_ROUNDOFF["float32"]
    t = bound(y, phi, 2, "half", Precision.conventional("float32"))
    expected = 5 * (8 * u32 * 1000 + 2 * u32 + 2 * u32 + 5 * u32) + u32 * np.array([3.0, 4.0])
    np.testing.assert_allclose(t.ravel(), expected, rtol=1e-15)
    # bfloat16: compute and working precision become bf16, angle stays float32
    t16 = bound(y, phi, 2, "half", Precision.conventional("bfloat16"))
    ub = UNIT_ROUNDOFF["bfloat16"]
    np.testing.assert_allclose(t16.ravel(), 5 * (8 * u32 * 1000 + 2 * u32 + 2 * ub + 5 * ub) + ub * np.array([3., 4.]))


# ----------------------------------------------------------------------------- xPos: the scale's rounding
def _conventional_xpos(scale_base_error=0.0, zeta_offset=0.4):
    """rotary-embedding-torch's recipe, in float32: zeta = (arange(0, r, 2) + 0.4 r) / (1.4 r),
    power = (t - seq_len // 2) / B, scale = zeta ** power (query) or its inverse (key), applied to
    float32 cos/sin; the planted versions perturb B or the 0.4 offset."""

    def adapter(x, positions, spec, role="query"):
        r, d = spec["rotary_dim"], x.shape[-1]
        f32 = np.float32
        i = np.arange(0, r, 2, dtype=f32)
        inv = (f32(1.0) / (f32(spec["rope_theta"]) ** (i / f32(r)))).astype(f32)
        ang = positions.astype(f32)[..., None] * inv
        zeta = ((i + f32(zeta_offset) * f32(r)) / (f32(1.4) * f32(r))).astype(f32)
        c = positions.max() + 1
        power = ((positions.astype(f32) - f32(c // 2)) / f32(spec["xpos_scale_base"] + scale_base_error))[..., None]
        scale = (zeta ** power).astype(f32)
        if role == "key":
            scale = (f32(1.0) / scale).astype(f32)
        cos = (np.cos(ang) * scale).astype(x.dtype)[:, None]
        sin = (np.sin(ang) * scale).astype(x.dtype)[:, None]
        h = r // 2
        x1, x2 = x[..., :h], x[..., h:r]
        return np.concatenate([(x1 * cos - x2 * sin).astype(x.dtype), (x2 * cos + x1 * sin).astype(x.dtype),
                               x[..., r:]], axis=-1)

    adapter.ropeconf_capabilities = {"rope_types": ["default"], "layouts": ["half"], "xpos": True,
                                     "dtypes": ["float32", "float16", "bfloat16"], "partial": True}
    return FunctionAdapter(adapter, "xpos")


# |p - c| / B reaches 32 at p = 0 when the sequence ends at 2**15 (c = 2**14): there the scale's
# error dominates (the angle term is ~0 at small positions)
XPOS_POSITIONS = [np.array([[0, 1, 2, 3, 32764, 32765, 32766, 32767]]),
                  np.array([list(range(8)) + list(range(16000, 16008))]),
                  np.arange(2 ** 14, 2 ** 14 + 48)[None]]


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
@pytest.mark.parametrize("role", ["query", "key"])
@pytest.mark.parametrize("k", range(len(XPOS_POSITIONS)))
def test_conventional_float32_xpos_conforms(dtype, role, k):
    """The xPos term (docs/tolerance.md): zeta's and the power's float32 rounding amplified by the power."""
    spec = RopeSpec(head_dim=64, xpos=True)
    r = judge_case(_conventional_xpos(), spec, XPOS_POSITIONS[k], dtype=dtype, role=role)
    assert r.outcome == "conforms", r.message
    assert r.max_ratio > 0.05  # the bound is not vacuous: the real error uses a visible share of it


@pytest.mark.parametrize("bug", [dict(scale_base_error=1.0), dict(zeta_offset=0.401)], ids=["B+1", "zeta"])
def test_planted_xpos_bug_diverges(bug):
    spec = RopeSpec(head_dim=64, xpos=True)
    pos = np.arange(2 ** 14, 2 ** 14 + 48)[None]
    r = judge_case(_conventional_xpos(**bug), spec, pos, dtype="float32")
    assert r.outcome == "diverges" and r.max_ratio > 10, r.max_ratio


def test_xpos_term_without_it_the_conventional_scale_would_diverge():
    """Why the term exists: with it removed, the conventional float32 scale exceeds the bound."""
    from ropeconf.conformance import judge as judge_mod

    spec = RopeSpec(head_dim=64, xpos=True)
    pos = XPOS_POSITIONS[0]
    real = judge_mod.xpos_error_factor
    try:
        judge_mod.xpos_error_factor = lambda s, p, n=None: np.zeros_like(real(s, p, n))
        r = judge_case(_conventional_xpos(), spec, pos, dtype="float32")
    finally:
        judge_mod.xpos_error_factor = real
    assert r.outcome == "diverges" and r.max_ratio > 2


def test_ntk_exponent_term_uses_the_scaled_base():
    """NTK computes omega = b'^(-2i/r) from the scaled base: its exponent rounding is amplified by |ln omega|,
    larger than |ln omega0|; the term grows accordingly (and stays 0 for the unscaled pairs' first one)."""
    from ropeconf.conformance.tolerance import C_PHI, angle_error_factor
    from ropeconf.reference import inv_freq

    spec = RopeSpec(head_dim=64, rope_type="ntk", factor=16.0)
    w0 = inv_freq(RopeSpec(head_dim=64))[0]
    w = inv_freq(spec)[0]
    fac = angle_error_factor(spec)
    assert np.allclose(fac, C_PHI + np.abs(np.log(w)))
    assert fac[-1] > C_PHI + abs(np.log(w0[-1])) + 1.0
