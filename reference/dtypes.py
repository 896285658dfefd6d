"""Every dtype fact in one place: names, unit roundoff, range, NumPy types, rounding.

The suite tests four floating dtypes.  bfloat16 has no NumPy dtype of its own:
it is ``ml_dtypes.bfloat16`` in memory and travels as its uint16 bit pattern in
files (golden data).  Adapters convert to their framework by name
(``getattr(torch, name)``, ``keras.ops.cast(x, name)``...).
"""

from __future__ import annotations

import numpy as np

DTYPES = ("float64", "float32", "float16", "bfloat16")
# u = 2**-(p) for a p+1-bit significand: round-to-nearest relative error bound.
UNIT_ROUNDOFF = {"float64": 2.0 ** -53, "float32": 2.0 ** -24, "float16": 2.0 ** -11, "bfloat16": 2.0 ** -8}
# Smallest normal: below it outputs are subnormal and relative bounds fail.
TINY = {"float64": 2.0 ** -1022, "float32": 2.0 ** -126, "float16": 2.0 ** -14, "bfloat16": 2.0 ** -126}
# Largest finite value.
MAX_FINITE = {"float64": float(np.finfo(np.float64).max), "float32": float(np.finfo(np.float32).max),
              "float16": 65504.0, "bfloat16": 3.3895313892515355e38}
# Integers up to this magnitude are exact (2**(p+1)).
EXACT_INT = {"float64": 2 ** 53, "float32": 2 ** 24, "float16": 2 ** 11, "bfloat16": 2 ** 8}


def check(name: str) -> str:
    """``name`` if it is a tested dtype, else a ValueError naming the allowed ones."""
    if name not in DTYPES:
        raise ValueError(f"dtype {name!r} is not one of {', '.join(DTYPES)}")
    return name


def numpy_dtype(name: str) -> np.dtype:
    """The in-memory NumPy dtype (``ml_dtypes.bfloat16`` for bfloat16)."""
    if check(name) == "bfloat16":
        import ml_dtypes

        return np.dtype(ml_dtypes.bfloat16)
    return np.dtype(name)


def name_of(dtype) -> str | None:
    """The tested-dtype name of a NumPy dtype, or None for anything else (complex, object, ints...)."""
    dt = np.dtype(dtype)
    return dt.name if dt.name in DTYPES else None


def round_to(x: np.ndarray, name: str) -> np.ndarray:
    """x rounded to ``name`` (round to nearest even), returned in that dtype."""
    return np.asarray(x).astype(numpy_dtype(name))
