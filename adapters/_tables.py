"""The two ways an adapter builds cos/sin tables (or angles) for ops that take them from the caller.

Many kernels only apply a rotation (the ONNX op, flash-attn, Liger, TransformerEngine):
the caller builds the tables.  Adapters of those ops build them in one of two ways,
and only here:

* **reference tables** (``cache='ref'``): ``ropeconf.reference`` cos/sin (float64, exact
  to 2**-52) times the attention factor and the xPos magnitude of the role, rounded
  once to the tested dtype.  Every rope_type then "passes" by construction: such an
  adapter tests only the application step (pairing, partial rotation, gathering by
  position, arithmetic in the tested dtype), never a frequency formula;
* **float32 tables** (``cache='f32'``): what a user typically writes: our exact
  ``inv_freq`` cast to float32, ``angle = float32(position) * float32(inv_freq)`` in
  float32 (LongRoPE's per-position switch picks the set per position), cos/sin in
  float32, times the float32 attention factor.  The error grows like position *
  2**-24, which is the point.

No RoPE formula lives here: frequencies, attention factors and xPos scales come from
the reference; this is the conventional user-side recipe around them.
"""

from __future__ import annotations

import numpy as np

from ropeconf.reference import RopeSpec, angles, cos_sin, inv_freq, pair_index, xpos_scale
from ropeconf.reference.dtypes import numpy_dtype

CACHES = ("ref", "f32")


def _check(cache: str) -> None:
    if cache not in CACHES:
        raise ValueError(f"cache must be one of {CACHES}, got {cache!r}")


def per_pair_positions(spec: RopeSpec, rows: np.ndarray) -> np.ndarray:
    """Positions broadcast per pair: rows (R,) -> (R, 1); stream rows (..., streams) -> (..., r/2)."""
    rows = np.asarray(rows)
    if spec.n_streams > 1:
        return rows[..., pair_index(spec)[1]]
    return rows[..., None]


def float32_angles(spec: RopeSpec, rows: np.ndarray, seq_len: int | None) -> np.ndarray:
    """float32(p) * float32(omega) in float32, per row and pair (the conventional recipe)."""
    pp = per_pair_positions(spec, rows)
    p32 = pp.astype(np.float32)
    if spec.rope_type == "longrope" and spec.longrope_switch == "position":
        L0 = spec.original_max_position_embeddings
        short = inv_freq(spec)[0].astype(np.float32)
        long = inv_freq(spec, L0 + 1)[0].astype(np.float32)
        return np.where(pp >= L0, p32 * long, p32 * short).astype(np.float32)
    return (p32 * inv_freq(spec, seq_len)[0].astype(np.float32)).astype(np.float32)


def table_angles(spec: RopeSpec, rows: np.ndarray, seq_len: int | None, cache: str = "ref") -> np.ndarray:
    """Angles per row and pair, float32: our float64 angle rounded once (``ref``) or the float32 recipe."""
    _check(cache)
    if cache == "ref":
        return np.asarray(angles(spec, np.asarray(rows, dtype=np.int64), seq_len=seq_len),
                          dtype=np.float64).astype(np.float32)
    return float32_angles(spec, rows, seq_len)


def cos_sin_tables(spec: RopeSpec, rows: np.ndarray, seq_len: int | None, dtype: str, cache: str = "ref",
                   role: str = "query") -> tuple[np.ndarray, np.ndarray]:
    """cos and sin tables (rows..., r/2) in ``dtype``, attention factor (and xPos for ``ref``) folded in."""
    _check(cache)
    out = numpy_dtype(dtype)
    if cache == "ref":
        c, s = cos_sin(spec, rows, seq_len=seq_len)
        mag = np.float64(inv_freq(spec, seq_len)[1])
        if spec.xpos:
            mag = mag * xpos_scale(spec, rows, seq_len=seq_len, role=role)
        if not (np.ndim(mag) == 0 and mag == 1.0):
            c, s = c * mag, s * mag
        return c.astype(out), s.astype(out)
    if spec.xpos:
        raise ValueError("float32 tables do not model xPos")
    ang = float32_angles(spec, rows, seq_len)
    c, s = np.cos(ang), np.sin(ang)
    att = inv_freq(spec, seq_len)[1]
    if att != 1.0:
        c, s = c * np.float32(att), s * np.float32(att)
    return c.astype(out), s.astype(out)
