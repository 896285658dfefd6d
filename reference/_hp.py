"""High-precision scalar arithmetic for frequencies, on the host.

Frequencies are a few hundred scalars per spec, so they are computed with the
standard library's :mod:`decimal` at 60 significant digits (``exp``/``ln`` are
correctly rounded there) and then split into a double-double ``hi + lo``.  This
keeps every scaling formula readable as written in its source while making
omega exact to ~2**-106, far below what the angle needs.  (The test oracle uses
mpmath instead, so the two share no code.)
"""

from __future__ import annotations

import contextlib
import decimal
from decimal import Decimal

PREC = 60
# pi to 64 significant digits (OEIS A000796).
PI_DEC = Decimal("3.141592653589793238462643383279502884197169399375105820974944592")


@contextlib.contextmanager
def hp_context():
    with decimal.localcontext() as ctx:
        ctx.prec = PREC
        ctx.rounding = decimal.ROUND_HALF_EVEN
        ctx.traps[decimal.Inexact] = False
        yield ctx


def D(x) -> Decimal:
    """Exact Decimal of a float/int (no rounding: binary doubles are finite decimals)."""
    return Decimal(x)


def power(base: Decimal, exponent: Decimal) -> Decimal:
    return (exponent * base.ln()).exp()


def to_dd(v: Decimal) -> tuple[float, float]:
    hi = float(v)
    return hi, float(v - Decimal(hi))
