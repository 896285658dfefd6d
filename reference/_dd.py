"""Double-double ("dd") arithmetic and an exact-enough cos/sin of ``p * omega``.

Written against an array namespace ``xp`` (NumPy, CuPy, torch, JAX,
array_api_strict through array-api-compat; standard functions only),
elementwise only, so that it runs unchanged on a GPU.

Why: the naive float64 ``cos(p * w)`` is off by ~5e-11 at p = 1e6 because the
product ``p * w`` is rounded (its ulp at 1e6 is 1.2e-10).  Here the angle is
kept as an unevaluated sum ``hi + lo`` of two doubles (~106 bits), the range is
reduced by a three-word pi/2, and only the final ``cos``/``sin`` of a reduced
argument in [-pi/4, pi/4] is rounded.  docs/accuracy.md has the error analysis.

Every algorithm here is error-free (Dekker 1971, Knuth TAOCP vol. 2 4.2.2) and
needs IEEE round-to-nearest without FMA contraction; NumPy ufuncs never
contract.  A fused GPU kernel must be compiled with ``--fmad=false``.
"""

from __future__ import annotations

import math
from decimal import Decimal

from ._hp import PI_DEC, hp_context

_SPLITTER = 134217729.0  # 2**27 + 1, Dekker's splitter for binary64

with hp_context():
    _PIO2 = PI_DEC / 2
    _C1 = float(_PIO2)
    _C2 = float(_PIO2 - Decimal(_C1))
    _C3 = float(_PIO2 - Decimal(_C1) - Decimal(_C2))
    _TWO_OVER_PI = float(2 / PI_DEC)


def _split_scalar(a: float) -> tuple[float, float]:
    t = _SPLITTER * a
    hi = t - (t - a)
    return hi, a - hi


# pi/2 words split in 26-bit halves: an integer k with |k| < 2**26 times either half is exact
_C1H, _C1L = _split_scalar(_C1)
_C2H, _C2L = _split_scalar(_C2)
_SMALL_K = 2.0 ** 26


def two_sum(xp, a, b):
    """s + e == a + b exactly (Knuth)."""
    s = a + b
    bb = s - a
    e = (a - (s - bb)) + (b - bb)
    return s, e


def fast_two_sum(a, b):
    """s + e == a + b exactly, given |a| >= |b| (Dekker)."""
    s = a + b
    e = b - (s - a)
    return s, e


def split(a):
    t = _SPLITTER * a
    hi = t - (t - a)
    return hi, a - hi


def two_prod(a, b):
    """p + e == a * b exactly (Dekker's product, no FMA needed)."""
    p = a * b
    ah, al = split(a)
    bh, bl = split(b)
    e = ((ah * bh - p) + ah * bl + al * bh) + al * bl
    return p, e


def dd_angle(p, w_hi, w_lo):
    """The angle p * (w_hi + w_lo) as a dd pair; p is any double (exact input)."""
    m, me = two_prod(p, w_hi)
    return fast_two_sum(m, me + p * w_lo)


def cos_sin_dd(xp, a_hi, a_lo):
    """cos and sin of the dd angle a_hi + a_lo, each with |error| <= 2**-52.

    Range reduction: k = round(a * 2/pi), r = a - k*pi/2 with pi/2 held in three
    doubles C1+C2+C3 (~160 bits).  k*C1 and k*C2 are formed exactly with
    two_prod; a_hi - k*C1 is exact by Sterbenz's lemma.  The remaining terms are
    below 2**-20 in size, so their rounding is below 2**-73.  cos/sin of the
    reduced r_hi + r_lo use the first-order correction, whose truncation error
    is r_lo**2 / 2 < 2**-140.
    """
    k = xp.round(a_hi * _TWO_OVER_PI)
    if math.prod(a_hi.shape) and bool(xp.max(xp.abs(a_hi)) < _SMALL_K):
        # |k| < 2**26: k * C_H and k * C_L are exact, so k * C = the exact dd (k*C_H) + (k*C_L)
        a, ae = fast_two_sum(k * _C1H, k * _C1L)
        b, be = fast_two_sum(k * _C2H, k * _C2L)
    else:
        a, ae = two_prod(k, _C1)
        b, be = two_prod(k, _C2)
    s1 = a_hi - a
    t = (((a_lo - ae) - b) - be) - k * _C3
    r_hi, r_lo = two_sum(xp, s1, t)
    c0 = xp.cos(r_hi)
    s0 = xp.sin(r_hi)
    c = c0 - s0 * r_lo
    s = s0 + c0 * r_lo
    q = xp.astype(k - 4.0 * xp.floor(k * 0.25), xp.int8)  # k mod 4, also for k < 0
    swap = (q == 1) | (q == 3)
    cos_ = xp.where(swap, s, c)
    sin_ = xp.where(swap, c, s)
    cos_ = xp.where((q == 1) | (q == 2), -cos_, cos_)
    sin_ = xp.where((q == 2) | (q == 3), -sin_, sin_)
    return cos_, sin_
