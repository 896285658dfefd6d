"""Accuracy of the float64 reference against the independent mpmath oracle (tests/oracle.py).

Claims proved here (every expected value comes from ``oracle`` at 50 digits):

* ``cos_sin``: |cos - exact| <= 2**-52 and |sin - exact| <= 2**-52 for every
  variant, at integer positions up to 2**24 (and real positions), including
  positions near 2**24 and near every scaling threshold.
* ``inv_freq``: each float64 frequency is the exact frequency correctly rounded;
  the attention factor is within 1 ulp of the exact one.
* ``apply``: every output within K * 2**-53 * M * |pair| of the exact rotation
  (K derived in ``_apply_bound``), the pass-through tail bit-for-bit.
* The naive float64 ``np.cos(p * w)`` fails the 2**-52 bound at p = 1e6..1e7
  (so the bound is not vacuous) while the reference meets it.

Strategies are shared with test_reference_properties.py (import ``rope_specs``).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from oracle import (ctx, mpf, oracle_apply, oracle_cos_sin, oracle_default_seq_len, oracle_inv_freq,
                    oracle_magnitude, oracle_n_freqs, oracle_n_streams, oracle_pair_map,
                    oracle_xpos_scale)
from ropeconf.reference import LAYOUTS, ROPE_TYPES, RopeSpec, apply, cos_sin, inv_freq, xpos_scale

U = 2.0 ** -53                      # unit roundoff of binary64
COS_SIN_BOUND = mpf(2) ** -52       # the documented absolute bound on cos/sin
P24 = 2 ** 24

FAST = settings(derandomize=True, deadline=None, database=None, print_blob=True,
                suppress_health_check=list(HealthCheck))


def examples(n: int) -> settings:
    """Deterministic (derandomize), no deadline, no example database, n examples."""
    return settings(FAST, max_examples=n)


# =============================================================================== strategies
def _sections(draw, n: int, k: int) -> tuple[int, ...]:
    cuts = sorted(draw(st.lists(st.integers(0, n), min_size=k - 1, max_size=k - 1)))
    edges = [0, *cuts, n]
    return tuple(edges[i + 1] - edges[i] for i in range(k))


THETAS = st.one_of(st.sampled_from([10000.0, 500000.0, 1000000.0, 150000.0, 1.5, 2.0, 1e8]),
                   st.floats(1.0001, 1e9))
FACTORS = st.one_of(st.sampled_from([2.0, 4.0, 8.0, 16.0, 32.0, 40.0, 64.0, 1.0]),
                    st.floats(0.1, 128.0))
L0S = st.one_of(st.sampled_from([2048, 4096, 8192, 32768]), st.integers(2, 2 ** 17))
XPOS_BASES = st.sampled_from([512.0, 256.0, 1024.0, 64.0, 4096.0])  # general bases: see test_xpos_scale_general_base


@st.composite
def rope_specs(draw, types=ROPE_TYPES, allow_multi=True, allow_xpos=True, allow_partial=True,
               max_pairs=32):
    """A valid RopeSpec of any rope_type, freqs_for, layout, partial rotary, xPos, axial, M-RoPE."""
    t = draw(st.sampled_from(types))
    kw: dict = {"rope_type": t, "layout": draw(st.sampled_from(LAYOUTS))}
    multi = draw(st.sampled_from(["none", "none", "none", "axial", "mrope", "mrope_i"])) if allow_multi else "none"
    min_nf = 2 if t in ("ntk", "dynamic") else 1
    if multi == "axial":
        axes = draw(st.integers(2, 3))
        nf = draw(st.integers(min_nf, max(min_nf, max_pairs // axes)))
        n = axes * nf
        kw["axial_axes"] = axes
    else:
        n = draw(st.integers(min_nf, max_pairs))
        nf = n
        if multi == "mrope":
            kw["mrope_section"] = _sections(draw, n, draw(st.integers(1, 4)))
        elif multi == "mrope_i":
            kw["mrope_section"] = _sections(draw, n, 3)
            kw["mrope_interleaved"] = True
    r = 2 * n
    if allow_partial and draw(st.booleans()):
        if draw(st.booleans()):
            prf = draw(st.sampled_from([0.5, 0.25]))
            kw["head_dim"], kw["partial_rotary_factor"] = int(r / prf), prf
        else:
            kw["head_dim"], kw["rotary_dim"] = r + draw(st.sampled_from([1, 2, 6, 16])), r
    else:
        kw["head_dim"] = r
    kw["rope_theta"] = draw(THETAS)
    if t in ("default", "linear"):
        ff = draw(st.sampled_from(["lang", "lang", "pixel", "constant", "custom"]))
        kw["freqs_for"] = ff
        if ff == "pixel":
            kw["max_freq"] = draw(st.floats(0.1, 512.0))
        elif ff == "constant":
            kw["num_freqs"] = nf
        elif ff == "custom":
            kw["inv_freq"] = tuple(draw(st.lists(st.floats(-10.0, 10.0), min_size=nf, max_size=nf)))
    if t != "default":
        kw["factor"] = draw(FACTORS)
    if t in ("dynamic", "yarn", "longrope", "llama3"):
        kw["original_max_position_embeddings"] = draw(L0S)
    if t == "yarn":
        bs = draw(st.one_of(st.sampled_from([1.0, 0.5, 2.0]), st.floats(0.01, 64.0)))
        kw["beta_slow"] = bs
        kw["beta_fast"] = draw(st.one_of(st.sampled_from([max(32.0, bs), bs]), st.floats(bs, 256.0)))
        kw["truncate"] = draw(st.booleans())
        kind = draw(st.sampled_from(["plain", "mscale", "attention_factor"]))
        if kind == "mscale":
            kw["mscale"] = draw(st.one_of(st.sampled_from([0.0, 1.0, 0.707]), st.floats(0.0, 2.0)))
            kw["mscale_all_dim"] = draw(st.one_of(st.sampled_from([0.0, 1.0, 0.707]), st.floats(0.0, 2.0)))
        elif kind == "attention_factor":
            kw["attention_factor"] = draw(st.floats(0.1, 4.0))
    if t == "longrope":
        kw["short_factor"] = tuple(draw(st.lists(st.floats(0.5, 64.0), min_size=nf, max_size=nf)))
        kw["long_factor"] = tuple(draw(st.lists(st.floats(0.5, 64.0), min_size=nf, max_size=nf)))
        kw["longrope_switch"] = draw(st.sampled_from(["sequence", "position"]))
        if draw(st.booleans()):
            kw.pop("factor")
            kw["max_position_embeddings"] = draw(st.integers(1, 2 ** 20))
        if draw(st.booleans()):
            kw["attention_factor"] = draw(st.floats(0.1, 4.0))
    if t == "llama3":
        lo = draw(st.one_of(st.sampled_from([1.0, 0.5]), st.floats(0.25, 4.0)))
        kw["low_freq_factor"] = lo
        kw["high_freq_factor"] = draw(st.one_of(st.sampled_from([lo, 4.0 * lo]), st.floats(lo, 16.0 * lo)))
    if allow_xpos and draw(st.integers(0, 4)) == 0:
        kw["xpos"] = True
        kw["xpos_scale_base"] = draw(XPOS_BASES)
        if draw(st.booleans()):
            kw["xpos_center"] = float(draw(st.integers(-P24, P24)))
    return RopeSpec(**kw)


def _coord(draw, spec: RopeSpec, allow_negative: bool):
    L0 = spec.original_max_position_embeddings
    opts = [st.integers(0, P24), st.integers(P24 - 4, P24), st.integers(0, 16)]
    if L0:
        opts.append(st.integers(max(0, L0 - 2), L0 + 2))
    if allow_negative:
        opts.append(st.integers(-P24, -1))
    return draw(st.one_of(*opts))


@st.composite
def cases(draw, spec_strategy=None, max_tokens=3, allow_float=True):
    """(spec, positions ndarray (k,) or (k, n_streams), seq_len or None)."""
    spec = draw(spec_strategy if spec_strategy is not None else rope_specs())
    ns = oracle_n_streams(spec)
    k = draw(st.integers(1, max_tokens))
    int_only = spec.rope_type in ("dynamic", "longrope")
    seq_len = None
    if spec.xpos:
        # Keep |p - centre| / B <= 160 so zeta^power stays within ~e^+-200 (no overflow).
        span = int(160 * spec.xpos_scale_base)
        if spec.xpos_center is not None:
            centre = int(spec.xpos_center)
        else:
            centre = draw(st.integers(0, P24))
            seq_len = 2 * centre + draw(st.integers(0, 1))  # floor(seq_len / 2) == centre
            if seq_len < 1:
                seq_len = 1
                centre = 0
        coords = [[centre + draw(st.integers(-span, span)) for _ in range(ns)] for _ in range(k)]
    else:
        use_float = allow_float and not int_only and draw(st.integers(0, 3)) == 0
        if use_float:
            coords = [[draw(st.floats(-P24, P24, allow_nan=False)) for _ in range(ns)] for _ in range(k)]
        else:
            coords = [[_coord(draw, spec, allow_negative=not int_only) for _ in range(ns)] for _ in range(k)]
    if spec.rope_type in ("dynamic", "longrope") and seq_len is None and draw(st.booleans()):
        L0 = spec.original_max_position_embeddings
        seq_len = draw(st.one_of(st.integers(max(1, L0 - 1), L0 + 1), st.integers(1, P24)))
    dtype = np.float64 if any(isinstance(c, float) for row in coords for c in row) else np.int64
    pos = np.array(coords, dtype=dtype)
    if ns == 1:
        pos = pos[:, 0]
    return spec, pos, seq_len


def _row_positions(pos: np.ndarray, i: int, ns: int):
    row = pos[i]
    if ns == 1:
        v = row.item()
        return v
    return [v.item() for v in row]


def _eff_seq_len(pos: np.ndarray, seq_len):
    return seq_len if seq_len is not None else oracle_default_seq_len(pos.tolist())


def _ulps(err, bound):
    return float(err / bound)


# =============================================================================== cos / sin
def check_cos_sin(spec: RopeSpec, pos: np.ndarray, seq_len=None, bound=COS_SIN_BOUND):
    c, s = cos_sin(spec, pos, seq_len)
    ns = oracle_n_streams(spec)
    L = _eff_seq_len(pos, seq_len)
    assert c.shape == pos.shape[:pos.ndim - (ns > 1)] + (spec.rotary_dim // 2,)
    assert c.dtype == np.float64 and s.dtype == np.float64
    worst = mpf(0)
    for i in range(pos.shape[0]):
        p = _row_positions(pos, i, ns)
        oc, osn = oracle_cos_sin(spec, p, L)
        for j in range(len(oc)):
            ec = abs(mpf(float(c[i, j])) - oc[j])
            es = abs(mpf(float(s[i, j])) - osn[j])
            assert ec <= bound and es <= bound, (
                f"pair {j} position {p} seq_len {L}: cos {c[i, j]!r} vs {ctx.nstr(oc[j], 20)} "
                f"({_ulps(ec, bound):.3f}x bound), sin {s[i, j]!r} vs {ctx.nstr(osn[j], 20)} "
                f"({_ulps(es, bound):.3f}x bound); spec {spec.to_dict()}")
            worst = max(worst, ec, es)
    return worst


@examples(150)
@given(cases())
def test_cos_sin_within_2_pow_m52(case):
    spec, pos, seq_len = case
    check_cos_sin(spec, pos, seq_len)


@examples(40)
@given(st.data())
def test_cos_sin_every_rope_type_near_2_pow_24(data):
    """Every rope_type at positions P24-8..P24 (the float32-exact limit every port relies on)."""
    for t in ROPE_TYPES:
        spec = data.draw(rope_specs(types=(t,), allow_xpos=False, max_pairs=16), label=t)
        ns = oracle_n_streams(spec)
        p = data.draw(st.lists(st.integers(P24 - 8, P24), min_size=ns, max_size=ns))
        pos = np.array([p], dtype=np.int64)
        check_cos_sin(spec, pos if ns > 1 else pos[:, 0])


# One hand-written spec per feature, so that coverage never depends on what the
# strategies happen to draw.
PHI3_SHORT = tuple(1.0 + 0.05 * i for i in range(48))
PHI3_LONG = tuple(1.0 + 1.3 * i for i in range(48))
CATALOGUE = {
    "roformer-interleaved": dict(head_dim=64, layout="interleaved"),
    "neox-partial-25%": dict(head_dim=128, partial_rotary_factor=0.25),
    "linear-pi": dict(head_dim=64, rope_type="linear", factor=4.0),
    "ntk": dict(head_dim=64, rope_type="ntk", factor=8.0),
    "dynamic": dict(head_dim=64, rope_type="dynamic", factor=2.0, original_max_position_embeddings=2048),
    "yarn-truncate": dict(head_dim=128, rope_type="yarn", factor=16.0, original_max_position_embeddings=4096),
    "yarn-no-truncate": dict(head_dim=64, rope_type="yarn", factor=32.0, rope_theta=150000.0,
                             original_max_position_embeddings=4096, truncate=False),
    "yarn-deepseek": dict(head_dim=64, rope_type="yarn", factor=40.0, original_max_position_embeddings=4096,
                          mscale=1.0, mscale_all_dim=0.707),
    "yarn-attention-factor": dict(head_dim=64, rope_type="yarn", factor=4.0, attention_factor=0.8,
                                  original_max_position_embeddings=4096),
    "longrope-sequence": dict(head_dim=96, rope_type="longrope", original_max_position_embeddings=4096,
                              max_position_embeddings=131072, short_factor=PHI3_SHORT, long_factor=PHI3_LONG),
    "longrope-position": dict(head_dim=96, rope_type="longrope", factor=32.0, original_max_position_embeddings=4096,
                              short_factor=PHI3_SHORT, long_factor=PHI3_LONG, longrope_switch="position"),
    "llama3": dict(head_dim=128, rope_type="llama3", rope_theta=500000.0, factor=8.0,
                   original_max_position_embeddings=8192, low_freq_factor=1.0, high_freq_factor=4.0),
    "pixel": dict(head_dim=32, freqs_for="pixel", max_freq=256.0),
    "pixel-linear-1pair": dict(head_dim=2, rope_type="linear", factor=2.0, freqs_for="pixel", max_freq=64.0),
    "constant": dict(head_dim=16, freqs_for="constant", num_freqs=8),
    "custom": dict(head_dim=8, freqs_for="custom", inv_freq=(1.0, 0.1, -0.37, 3e-5)),
    "axial-2d-pixel": dict(head_dim=64, axial_axes=2, freqs_for="pixel", max_freq=128.0),
    "axial-3d-lang": dict(head_dim=48, axial_axes=3),
    "mrope-qwen2vl": dict(head_dim=128, rope_theta=1e6, mrope_section=(16, 24, 24)),
    "mrope-qwen3vl": dict(head_dim=128, rope_theta=5e6, mrope_section=(24, 20, 20), mrope_interleaved=True),
    "xpos": dict(head_dim=64, xpos=True),
    "xpos-centre": dict(head_dim=64, layout="interleaved", xpos=True, xpos_center=100.0, xpos_scale_base=256.0),
}


@pytest.mark.parametrize("name", sorted(CATALOGUE))
def test_catalogue_against_oracle(name):
    spec = RopeSpec(**CATALOGUE[name])
    ns = oracle_n_streams(spec)
    rng = np.random.default_rng(len(name))
    if spec.xpos:
        centre = int(spec.xpos_center) if spec.xpos_center is not None else 40_000
        p1 = np.array([0, 1, 99, 100, 101, centre - 20_000, centre + 20_000])
        seq_len = None if spec.xpos_center is not None else 2 * centre
    else:
        p1 = np.array([0, 1, 4095, 4096, 4097, 8191, 8192, 8193, 123_457, P24 - 1, P24])
        seq_len = None
    pos = p1 if ns == 1 else np.stack([np.roll(p1, a) for a in range(ns)], axis=-1)
    check_cos_sin(spec, pos, seq_len)
    for s_l in ((4096, 4097) if spec.rope_type in ("dynamic", "longrope") else ()):
        check_cos_sin(spec, pos, s_l)
    w, att = inv_freq(spec, 4097 if spec.rope_type == "dynamic" else None)
    ow, oatt = oracle_inv_freq(spec, 4097 if spec.rope_type == "dynamic" else None)
    assert w.tolist() == [float(e) for e in ow] and att == float(oatt)
    xs = rng.standard_normal((3, spec.head_dim)) * 10.0
    for role in ("query", "key"):
        check_apply(spec, pos[:3] if ns == 1 else pos[:3], seq_len, xs, role)


# =============================================================================== inv_freq
@examples(200)
@given(rope_specs(max_pairs=64), st.one_of(st.none(), st.integers(1, 2 ** 20), st.sampled_from(["L0-1", "L0", "L0+1"])))
def test_inv_freq_correctly_rounded_and_attention_factor(spec, seq_len):
    """Each float64 omega is the exact omega correctly rounded; |att - exact| <= 1 ulp."""
    if isinstance(seq_len, str):  # the dynamic / LongRoPE thresholds
        L0 = spec.original_max_position_embeddings or 4096
        seq_len = max(1, L0 + {"L0-1": -1, "L0": 0, "L0+1": 1}[seq_len])
    if spec.rope_type == "dynamic" and seq_len is None:
        with pytest.raises(ValueError, match="seq_len"):
            inv_freq(spec)
        return
    w, att = inv_freq(spec, seq_len)
    ow, oatt = oracle_inv_freq(spec, seq_len)
    assert w.dtype == np.float64 and w.shape == (spec.rotary_dim // 2,)
    for j, (a, e) in enumerate(zip(w.tolist(), ow)):
        assert a == float(e), (f"omega[{j}] = {a!r} but exact {ctx.nstr(e, 25)} rounds to {float(e)!r} "
                               f"(err {float(abs(mpf(a) - e) / mpf(np.spacing(abs(float(e))))):.3f} ulp); "
                               f"spec {spec.to_dict()} seq_len {seq_len}")
    assert isinstance(att, float)
    assert abs(mpf(att) - oatt) <= mpf(float(np.spacing(float(oatt)))), (att, oatt, spec.to_dict())


# =============================================================================== apply
def _apply_bound_k(spec: RopeSpec, att_is_one: bool) -> float:
    """K in |out - exact| <= K * u * M * |pair|, u = 2**-53, M = exact magnitude.

    Per output component o1 = x1*C - x2*S with C, S the (scaled) cos/sin:
      * cos/sin each carry |err| <= 2u (the 2**-52 bound): <= 2u (|x1| + |x2|) <= 2 sqrt(2) u |pair|
      * the two products round: <= u (|x1 c| + |x2 s|) <= u |pair|     (Cauchy-Schwarz)
      * the sum rounds: <= u |o1| <= u |pair|
    so 2 sqrt 2 + 2 = 4.83 when M == 1 exactly (no multiply): K = 5.
    With an attention factor the reference multiplies cos/sin by float(att): that
    product rounds (+1) and float(att) is att correctly rounded (+0.5): 6.33 -> K = 8.
    With xPos, zeta^power = exp(hi) * (1 + lo) adds exp's ~1 ulp (2u) plus two
    roundings and the att product (~2u more): K = 12.
    (The 4u suggested in the brief is not a rigorous bound: the 2**-52 cos/sin
    allowance alone gives 2.83u; 4.83u is attainable in principle.)
    """
    if spec.xpos:
        return 12.0
    return 5.0 if att_is_one else 8.0


X_VALUES = st.one_of(st.floats(-1e3, 1e3, allow_nan=False), st.sampled_from([0.0, -0.0, 1.0, -1.0]),
                     st.floats(-1e-3, 1e-3), st.floats(-1e6, 1e6))


@st.composite
def x_rows(draw, head_dim: int, rows: int, specials=(), huge=False):
    """rows x head_dim float64: seeded normals at a drawn scale (fast to generate), with a few
    entries overwritten by drawn edge values (signed zeros, subnormals, +-1, tiny; huge ones
    only with ``huge`` -- magnitudes up to e^200 (xPos) would overflow them)."""
    rng = np.random.default_rng(draw(st.integers(0, 2 ** 32 - 1)))
    scales = [1.0, 1e-3, 1e3, 1e6, 2.0 ** -1000, 2.0 ** 200] + ([2.0 ** 1000] if huge else [])
    x = rng.standard_normal((rows, head_dim)) * draw(st.sampled_from(scales))
    edge = st.one_of(X_VALUES, st.sampled_from([5e-324, -2.0 ** -1060, -1e-300, *specials]
                                               + ([1e300, -1.7e308] if huge else [])))
    for _ in range(draw(st.integers(0, 4))):
        x[draw(st.integers(0, rows - 1)), draw(st.integers(0, head_dim - 1))] = draw(edge)
    return x


def check_apply(spec, pos, seq_len, xs, role):
    out = apply(spec, xs, pos, seq_len, role=role)
    assert out.shape == xs.shape and out.dtype == np.float64
    check_apply_against(spec, out, pos, _eff_seq_len(pos, seq_len), xs, role)


@examples(120)
@given(cases(max_tokens=2), st.sampled_from(["query", "key"]), st.data())
def test_apply_within_bound_of_exact(case, role, data):
    spec, pos, seq_len = case
    xs = data.draw(x_rows(spec.head_dim, pos.shape[0]))
    check_apply(spec, pos, seq_len, xs, role)


# =============================================================================== shapes
def _check_apply_rows(spec, out, xb, pb, rows, role="query", seq_len=None):
    """out, xb: (..., head_dim); pb: positions broadcast to out.shape[:-1] (+ (n_streams,)).
    Checks the listed flat row indices against the oracle with the same bound as check_apply."""
    ns = oracle_n_streams(spec)
    flat_out = out.reshape(-1, spec.head_dim)
    flat_x = np.broadcast_to(xb, out.shape).reshape(-1, spec.head_dim)
    flat_p = pb.reshape((-1, ns)) if ns > 1 else pb.reshape(-1)
    L = seq_len if seq_len is not None else oracle_default_seq_len(pb.tolist())
    for i in rows:
        i = i % flat_out.shape[0]
        xs = flat_x[i:i + 1]
        ps = flat_p[i:i + 1]
        check_apply_against(spec, flat_out[i:i + 1], ps, L, xs, role)


def check_apply_against(spec, out, pos, L, xs, role):
    """check_apply for an already computed output (one or more rows)."""
    ns = oracle_n_streams(spec)
    r = spec.rotary_dim
    h = r // 2
    slots = [(i, i + h) for i in range(h)] if spec.layout == "half" else [(2 * i, 2 * i + 1) for i in range(h)]
    _, att = oracle_inv_freq(spec, L, long=False if (spec.rope_type == "longrope"
                                                      and spec.longrope_switch == "position") else None)
    K = _apply_bound_k(spec, att == 1)
    for i in range(xs.shape[0]):
        p = _row_positions(pos, i, ns)
        exact = oracle_apply(spec, xs[i], p, L, role)
        mag = oracle_magnitude(spec, p, L, role)
        for j, (a, b) in enumerate(slots):
            norm = ctx.sqrt(mpf(float(xs[i, a])) ** 2 + mpf(float(xs[i, b])) ** 2)
            bound = mpf(K) * mpf(U) * mag[j] * norm + mpf(2) ** -1073
            for k in (a, b):
                err = abs(mpf(float(out[i, k])) - exact[k])
                assert err <= bound, (
                    f"row {i} feature {k} (pair {j}) position {p} seq_len {L} role {role}: {out[i, k]!r} vs "
                    f"{ctx.nstr(exact[k], 20)}: err {float(err / (mpf(U) * mag[j] * norm)) if norm else 'inf'} "
                    f"u*M*|pair| > K={K}; spec {spec.to_dict()}")
        assert out[i, r:].tobytes() == xs[i, r:].tobytes()


SHAPE_SPECS = [RopeSpec(head_dim=128, rope_type="yarn", factor=8.0, original_max_position_embeddings=4096),
               RopeSpec(head_dim=72, rotary_dim=64, layout="interleaved"),
               RopeSpec(head_dim=96, rope_type="longrope", factor=32.0, original_max_position_embeddings=256,
                        short_factor=tuple(1.0 + 0.1 * i for i in range(48)),
                        long_factor=tuple(2.0 + i for i in range(48)), longrope_switch="position")]


@pytest.mark.parametrize("spec", SHAPE_SPECS, ids=["yarn", "partial-interleaved", "longrope-position"])
def test_apply_shapes_against_oracle(spec):
    """Every documented calling shape, including the heads axis inserted for positions (batch, seq)
    against x (batch, heads, seq, head_dim), broadcasting, repeated positions (de-duplicated
    internally) and sequences longer than one internal slab (rows at the slab edges)."""
    rng = np.random.default_rng(7)
    hd = spec.head_dim
    # 1-D x, scalar position
    x = rng.standard_normal(hd)
    out = apply(spec, x, 300)
    assert out.shape == (hd,)
    _check_apply_rows(spec, out[None], x[None], np.array([300]), [0])
    # (seq, hd) with (seq,)
    x = rng.standard_normal((5, hd))
    p = np.array([0, 255, 256, 257, 70000])
    _check_apply_rows(spec, apply(spec, x, p), x, p, range(5))
    # (batch, heads, seq, hd) with (batch, seq): heads axis inserted; rows repeat positions
    x = rng.standard_normal((2, 3, 4, hd))
    p = np.array([[5, 6, 7, 8], [5, 6, 7, 8]])
    out = apply(spec, x, p)
    assert out.shape == x.shape
    _check_apply_rows(spec, out, x, np.broadcast_to(p[:, None, :], (2, 3, 4)), range(0, 24, 5))
    # (batch, seq, hd) with (seq,): broadcast over batch
    x = rng.standard_normal((3, 4, hd))
    p = np.array([1, 1000, 1000, 123456])
    out = apply(spec, x, p)
    _check_apply_rows(spec, out, x, np.broadcast_to(p, (3, 4)), range(12))
    # (1, hd) with (seq,): x broadcast over positions
    x = rng.standard_normal((1, hd))
    p = np.array([3, 4, 2 ** 24])
    out = apply(spec, x, p)
    assert out.shape == (3, hd)
    _check_apply_rows(spec, out, np.broadcast_to(x, (3, hd)), p, range(3))
    # long sequence: more rows than one internal slab; check the rows at the slab edges
    seq = 2100
    x = rng.standard_normal((1, 2, seq, hd))
    p = rng.integers(0, 2 ** 24, (1, seq))
    out = apply(spec, x, p)
    rows = [0, 1, 255, 256, 511, 512, 1023, 1024, 2047, 2048, seq - 1, seq, 2 * seq - 1]
    _check_apply_rows(spec, out, x, np.broadcast_to(p[:, None, :], (1, 2, seq)), rows)


def test_apply_shapes_multi_stream():
    spec = RopeSpec(head_dim=128, rope_theta=1e6, mrope_section=(16, 24, 24))
    rng = np.random.default_rng(3)
    x = rng.standard_normal((2, 2, 3, 128))
    p = rng.integers(0, 5000, (2, 3, 3))
    out = apply(spec, x, p)
    _check_apply_rows(spec, out, x, np.broadcast_to(p[:, None], (2, 2, 3, 3)), range(12))


# =============================================================================== thresholds
def _nudged(v: float, k: int) -> float:
    """v moved k ulps (k may be negative)."""
    for _ in range(abs(k)):
        v = float(np.nextafter(v, math.inf if k > 0 else -math.inf))
    return v


def _positions_for(spec, rng, extra=()):
    base = [0, 1, 2, 3, 100, 4095, 4096, 4097, 65535, 1_000_003, P24 - 1, P24, *extra]
    base += [int(v) for v in rng.integers(0, P24, 4)]
    return np.array(sorted(set(base)), dtype=np.int64)


@pytest.mark.parametrize("r,i,L0,lo,hi,edge", [
    (8, 1, 8192, 1.0, 4.0, "high"), (8, 2, 8192, 1.0, 4.0, "low"),
    (128, 20, 8192, 1.0, 4.0, "high"), (128, 40, 8192, 1.0, 4.0, "low"),
    (64, 10, 4096, 2.0, 2.0, "low"), (16, 3, 131072, 0.5, 8.0, "high"), (16, 5, 131072, 0.5, 8.0, "low"),
])
def test_llama3_band_edges(r, i, L0, lo, hi, edge):
    """theta chosen so the wavelength 2 pi theta^(2i/r) of pair i sits on L0/high or L0/low
    (to within 1 ulp of theta), then nudged -3..+3 ulps: both sides of the edge are hit,
    inv_freq stays correctly rounded and cos/sin stay within 2**-52."""
    target = mpf(L0) / mpf(hi if edge == "high" else lo)
    theta0 = float(ctx.power(target / (2 * ctx.pi), mpf(r) / (2 * i)))
    sides = set()
    rng = np.random.default_rng(i)
    for k in range(-3, 4):
        theta = _nudged(theta0, k)
        spec = RopeSpec(head_dim=r, rope_type="llama3", rope_theta=theta, factor=8.0,
                        original_max_position_embeddings=L0, low_freq_factor=lo, high_freq_factor=hi)
        wl = 2 * ctx.pi * ctx.power(mpf(theta), mpf(2 * i) / r)
        rel = (wl - target) / target
        assert abs(rel) < 1e-14  # the construction really sits on the edge
        sides.add(int(ctx.sign(rel)))
        w, _ = inv_freq(spec)
        ow, _ = oracle_inv_freq(spec)
        assert [float(e) for e in ow] == w.tolist(), (k, theta)
        check_cos_sin(spec, _positions_for(spec, rng))
    assert {-1, 1} <= sides, "the nudges did not straddle the band edge"


@pytest.mark.parametrize("r,L0,beta_fast,beta_slow,which,k_target", [
    (64, 4096, 32.0, 1.0, "fast", 10), (64, 4096, 32.0, 1.0, "slow", 20),
    (128, 4096, 32.0, 1.0, "fast", 40), (128, 8192, 32.0, 1.0, "slow", 50),
    (32, 2048, 16.0, 2.0, "fast", 3), (64, 131072, 32.0, 1.0, "slow", 31),
])
@pytest.mark.parametrize("truncate", [True, False])
def test_yarn_ramp_edges(r, L0, beta_fast, beta_slow, which, k_target, truncate):
    """theta chosen so the correction dimension d_c(beta) = r ln(L0/(2 pi beta)) / (2 ln theta)
    is the integer k_target to within ~1e-15, nudged -3..+3 ulps either side: the floor/ceil
    (truncate) or the ramp value flips, and the reference must follow the exact value."""
    beta = beta_fast if which == "fast" else beta_slow
    ln_theta = mpf(r) * ctx.log(mpf(L0) / (2 * ctx.pi * mpf(beta))) / (2 * k_target)
    theta0 = float(ctx.exp(ln_theta))
    sides = set()
    rng = np.random.default_rng(k_target)
    for k in range(-3, 4):
        theta = _nudged(theta0, k)
        spec = RopeSpec(head_dim=r, rope_type="yarn", rope_theta=theta, factor=16.0,
                        original_max_position_embeddings=L0, beta_fast=beta_fast, beta_slow=beta_slow,
                        truncate=truncate)
        dc = mpf(r) * ctx.log(mpf(L0) / (2 * ctx.pi * mpf(beta))) / (2 * ctx.log(mpf(theta)))
        assert abs(dc - k_target) < 1e-12
        sides.add(int(ctx.sign(dc - k_target)))
        w, att = inv_freq(spec)
        ow, oatt = oracle_inv_freq(spec)
        assert [float(e) for e in ow] == w.tolist(), (k, theta, truncate)
        assert att == float(oatt)
        check_cos_sin(spec, _positions_for(spec, rng))
    assert {-1, 1} <= sides


@pytest.mark.parametrize("L0", [2, 4096, 8192])
def test_dynamic_seq_len_threshold(L0):
    """Dynamic NTK at seq_len L0-1, L0 (plain RoPE) and L0+1, L0+2 (rescaled base), given
    explicitly and derived from max(positions)+1; exact values from the oracle, which
    uses L = max(seq_len, L0)."""
    spec = RopeSpec(head_dim=64, rope_type="dynamic", factor=4.0, original_max_position_embeddings=L0)
    plain = RopeSpec(head_dim=64)
    for seq_len in (L0 - 1, L0, L0 + 1, L0 + 2):
        if seq_len < 1:
            continue
        pos = np.array([0, 1, seq_len - 1, P24 - 1, P24], dtype=np.int64)
        check_cos_sin(spec, pos, seq_len)
        derived = np.arange(max(0, seq_len - 3), seq_len, dtype=np.int64)  # max + 1 == seq_len
        check_cos_sin(spec, derived)
        w, _ = inv_freq(spec, seq_len)
        ow, _ = oracle_inv_freq(spec, seq_len)
        assert w.tolist() == [float(e) for e in ow]
        # published rule: no rescaling up to L0 tokens, rescaled above
        same = w.tolist() == [float(e) for e in oracle_inv_freq(plain)[0]]
        assert same == (seq_len <= L0)


@pytest.mark.parametrize("L0", [2, 4096])
def test_longrope_switch_thresholds(L0):
    n = 16
    short = tuple(1.0 + 0.25 * i for i in range(n))
    long_ = tuple(2.0 + 3.0 * i for i in range(n))
    seq = RopeSpec(head_dim=2 * n, rope_type="longrope", factor=32.0, original_max_position_embeddings=L0,
                   short_factor=short, long_factor=long_)
    per_pos = seq.replace(longrope_switch="position")
    around = np.array([L0 - 1, L0, L0 + 1], dtype=np.int64)
    # HF: one set per sequence, long iff seq_len > L0 (seq_len = max(position_ids) + 1)
    for seq_len in (L0 - 1, L0, L0 + 1, None):
        check_cos_sin(seq, around if seq_len is None else around[:1], seq_len)
        check_cos_sin(seq, np.array([0, L0 - 1]), seq_len)  # derived seq_len L0: short
    # MAX: per position, long iff p >= L0; the two sets really differ at these positions
    check_cos_sin(per_pos, around)
    oc_s = oracle_cos_sin(seq, L0, L0)[0]
    oc_l = oracle_cos_sin(seq, L0, L0 + 1)[0]
    assert any(abs(a - b) > 1e-6 for a, b in zip(oc_s, oc_l))
    # the switch decides which set is used: compare against the exact short and long values
    c, _ = cos_sin(per_pos, around)
    assert abs(mpf(float(c[0, 5])) - oracle_cos_sin(seq, L0 - 1, L0)[0][5]) <= COS_SIN_BOUND
    assert abs(mpf(float(c[1, 5])) - oracle_cos_sin(seq, L0, L0 + 1)[0][5]) <= COS_SIN_BOUND
    for seq_len in (L0, L0 + 1):
        w, att = inv_freq(seq, seq_len)
        ow, oatt = oracle_inv_freq(seq, seq_len)
        assert w.tolist() == [float(e) for e in ow]
        assert att == float(oatt) == float(ctx.sqrt(1 + ctx.log(32) / ctx.log(L0)))


def test_positions_near_2_pow_24_all_pairs_large_dim():
    """head_dim 256, theta 1e6: every pair at 2**24 - 2 .. 2**24 + 2 and far beyond."""
    spec = RopeSpec(head_dim=256, rope_theta=1e6)
    check_cos_sin(spec, np.arange(P24 - 2, P24 + 3, dtype=np.int64))
    check_cos_sin(spec, np.array([2 ** 31 - 1, 2 ** 40 + 7, 2 ** 52 - 1], dtype=np.int64))


# =============================================================================== the bound can fail
NAIVE_POS = np.unique(np.linspace(1e6, 1e7, 40).round())


def test_naive_float64_violates_the_bound():
    """np.cos(p * w) with w the correctly rounded omega is NOT within 2**-52 at p in [1e6, 1e7]:
    the product p*w is rounded (its ulp is ~1e-10 there), which proves the bound has teeth."""
    spec = RopeSpec(head_dim=128)
    ow, _ = oracle_inv_freq(spec)
    w = np.array([float(e) for e in ow])
    worst = mpf(0)
    for p in NAIVE_POS[::4]:
        naive_c = np.cos(p * w)
        naive_s = np.sin(p * w)
        oc, osn = oracle_cos_sin(spec, int(p))
        for j in range(len(w)):
            worst = max(worst, abs(mpf(float(naive_c[j])) - oc[j]), abs(mpf(float(naive_s[j])) - osn[j]))
    assert worst > COS_SIN_BOUND * 1000, float(worst)


def test_reference_meets_the_bound_where_naive_fails():
    spec = RopeSpec(head_dim=128)
    worst = check_cos_sin(spec, NAIVE_POS[::4].astype(np.int64))
    assert worst <= COS_SIN_BOUND


# =============================================================================== reported discrepancies
@pytest.mark.parametrize("t", ["ntk", "dynamic", "yarn"])
def test_axial_scaled_exponent(t):
    """Axial RoPE with NTK/dynamic/YaRN: the NTK exponent d/(d-2) and YaRN's correction
    dimension use the per-axis width d = rotary_dim / axial_axes, the width of the schedule
    b^(-2i/d) they rescale (one rotary-embedding-torch RotaryEmbedding(dim=d) per axis).
    (Found with the reference using rotary_dim here; fixed in reference/frequencies.py.)"""
    kw = {"factor": 4.0}
    if t != "ntk":
        kw["original_max_position_embeddings"] = 512
    spec = RopeSpec(head_dim=64, axial_axes=2, rope_type=t, **kw)
    w, _ = inv_freq(spec, 2000)
    ow, _ = oracle_inv_freq(spec, 2000)
    assert w.tolist() == [float(e) for e in ow]


def test_xpos_scale_general_base():
    worst = 0.0
    for B in (300.7, 1000.3):
        spec = RopeSpec(head_dim=64, xpos=True, xpos_scale_base=B, xpos_center=0.0)
        pos = np.array([1, 7, 1000, 100_000, 150_000], dtype=np.int64)
        for role in ("query", "key"):
            z = xpos_scale(spec, pos, role=role)
            for i, p in enumerate(pos.tolist()):
                oz = oracle_xpos_scale(spec, p, role=role)
                for j in range(32):
                    worst = max(worst, float(abs(mpf(float(z[i, j])) - oz[j]) / oz[j] / mpf(U)))
    assert worst <= 4.0, f"xpos scale relative error {worst:.1f} u"


def test_xpos_scale_dyadic_base_accuracy():
    """With a power-of-two base (512, the published default) the scale is within 4u relative."""
    worst = 0.0
    for B in (512.0, 64.0):
        spec = RopeSpec(head_dim=64, xpos=True, xpos_scale_base=B)
        # |power| <= 160 keeps zeta^power in ~e^+-200 (no under/overflow)
        pos = np.array([0, 1, 7, 1000, int(30 * B), int(100 * B), int(160 * B)], dtype=np.int64)
        for role in ("query", "key"):
            z = xpos_scale(spec, pos, seq_len=1, role=role)
            for i, p in enumerate(pos.tolist()):
                oz = oracle_xpos_scale(spec, p, 1, role)
                for j in range(32):
                    worst = max(worst, float(abs(mpf(float(z[i, j])) - oz[j]) / oz[j] / mpf(U)))
    assert worst <= 4.0, worst


def test_oracle_is_not_the_reference():
    """Guard: the oracle imports nothing from ropeconf.reference (it reads spec fields only)."""
    import ast
    import pathlib

    src = pathlib.Path(__file__).with_name("oracle.py").read_text()
    for node in ast.walk(ast.parse(src)):
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            names = [node.module or ""] if isinstance(node, ast.ImportFrom) else [a.name for a in node.names]
            assert not any("ropeconf" in n or "reference" in n for n in names), names
