"""Value checks shared by the spec and the rope-type records: each error names the key and the allowed range."""

from __future__ import annotations

import math
from typing import Any


def check_finite(name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a real number, got {type(value).__name__} {value!r}")
    if not math.isfinite(value):
        raise ValueError(f"{name} must be finite, got {value!r}")


def check_range(name: str, value: Any, low: float | None = None, high: float | None = None,
                low_open: bool = False, what: str = "") -> None:
    check_finite(name, value)
    bad = ((low is not None and (value < low or (low_open and value == low)))
           or (high is not None and value > high))
    if bad:
        lo = "" if low is None else (f"> {low}" if low_open else f">= {low}")
        hi = "" if high is None else f"<= {high}"
        rng = " and ".join(s for s in (lo, hi) if s)
        raise ValueError(f"{name}={value!r} is out of range: must be {rng}{what}")


def check_int(name: str, value: Any, low: int | None = None) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {type(value).__name__} {value!r}")
    if low is not None and value < low:
        raise ValueError(f"{name}={value!r} is out of range: must be >= {low}")


def float_tuple(name: str, value: Any) -> tuple[float, ...] | None:
    if value is None:
        return None
    if isinstance(value, (str, bytes)) or not hasattr(value, "__iter__"):
        raise TypeError(f"{name} must be a list of numbers, got {value!r}")
    out = tuple(float(v) if isinstance(v, int) and not isinstance(v, bool) else v for v in value)
    for i, v in enumerate(out):
        check_finite(f"{name}[{i}]", v)
    return out
