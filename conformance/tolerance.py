"""The tolerance model (docs/tolerance.md derives it; nothing here is tuned).

An implementation under test sees the input already rounded to the tested
dtype ``t``; the expected value ``y`` is the float64 reference applied to that
rounded input.  A *conventional, correct* implementation then commits these
errors, each bounded by counting roundings (u = unit roundoff: 2**-53 float64,
2**-24 float32, 2**-11 float16, 2**-8 bfloat16):

1. Angle: p and omega rounded to the angle dtype (u_a), omega from a pow and a
   division (<= 4 u_a, libm pow is within 2 ulp), scaling blends (<= 2 u_a),
   the product (u_a): C_PHI = 8 roundings.  The geometric schedule's exponent
   2i/r is itself rounded (relative u_a), which moves omega = b^(-2i/r) by
   |ln omega0| u_a relative.  A scaling formula with condition number kappa
   (|d ln omega / d ln omega0|: 1 for every variant except Llama 3's smoothing
   band, where sigma is computed from omega0 itself) amplifies all of that:
   |d phi| <= kappa * (C_PHI + |ln omega0|) * u_a * |phi|.
2. cos/sin of that angle in the angle dtype: <= C_CS * u_a absolute, C_CS = 2
   (a correctly range-reduced libm is within 1 ulp).
3. cos/sin rounded to the compute dtype (HF, MAX, KerasHub do this): <= u_c.
   Two values (cos and sin) enter each output: C_C = 2.
4. The rotation a*c - b*s in the working dtype u_w: two products and a sum,
   <= 3 u_w (|a c| + |b s|) <= 3 sqrt(2) u_w * |pair|: C_W = 5.
5. Rounding the output to its dtype: <= u_out * |y|.

Summed per element, with |pair| the norm of the *expected* output pair (so the
attention factor and xPos scale are included):

    tol = |pair| * (kappa (C_PHI + |ln omega0|) u_a |phi| + C_CS u_a + C_C u_c + C_W u_w) + u_out |y|

The angle dtype defaults to float32 for 16- and 32-bit dtypes (the
conventional practice every peer follows) and float64 for float64; compute,
working and output dtypes default to the tested dtype.  An adapter may declare
another angle dtype (for example float32 angles even for float64 input) in
its capabilities (``angle_dtype``), and likewise the dtype its cos/sin are
rounded to (``compute_dtype``, e.g. float32 tables applied to float64 input).
"""

from __future__ import annotations

import dataclasses
import functools

import numpy as np

from ropeconf.reference.dtypes import TINY, UNIT_ROUNDOFF

C_PHI, C_CS, C_C, C_W = 8.0, 2.0, 2.0, 5.0


def default_angle_dtype(dtype: str) -> str:
    return "float64" if dtype == "float64" else "float32"


@dataclasses.dataclass(frozen=True)
class Precision:
    """The dtypes of the four stages of a conventional implementation."""

    dtype: str                     # input/output dtype under test
    angle: str                     # dtype the angle p * omega is formed in
    compute: str                   # dtype cos/sin are rounded to before the rotation
    working: str                   # dtype of the rotation arithmetic

    @classmethod
    def conventional(cls, dtype: str, angle: str | None = None, compute: str | None = None,
                     output: str | None = None) -> "Precision":
        """The tested ``dtype`` with the declared angle / compute / output dtypes (None: conventional)."""
        return cls(output or dtype, angle or default_angle_dtype(dtype), compute or dtype, dtype)


def angle_error_factor(spec, seq_len: int | None = None) -> "np.ndarray":
    """Per pair: kappa (C_PHI + |ln omega0|) + extra, the multiplier of u_a |phi| (see the module doc).

    omega0 is the unscaled geometric frequency (its exponent 2i/r is rounded); kappa and
    extra are the rope type's conditioning (``RopeType.conditioning``: Llama 3's
    smoothing band, YaRN's ramp, NTK's scaled base; 1 and 0 for a formula that does not
    amplify).  ``seq_len`` (default: L0) selects the frequencies of length-dependent types.
    The result is cached per (spec, seq_len) and read-only.
    """
    from ropeconf.reference import RopeSpec
    from ropeconf.reference.frequencies import ROPE_TYPES

    spec = spec if isinstance(spec, RopeSpec) else RopeSpec.from_dict(spec)
    return _angle_error_factor(spec, seq_len if ROPE_TYPES[spec.rope_type].length_dependent else None)


@functools.lru_cache(maxsize=4096)
def _angle_error_factor(spec, seq_len: int | None) -> "np.ndarray":
    from ropeconf.reference import inv_freq
    from ropeconf.reference.frequencies import ROPE_TYPES, SCALING_KEYS

    if spec.freqs_for != "lang":
        out = np.full(spec.n_pairs, C_PHI)
        out.flags.writeable = False
        return out
    unscaled = {k: v for k, v in spec.to_dict().items() if k not in SCALING_KEYS}
    w0, _ = inv_freq({**unscaled, "rope_type": "default"})
    rt = ROPE_TYPES[spec.rope_type]
    w = inv_freq(spec, (seq_len or spec.original_max_position_embeddings) if rt.length_dependent else None)[0]
    kappa, extra = rt.conditioning(spec, w0, w)
    out = kappa * (C_PHI + np.abs(np.log(w0))) + extra
    out.flags.writeable = False  # cached: shared by every caller
    return out


C_X = 3.0  # the xPos scale's own roundings: zeta (2), pow (1 + libm)


def xpos_error_factor(spec, positions: np.ndarray, seq_len: int | None = None) -> np.ndarray:
    """Per (position, pair): the relative error of a conventional xPos scale, in units of u_a.

    scale = zeta_j ** ((p - c) / B) with zeta_j = (2j + 0.4 r) / (1.4 r) and power = (p - c)/B
    formed in the angle dtype: zeta's 2 roundings and the power's division (1) are amplified
    by the power and by |ln zeta| (d ln scale = ln(zeta) d power + power d zeta / zeta), and
    pow rounds once more: |power| (|ln zeta_j| + 2) + C_X.  0 for specs without xPos.
    """
    p = np.asarray(positions, dtype=np.float64)
    if p.ndim == 3:
        p = p[..., 0]
    n = spec.n_pairs
    if not spec.xpos:
        return np.zeros(p.shape + (n,))
    r = spec.rotary_dim
    if seq_len is None:
        seq_len = int(p.max()) + 1 if p.size else 0
    c = spec.xpos_center if spec.xpos_center is not None else float(seq_len // 2)
    power = np.abs(p - c)[..., None] / spec.xpos_scale_base
    ln_zeta = np.abs(np.log((2 * np.arange(n) + 0.4 * r) / (1.4 * r)))
    return power * (ln_zeta + 2.0) + C_X


def pair_views(a: np.ndarray, rotary_dim: int, layout: str) -> tuple[np.ndarray, np.ndarray]:
    """Views of the first and second member of every rotated pair (half-split or interleaved)."""
    h = rotary_dim // 2
    return (a[..., :h], a[..., h:rotary_dim]) if layout == "half" else \
        (a[..., 0:rotary_dim:2], a[..., 1:rotary_dim:2])


def pair_norm(y: np.ndarray, rotary_dim: int, layout: str) -> np.ndarray:
    """Per-element norm of the rotated pair each element belongs to (tail: |y|)."""
    y = np.asarray(y, dtype=np.float64)
    out = np.abs(y).copy()
    n = np.hypot(*pair_views(y, rotary_dim, layout))
    for view in pair_views(out, rotary_dim, layout):
        view[...] = n
    return out


def angle_magnitude(positions_angles: np.ndarray, rotary_dim: int, head_dim: int, layout: str) -> np.ndarray:
    """|phi| per element from per-pair angles of shape (..., r/2) (tail elements: 0)."""
    a = np.abs(np.asarray(positions_angles, dtype=np.float64))
    out = np.zeros(a.shape[:-1] + (head_dim,))
    if layout == "half":
        out[..., : rotary_dim // 2] = a
        out[..., rotary_dim // 2: rotary_dim] = a
    else:
        out[..., 0:rotary_dim:2] = a
        out[..., 1:rotary_dim:2] = a
    return out


def bound(expected: np.ndarray, phi: np.ndarray, rotary_dim: int, layout: str,
          precision: Precision, angle_factor: np.ndarray | float = C_PHI,
          scale_factor: np.ndarray | float = 0.0) -> np.ndarray:
    """Elementwise tolerance for ``expected`` (float64) given per-element |phi| (same shape).

    ``angle_factor``: per element (or scalar) multiplier of u_a |phi|, from
    :func:`angle_error_factor` expanded like ``phi``; C_PHI alone by default.
    ``scale_factor``: per element relative error of the output's magnitude (xPos scale) in
    units of u_a, from :func:`xpos_error_factor` expanded like ``phi``.
    """
    u_a = UNIT_ROUNDOFF[precision.angle]
    u_c = UNIT_ROUNDOFF[precision.compute]
    u_w = UNIT_ROUNDOFF[precision.working]
    u_o = UNIT_ROUNDOFF[precision.dtype]
    y = np.asarray(expected, dtype=np.float64)
    pn = pair_norm(y, rotary_dim, layout)
    rotated = np.zeros(y.shape, dtype=bool)
    rotated[..., :rotary_dim] = True  # both layouts rotate the first rotary_dim features
    rot_term = pn * (angle_factor * u_a * phi + scale_factor * u_a + C_CS * u_a + C_C * u_c + C_W * u_w)
    tol = np.where(rotated, rot_term, 0.0) + u_o * np.abs(y)
    return np.maximum(tol, TINY[precision.dtype])


def relative_rotation_tolerance(phi: np.ndarray, precision: Precision,
                                angle_factor: np.ndarray | float = C_PHI,
                                scale_factor: np.ndarray | float = 0.0) -> np.ndarray:
    """The rotated part of the tolerance relative to the pair norm, per element (same shape as phi)."""
    u_a, u_c, u_w = (UNIT_ROUNDOFF[d] for d in (precision.angle, precision.compute, precision.working))
    return angle_factor * u_a * phi + scale_factor * u_a + C_CS * u_a + C_C * u_c + C_W * u_w


def unjudgeable(phi: np.ndarray, rotary_dim: int, precision: Precision,
                angle_factor: np.ndarray | float = C_PHI, scale_factor: np.ndarray | float = 0.0) -> np.ndarray:
    """Rotated elements whose tolerance reaches the size of their pair: no output there can be told wrong
    from right by its rotation (any angle is within the bound), so they are not judged (docs/tolerance.md)."""
    rel = relative_rotation_tolerance(phi, precision, angle_factor, scale_factor)
    mask = np.zeros(np.shape(rel), dtype=bool)
    mask[..., :rotary_dim] = np.asarray(rel)[..., :rotary_dim] >= 1.0
    return mask


@functools.lru_cache(maxsize=4096)
def judgeable_position_limit(spec, precision: Precision) -> float:
    """The largest |position| at which every rotated pair of ``spec`` stays judgeable under ``precision``.

    From tol_rel(p) = fac_j u_a |p omega_j| + C_CS u_a + C_C u_c + C_W u_w < 1 for every pair j
    (the attention factor and xPos scale cancel in the relative tolerance).  inf when no pair rotates
    with position (all omega = 0) or the constant terms alone reach 1 (then: 0).
    """
    from ropeconf.reference import inv_freq

    u_a = UNIT_ROUNDOFF[precision.angle]
    const = C_CS * u_a + C_C * UNIT_ROUNDOFF[precision.compute] + C_W * UNIT_ROUNDOFF[precision.working]
    if const >= 1.0:
        return 0.0
    omega, _ = inv_freq(spec, spec.original_max_position_embeddings if spec.original_max_position_embeddings else None)
    if spec.rope_type == "longrope":  # the long set applies past L0 and can be faster
        omega = np.maximum(omega, inv_freq(spec, spec.original_max_position_embeddings + 1)[0])
    rate = angle_error_factor(spec) * u_a * np.abs(omega)
    top = float(np.max(rate)) if rate.size else 0.0
    return float("inf") if top == 0.0 else (1.0 - const) / top


def error_ratio(actual: np.ndarray, expected: np.ndarray, tol: np.ndarray) -> np.ndarray:
    """|actual - expected| / tol elementwise; NaN/inf where expected is finite count as inf."""
    a = np.asarray(actual, dtype=np.float64)
    e = np.asarray(expected, dtype=np.float64)
    with np.errstate(invalid="ignore", over="ignore"):
        r = np.abs(a - e) / tol
    same_nonfinite = ~np.isfinite(e) & ((a == e) | (np.isnan(a) & np.isnan(e)))
    r = np.where(same_nonfinite, 0.0, r)
    return np.where(np.isnan(r), np.inf, r)
