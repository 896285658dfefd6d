"""Mathematical properties of RoPE, checked on the float64 reference.

No expected value here comes from the reference itself: each assertion is a
theorem about rotations (norm preservation, relative-position dependence of the
logit, the group law R(m) R(n) = R(m+n), R(-p) = R(p)^-1, the layout
permutation, R(0) = I, block-diagonal locality), with magnitudes (attention
factor, xPos scale) taken from the published formulas in tests/oracle.py.

Tolerances: u = 2**-53; one application of the reference is within
K * u * M * |pair| per output (K from ``_apply_bound_k`` in
test_reference_accuracy.py, proved there against the oracle); each property
below combines at most a few applications and says how it adds them up.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from oracle import ctx, mpf, oracle_inv_freq, oracle_magnitude, oracle_n_streams
from ropeconf.reference import RopeSpec, apply, apply_angles, cos_sin
from test_reference_accuracy import _apply_bound_k, examples, rope_specs, x_rows

U = 2.0 ** -53
P23, P24 = 2 ** 23, 2 ** 24


def _slots(spec):
    h = spec.rotary_dim // 2
    return [(i, i + h) for i in range(h)] if spec.layout == "half" else [(2 * i, 2 * i + 1) for i in range(h)]


def _att(spec, seq_len):
    long = False if spec.rope_type == "longrope" and spec.longrope_switch == "position" else None
    return oracle_inv_freq(spec, seq_len, long=long)[1]


def _K(spec, seq_len):
    return _apply_bound_k(spec, _att(spec, seq_len) == 1)


def _fixed_seq_len(spec, draw):
    """Dynamic NTK and LongRoPE read seq_len; pin it so the frequencies are fixed."""
    if spec.rope_type in ("dynamic", "longrope"):
        L0 = spec.original_max_position_embeddings
        return draw(st.sampled_from([L0, L0 + 1, 2 * L0 + 7]))
    return None


def _x(draw, spec, rows=1, specials=(), huge=False):
    return draw(x_rows(spec.head_dim, rows, specials, huge))


def _pos(spec, coords):
    """coords: list (one per token) of lists (one per stream) -> positions array."""
    a = np.array(coords, dtype=np.int64)
    return a if oracle_n_streams(spec) > 1 else a[:, 0]


def _norm(u, v):
    return ctx.sqrt(mpf(float(u)) ** 2 + mpf(float(v)) ** 2)


# =============================================================================== norm
@examples(100)
@given(st.data())
def test_pair_norm_preserved_times_magnitude(data):
    """|out pair| == M * |x pair|, M = attention factor (x xPos scale) from the published formulas.

    |(computed) - (exact)| <= K u M |pair| per component, so the norms differ by at
    most sqrt(2) K u M |pair| (+ the norm's own rounding, done here exactly in mpmath).
    """
    spec = data.draw(rope_specs(), label="spec")
    ns = oracle_n_streams(spec)
    seq_len = _fixed_seq_len(spec, data.draw)
    if spec.xpos:
        spec = spec.replace(xpos_center=0.0)
        span = int(100 * spec.xpos_scale_base)
        coords = [[data.draw(st.integers(-span, span)) for _ in range(ns)] for _ in range(2)]
    else:
        coords = [[data.draw(st.integers(-P24, P24)) for _ in range(ns)] for _ in range(2)]
    if spec.rope_type in ("dynamic", "longrope"):
        coords = [[abs(c) for c in row] for row in coords]
    pos = _pos(spec, coords)
    role = data.draw(st.sampled_from(["query", "key"]))
    x = _x(data.draw, spec, rows=2)
    out = apply(spec, x, pos, seq_len, role=role)
    L = seq_len if seq_len is not None else int(pos.max()) + 1
    K = _K(spec, L)
    for i in range(2):
        p = coords[i] if ns > 1 else coords[i][0]
        mag = oracle_magnitude(spec, p, L, role)
        for j, (a, b) in enumerate(_slots(spec)):
            n_in, n_out = _norm(x[i, a], x[i, b]), _norm(out[i, a], out[i, b])
            tol = 2 * K * mpf(U) * mag[j] * n_in + mpf(2) ** -1072
            assert abs(n_out - mag[j] * n_in) <= tol, (i, j, float(n_out), float(mag[j] * n_in), spec.to_dict())


# =============================================================================== relative position
RELATIVE_TYPES = ("default", "linear", "ntk", "yarn", "llama3", "dynamic", "longrope")


ETA = mpf(2) ** -1070   # absolute error bound of one output component in gradual underflow


def _exact_dot(a, b):
    return ctx.fsum(mpf(float(u)) * mpf(float(v)) for u, v in zip(a, b))


@examples(100)
@given(st.data())
def test_logit_depends_only_on_relative_position(data):
    """<R_m q, R_n k> == <R_{m+t} q, R_{n+t} k> (per stream for axial / M-RoPE).

    Holds for every variant whose frequencies do not depend on the positions:
    default / linear / ntk / yarn / llama3 / custom / pixel / constant, and also
    dynamic NTK and LongRoPE once seq_len is pinned.  It does NOT hold for
    dynamic NTK or LongRoPE with the default seq_len = max(positions) + 1: the
    shift changes seq_len and with it the frequencies (test_dynamic_breaks_shift_invariance),
    nor for LongRoPE's per-position switch when m, n straddle L0.  With xPos the
    query carries zeta^((m-c)/B) and the key zeta^(-(n-c)/B), so with a shared
    centre c the product carries zeta^((m-n)/B): still relative.
    Tolerance: each output component within K u M |pair|, so each exact dot of
    the computed vectors is within (4K + 1) u sum_j Mq_j Mk_j |q_j| |k_j| of the
    exact logit; the two logits within twice that.  Plus gradual underflow: an
    xPos-scaled output can be subnormal, where the error is absolute (ETA per
    component), entering each dot as ETA * sum |other factor|.
    """
    spec = data.draw(rope_specs(types=RELATIVE_TYPES), label="spec")
    if spec.rope_type == "longrope":
        spec = spec.replace(longrope_switch="sequence")
    ns = oracle_n_streams(spec)
    seq_len = _fixed_seq_len(spec, data.draw)
    lim = int(80 * spec.xpos_scale_base) if spec.xpos else P23
    if spec.xpos:
        spec = spec.replace(xpos_center=float(data.draw(st.integers(-P23, P23))))
        c0 = int(spec.xpos_center)
    else:
        c0 = 0
    m = [c0 + data.draw(st.integers(-lim, lim)) for _ in range(ns)]
    n = [c0 + data.draw(st.integers(-lim, lim)) for _ in range(ns)]
    t = [data.draw(st.integers(-lim, lim)) for _ in range(ns)]
    q, k = _x(data.draw, spec, rows=1)[0], _x(data.draw, spec, rows=1)[0]
    one = (lambda v: v) if ns > 1 else (lambda v: v[0])
    logits, underflow = [], mpf(0)
    for shift in (0, 1):
        pm = [a + shift * b for a, b in zip(m, t)]
        pn = [a + shift * b for a, b in zip(n, t)]
        qo = apply(spec, q[None], _pos(spec, [pm]), seq_len, role="query")[0]
        ko = apply(spec, k[None], _pos(spec, [pn]), seq_len, role="key")[0]
        logits.append(_exact_dot(qo, ko))
        # gradual underflow: a subnormal output component carries an absolute error
        # (at most 2^-1075 per operation, a few operations: ETA) that the relative
        # model cannot see; it enters the dot product times the other factor.
        underflow += ETA * ctx.fsum(abs(mpf(float(v))) for v in (*qo, *ko))
        L = seq_len if seq_len is not None else max(max(pm), max(pn)) + 1
        if shift == 0:
            mq = oracle_magnitude(spec, one(pm), L, "query")
            mk = oracle_magnitude(spec, one(pn), L, "key")
            K = _K(spec, L)
            scale = ctx.fsum(mq[j] * mk[j] * _norm(q[a], q[b]) * _norm(k[a], k[b])
                             for j, (a, b) in enumerate(_slots(spec)))
    tol = 2 * (4 * K + 1) * mpf(U) * scale + underflow + mpf(2) ** -1070
    assert abs(logits[0] - logits[1]) <= tol, (float(logits[0]), float(logits[1]), float(tol), spec.to_dict())


def test_dynamic_breaks_shift_invariance():
    """Why dynamic NTK is excluded above: with seq_len = max(positions)+1, shifting both
    positions past L0 rescales the base, and the logit changes far beyond rounding."""
    spec = RopeSpec(head_dim=64, rope_type="dynamic", factor=8.0, original_max_position_embeddings=512)
    rng = np.random.default_rng(0)
    q, k = rng.standard_normal(64), rng.standard_normal(64)

    def logit(m, n, seq_len=None):
        L = max(m, n) + 1 if seq_len is None else seq_len  # HF: max(position_ids) + 1
        qo = apply(spec, q[None], np.array([m]), L)[0]
        ko = apply(spec, k[None], np.array([n]), L)[0]
        return float(qo @ ko)

    assert abs(logit(400, 300) - logit(400 + 5000, 300 + 5000)) > 1e-3
    # ...while with a pinned seq_len the same shift is harmless
    pinned = [logit(m, n, 9000) for m, n in ((400, 300), (5400, 5300))]
    assert abs(pinned[0] - pinned[1]) < 1e-12 * np.linalg.norm(q) * np.linalg.norm(k)


# =============================================================================== group law
def _att_is_one(spec, L):
    return _att(spec, L) == 1


@examples(80)
@given(st.data())
def test_rotating_by_m_then_n_is_rotating_by_m_plus_n(data):
    """R(n) R(m) x == R(m+n) x when the magnitude is 1 (no attention factor / xPos);
    with an attention factor a, R(n) R(m) x == a * R(m+n) x (the factor is applied twice).
    Tolerance: three applications, each K u M |pair| (M = a^2 bound on the twice-applied side)."""
    spec = data.draw(rope_specs(allow_xpos=False), label="spec")
    if spec.rope_type == "longrope":
        spec = spec.replace(longrope_switch="sequence")
    ns = oracle_n_streams(spec)
    seq_len = _fixed_seq_len(spec, data.draw)
    m = [data.draw(st.integers(-P23, P23)) for _ in range(ns)]
    n = [data.draw(st.integers(-P23, P23)) for _ in range(ns)]
    mn = [a + b for a, b in zip(m, n)]
    x = _x(data.draw, spec)
    L = seq_len  # None (not read) except for dynamic / LongRoPE, where it is pinned
    twice = apply(spec, apply(spec, x, _pos(spec, [m]), L), _pos(spec, [n]), L)[0]
    once = apply(spec, x, _pos(spec, [mn]), L)[0]
    a = _att(spec, L if L is not None else 1)
    K = _K(spec, L if L is not None else 1)
    for j, (i1, i2) in enumerate(_slots(spec)):
        nrm = _norm(x[0, i1], x[0, i2])
        tol = (3 * K + 2) * mpf(U) * max(a * a, a) * nrm + mpf(2) ** -1070
        for i in (i1, i2):
            assert abs(mpf(float(twice[i])) - a * mpf(float(once[i]))) <= tol, (j, spec.to_dict())
    r = spec.rotary_dim
    assert twice[r:].tobytes() == x[0, r:].tobytes()


@examples(60)
@given(st.data())
def test_apply_angles_group_law_and_inverse(data):
    """apply_angles(apply_angles(x, a), b) == apply_angles(x, a + b) and
    apply_angles(apply_angles(x, a), -a) == x, with a + b exact (multiples of 2**-20)."""
    spec = data.draw(rope_specs(allow_xpos=False, types=("default",)), label="spec")
    h = spec.rotary_dim // 2
    ia = data.draw(st.lists(st.integers(-2 ** 44, 2 ** 44), min_size=h, max_size=h))
    ib = data.draw(st.lists(st.integers(-2 ** 44, 2 ** 44), min_size=h, max_size=h))
    a = np.array(ia, dtype=np.float64) * 2.0 ** -20
    b = np.array(ib, dtype=np.float64) * 2.0 ** -20
    assert np.array_equal(a + b, (np.array(ia) + np.array(ib)).astype(np.float64) * 2.0 ** -20)
    x = _x(data.draw, spec)
    two = apply_angles(spec, apply_angles(spec, x, a[None]), b[None])[0]
    one = apply_angles(spec, x, (a + b)[None])[0]
    back = apply_angles(spec, apply_angles(spec, x, a[None]), -a[None])[0]
    for j, (i1, i2) in enumerate(_slots(spec)):
        nrm = _norm(x[0, i1], x[0, i2])
        tol = 3 * 5 * mpf(U) * nrm + mpf(2) ** -1070
        for i in (i1, i2):
            assert abs(mpf(float(two[i])) - mpf(float(one[i]))) <= tol
            assert abs(mpf(float(back[i])) - mpf(float(x[0, i]))) <= tol


@examples(80)
@given(st.data())
def test_negative_positions_undo_the_rotation(data):
    """R(-p) R(p) x == a^2 x (a the attention factor; xPos with centre 0 gives
    zeta^(p/B) zeta^(-p/B) = 1).  LongRoPE's per-position switch is excluded: -p < L0 <= p
    would use the other factor set.  Tolerance: two applications."""
    spec = data.draw(rope_specs(), label="spec")
    if spec.rope_type == "longrope":
        spec = spec.replace(longrope_switch="sequence")
    if spec.xpos:
        spec = spec.replace(xpos_center=0.0)
    ns = oracle_n_streams(spec)
    seq_len = _fixed_seq_len(spec, data.draw)
    if seq_len is None:
        seq_len = data.draw(st.integers(1, P24))  # pinned: -p would change a derived seq_len
    lim = int(100 * spec.xpos_scale_base) if spec.xpos else P24
    p = [data.draw(st.integers(-lim, lim)) for _ in range(ns)]
    x = _x(data.draw, spec)
    role = data.draw(st.sampled_from(["query", "key"]))
    y = apply(spec, apply(spec, x, _pos(spec, [p]), seq_len, role=role), _pos(spec, [[-v for v in p]]),
              seq_len, role=role)[0]
    a = _att(spec, seq_len)
    K = _K(spec, seq_len)
    mp_ = oracle_magnitude(spec, p if ns > 1 else p[0], seq_len, role)
    for j, (i1, i2) in enumerate(_slots(spec)):
        nrm = _norm(x[0, i1], x[0, i2])
        tol = (2 * K + 2) * mpf(U) * max(mp_[j], 1) * max(a * a, 1) * nrm + mpf(2) ** -1070
        for i in (i1, i2):
            assert abs(mpf(float(y[i])) - a * a * mpf(float(x[0, i]))) <= tol, (j, spec.to_dict())


# =============================================================================== layouts
@examples(80)
@given(st.data())
def test_half_and_interleaved_related_by_deinterleave_permutation(data):
    """apply(half, x) == P^-1 apply(interleaved, P x), P: x[i] -> y[2i], x[i + r/2] -> y[2i+1]
    (tail fixed).  Both sides are within K u M |pair| of the same exact value."""
    spec = data.draw(rope_specs(), label="spec")
    half, inter = spec.replace(layout="half"), spec.replace(layout="interleaved")
    ns = oracle_n_streams(spec)
    seq_len = _fixed_seq_len(spec, data.draw)
    if spec.xpos:
        half, inter = half.replace(xpos_center=0.0), inter.replace(xpos_center=0.0)
    lim = int(100 * spec.xpos_scale_base) if spec.xpos else P24
    p = [abs(data.draw(st.integers(-lim, lim))) for _ in range(ns)]
    r, h = spec.rotary_dim, spec.rotary_dim // 2
    perm = np.arange(spec.head_dim)
    perm[0:r:2], perm[1:r:2] = np.arange(h), np.arange(h, r)  # y = x[perm]
    x = _x(data.draw, spec)
    y = x[:, perm]
    role = data.draw(st.sampled_from(["query", "key"]))
    oh = apply(half, x, _pos(spec, [p]), seq_len, role=role)[0]
    oi = apply(inter, y, _pos(spec, [p]), seq_len, role=role)[0]
    back = np.empty_like(oi)
    back[perm] = oi
    L = seq_len if seq_len is not None else max(p) + 1
    K = _K(half, L)
    mag = oracle_magnitude(half, p if ns > 1 else p[0], L, role)
    for j in range(h):
        nrm = _norm(x[0, j], x[0, j + h])
        tol = 2 * K * mpf(U) * mag[j] * nrm + mpf(2) ** -1072
        for i in (j, j + h):
            assert abs(mpf(float(oh[i])) - mpf(float(back[i]))) <= tol
    assert oh[r:].tobytes() == back[r:].tobytes()


# =============================================================================== identities
@examples(100)
@given(st.data())
def test_position_zero_is_identity_times_attention_factor(data):
    """R(0) = I, so out = a * x on the rotated part: cos 0 = 1 and sin 0 = 0 exactly, hence
    bit-for-bit fl(x * a) with a = float(exact attention factor) (xPos centre 0: scale 1)."""
    spec = data.draw(rope_specs(), label="spec")
    if spec.xpos:
        spec = spec.replace(xpos_center=0.0)
    ns = oracle_n_streams(spec)
    x = _x(data.draw, spec, rows=3, huge=True)
    pos = np.zeros((3, ns) if ns > 1 else (3,), dtype=np.int64)
    seq_len = data.draw(st.one_of(st.none(), st.integers(1, P24)))
    out = apply(spec, x, pos, seq_len)
    a = float(_att(spec, seq_len if seq_len is not None else 1))
    r = spec.rotary_dim
    expected = np.concatenate([x[:, :r] * a, x[:, r:]], axis=1)
    assert np.array_equal(out, expected), (a, spec.to_dict())
    c, s = cos_sin(spec, pos, seq_len)
    assert np.all(c == 1.0) and np.all(s == 0.0)


SPECIALS_LIST = [np.nan, np.inf, -np.inf, -0.0, 5e-324, -1.7976931348623157e308,
                 float.fromhex("0x1.fffffffffffffp-1022")]
SPECIALS = st.sampled_from(SPECIALS_LIST)


@examples(80)
@given(st.data())
def test_partial_rotation_tail_unchanged_bit_for_bit(data):
    """Features rotary_dim..head_dim-1 are passed through untouched: same bits, NaN payloads,
    signed zeros, subnormals and infinities included, whatever the variant/magnitude."""
    spec = data.draw(rope_specs(allow_partial=True), label="spec")
    if spec.rotary_dim == spec.head_dim:
        spec = spec.replace(head_dim=spec.head_dim + data.draw(st.sampled_from([1, 2, 7])),
                            rotary_dim=spec.rotary_dim)
    ns = oracle_n_streams(spec)
    x = _x(data.draw, spec, rows=2, specials=SPECIALS_LIST)
    tail = data.draw(st.lists(SPECIALS, min_size=spec.head_dim - spec.rotary_dim,
                              max_size=spec.head_dim - spec.rotary_dim))
    x[1, spec.rotary_dim:] = tail
    x[0, -1] = np.frombuffer(np.uint64(0x7FF8_0000_DEAD_BEEF).tobytes(), dtype=np.float64)[0]  # NaN payload
    pos = _pos(spec, [[data.draw(st.integers(0, P24)) for _ in range(ns)] for _ in range(2)])
    if spec.xpos:
        pos = np.zeros_like(pos)
    role = data.draw(st.sampled_from(["query", "key"]))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # inf * 0 in the rotated part is fine here
        out = apply(spec, x, pos, role=role)
    r = spec.rotary_dim
    assert out[:, r:].tobytes() == x[:, r:].tobytes()


@examples(60)
@given(st.data())
def test_nan_and_inf_propagate_locally_without_exceptions(data):
    """A NaN/inf in one pair makes that pair's outputs non-finite and leaves every other pair
    exactly as it is for the same x with that entry zeroed (R is block-diagonal); no exception."""
    spec = data.draw(rope_specs(), label="spec")
    if spec.xpos:
        spec = spec.replace(xpos_center=0.0)
    ns = oracle_n_streams(spec)
    lim = int(100 * spec.xpos_scale_base) if spec.xpos else P24
    pos = _pos(spec, [[data.draw(st.integers(1, lim)) for _ in range(ns)]])
    x = _x(data.draw, spec)
    slots = _slots(spec)
    j = data.draw(st.integers(0, len(slots) - 1))
    which = data.draw(st.sampled_from([0, 1]))
    bad = data.draw(st.sampled_from([np.nan, np.inf, -np.inf]))
    xb = x.copy()
    xb[0, slots[j][which]] = bad
    xc = x.copy()
    xc[0, slots[j][which]] = 0.0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        out = apply(spec, xb, pos)[0]
    clean = apply(spec, xc, pos)[0]
    a, b = slots[j]
    if np.isnan(bad):
        assert np.isnan(out[a]) and np.isnan(out[b])
    else:
        assert not np.isfinite(out[a]) or not np.isfinite(out[b])
        c, s = cos_sin(spec, pos)
        if c[0, j] != 0 and s[0, j] != 0:  # inf * nonzero stays infinite in both outputs
            assert not np.isfinite(out[a]) and not np.isfinite(out[b])
    others = [i for i in range(spec.head_dim) if i not in (a, b)]
    assert out[others].tobytes() == clean[others].tobytes()


# =============================================================================== CuPy
def _cupy():
    try:
        import cupy
        if cupy.cuda.runtime.getDeviceCount() < 1:
            return None
        cupy.zeros(1).sum()
        return cupy
    except Exception:
        return None


cp = _cupy()


@pytest.mark.skipif(cp is None, reason="CuPy / CUDA GPU not available")
@pytest.mark.parametrize("spec_kw", [
    dict(head_dim=128, rope_type="yarn", factor=16.0, original_max_position_embeddings=4096),
    dict(head_dim=96, rope_type="longrope", factor=32.0, original_max_position_embeddings=4096,
         short_factor=tuple(1.0 + 0.05 * i for i in range(48)), long_factor=tuple(1.0 + i for i in range(48)),
         longrope_switch="position"),
    dict(head_dim=128, rope_theta=1e6, mrope_section=(16, 24, 24), mrope_interleaved=False),
    dict(head_dim=64, layout="interleaved", xpos=True, partial_rotary_factor=0.5),
])
def test_cupy_matches_numpy_within_2_ulp(spec_kw):
    spec = RopeSpec(**spec_kw)
    ns = oracle_n_streams(spec)
    rng = np.random.default_rng(0)
    shape = (2, 5, ns) if ns > 1 else (2, 5)
    pos = rng.integers(0, 1 << 20 if not spec.xpos else 20_000, shape)
    x = rng.standard_normal((2, 3, 5, spec.head_dim))
    c_np, s_np = cos_sin(spec, pos)
    c_cp, s_cp = cos_sin(spec, cp.asarray(pos))
    o_np = apply(spec, x, pos)
    o_cp = apply(spec, cp.asarray(x), cp.asarray(pos))
    # cos/sin: each side is within 2**-52 of the exact value, so they agree to 2 ulp of 1.
    for a_np, a_cp in ((c_np, c_cp), (s_np, s_cp)):
        a_cp = cp.asnumpy(a_cp)
        assert a_cp.shape == a_np.shape
        assert np.max(np.abs(a_cp - a_np)) <= 2 * 2.0 ** -52
    # apply: each side within K u M |pair| of the same exact value (K <= 12, M the magnitude);
    # measured against the pair norm of the numpy output (~ M |pair|).
    o_cp = cp.asnumpy(o_cp)
    assert o_cp.shape == o_np.shape
    r, h = spec.rotary_dim, spec.rotary_dim // 2
    idx = [(i, i + h) for i in range(h)] if spec.layout == "half" else [(2 * i, 2 * i + 1) for i in range(h)]
    for a, b in idx:
        nrm = np.hypot(o_np[..., a], o_np[..., b])
        for i in (a, b):
            assert np.all(np.abs(o_cp[..., i] - o_np[..., i]) <= 2 * 12 * 2.0 ** -53 * nrm * 1.01 + 1e-300)
    assert o_cp[..., r:].tobytes() == o_np[..., r:].tobytes()


def test_apply_out_parameter_and_threaded_paths_are_bit_identical():
    """apply(out=) writes the same bits as the allocating call; large (threaded, blocked) and small
    (generic) paths agree bit for bit with the plain array-API formula on the same cos/sin."""
    from ropeconf.reference import RopeSpec, apply, cos_sin

    rng = np.random.default_rng(3)
    for spec in (RopeSpec(head_dim=128), RopeSpec(head_dim=96, rotary_dim=64, layout="interleaved")):
        x = rng.standard_normal((2, 4, 300, spec.head_dim))
        pos = rng.integers(0, 2 ** 20, size=(2, 300))
        y = apply(spec, x, pos)
        o = np.empty_like(x)
        assert apply(spec, x, pos, out=o) is o and np.array_equal(o, y)
        c, s = cos_sin(spec, pos)
        c, s = c[:, None], s[:, None]
        r, h = spec.rotary_dim, spec.n_pairs
        if spec.layout == "half":
            a, b = x[..., :h], x[..., h:r]
            want = np.concatenate([a * c - b * s, b * c + a * s, x[..., r:]], axis=-1)
        else:
            a, b = x[..., 0:r:2], x[..., 1:r:2]
            rot = np.stack([a * c - b * s, b * c + a * s], axis=-1).reshape(a.shape[:-1] + (r,))
            want = np.concatenate([rot, x[..., r:]], axis=-1)
        assert np.array_equal(y, want)
        with pytest.raises(ValueError, match="out must be"):
            apply(spec, x, pos, out=np.empty(x.shape, dtype=np.float32))
