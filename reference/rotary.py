"""Public reference API: ``inv_freq``, ``cos_sin``, ``apply``, ``apply_angles``.

Conventions (docs/spec.md has the full text):

* ``positions``: integer or real array.  Plain RoPE: any shape P, one position
  per token.  Axial (``axial_axes=N``) and M-RoPE (``mrope_section`` of N
  streams): shape P + (N,), one coordinate per axis/stream (t, h, w for M-RoPE).
* ``cos_sin`` returns float64 arrays of shape P + (rotary_dim // 2,), one value
  per rotated pair, *without* the attention factor or xPos scale.
* ``apply(spec, x, positions)`` rotates the last axis of ``x`` (head_dim wide).
  cos/sin of shape P + (r/2,) broadcast against ``x.shape[:-1]``; when
  ``positions.ndim == x.ndim - 2`` (positions (batch, seq) with x (batch,
  heads, seq, head_dim)) a heads axis is inserted before seq.
* ``seq_len=None`` means ``max(positions) + 1`` (HF's rule); it only matters for
  dynamic NTK, LongRoPE's sequence switch and the xPos centre.
"""

from __future__ import annotations

import functools
import math
from decimal import Decimal
from typing import Any

import numpy as np

from . import _exec
from ._dd import cos_sin_dd, dd_angle
from ._hp import hp_context, to_dd
from .frequencies import ROPE_TYPES, inv_freq_for
from .spec import RopeSpec

__all__ = ["inv_freq", "cos_sin", "angles", "apply", "apply_angles", "xpos_scale", "pair_index", "namespace"]


def namespace(*arrays: Any):
    """The array-api-compat namespace of the arrays (NumPy when given Python/NumPy data)."""
    import array_api_compat

    arrs = [a for a in arrays if a is not None and not isinstance(a, (int, float, list, tuple))]
    return array_api_compat.array_namespace(*arrs) if arrs else array_api_compat.array_namespace(np.empty(0))


def _as_spec(spec: RopeSpec | dict) -> RopeSpec:
    if isinstance(spec, RopeSpec):
        return spec
    if isinstance(spec, dict):
        return RopeSpec.from_dict(spec)
    raise TypeError(f"spec must be a RopeSpec or a dict, got {type(spec).__name__}")


def _check_positions(xp, spec: RopeSpec, positions):
    if not hasattr(positions, "dtype"):
        positions = xp.asarray(np.asarray(positions))
    kind = "i" if xp.isdtype(positions.dtype, "integral") else (
        "f" if xp.isdtype(positions.dtype, "real floating") else "?")
    if kind == "?":
        raise TypeError(f"positions must be an integer or real array, got dtype {positions.dtype}")
    if kind == "f" and not bool(xp.all(xp.isfinite(positions))):
        raise ValueError("positions must be finite (found NaN or inf)")
    if spec.n_streams > 1:
        if positions.ndim < 1 or positions.shape[-1] != spec.n_streams:
            raise ValueError(f"positions must have a trailing axis of length {spec.n_streams} for "
                             f"this spec ({'axial_axes' if spec.axial_axes else 'mrope_section'}), "
                             f"got shape {tuple(positions.shape)}")
    if kind == "f" and ROPE_TYPES[spec.rope_type].length_dependent and \
            not bool(xp.all(positions == xp.round(positions))):
        raise ValueError(f"positions must be integers for rope_type={spec.rope_type!r} "
                         f"(its length rule max(positions)+1 is defined on token indices)")
    return positions


def _default_seq_len(xp, positions) -> int | None:
    if _size(positions) == 0:
        return None
    return int(xp.max(positions)) + 1


def pair_index(spec: RopeSpec) -> tuple[np.ndarray, np.ndarray]:
    """For each rotated pair j: (frequency index, position stream) as int arrays.

    Plain: (j, 0).  Axial: block a = j // n_freqs uses axis a and frequency
    j % n_freqs (rotary-embedding-torch ``get_axial_freqs`` order).  M-RoPE
    chunked (Qwen2-VL): the first s_0 pairs use stream 0 (t), the next s_1
    stream 1 (h), ...  Interleaved (Qwen3-VL ``apply_interleaved_mrope``): pair j
    uses h if j % 3 == 1 and j < 3*s_h, w if j % 3 == 2 and j < 3*s_w, else t.
    """
    n = spec.n_pairs
    j = np.arange(n)
    if spec.axial_axes:
        return j % spec.n_freqs, j // spec.n_freqs
    if spec.mrope_section is None:
        return j, np.zeros(n, dtype=np.int64)
    sec = spec.mrope_section
    if not spec.mrope_interleaved:
        return j, np.repeat(np.arange(len(sec)), sec)
    stream = np.zeros(n, dtype=np.int64)
    stream[(j % 3 == 1) & (j < 3 * sec[1])] = 1
    stream[(j % 3 == 2) & (j < 3 * sec[2])] = 2
    return j, stream


def _omega_dd(spec: RopeSpec, seq_len: int | None, long: bool | None = None):
    """Per-pair omega as (hi, lo) float64 NumPy arrays, plus the attention factor (Decimal)."""
    return _omega_dd_cached(spec, ROPE_TYPES[spec.rope_type].key_for(spec, seq_len, long))


@functools.lru_cache(maxsize=1024)
def _omega_dd_cached(spec: RopeSpec, key):
    # Cached on the normalized length key: the 60-digit frequencies cost ~ms per spec; specs are immutable.
    omega, att = ROPE_TYPES[spec.rope_type].frequencies(spec, key) if key is not None else inv_freq_for(spec, None)
    fidx, _ = pair_index(spec)
    with hp_context():
        pairs = [to_dd(omega[i]) for i in fidx]
    hi = np.array([p[0] for p in pairs], dtype=np.float64)
    lo = np.array([p[1] for p in pairs], dtype=np.float64)
    hi.flags.writeable = lo.flags.writeable = False
    return hi, lo, att


def inv_freq(spec: RopeSpec | dict, seq_len: int | None = None) -> tuple[np.ndarray, float]:
    """Inverse frequency per rotated pair (float64, shape (rotary_dim//2,)) and the attention factor.

    The float64 values are the exact frequencies correctly rounded.  LongRoPE
    with ``longrope_switch='position'`` returns the set for ``seq_len`` (short
    when it is None or <= L0).
    """
    spec = _as_spec(spec)
    if seq_len is not None and (isinstance(seq_len, bool) or int(seq_len) != seq_len or seq_len < 1):
        raise ValueError(f"seq_len must be a positive int, got {seq_len!r}")
    if spec.rope_type == "longrope" and seq_len is None:
        seq_len = spec.original_max_position_embeddings
    hi, _, att = _omega_dd(spec, seq_len)
    return hi.copy(), float(att)


def _angles_cos_sin(xp, spec: RopeSpec, positions, seq_len: int | None):
    """cos, sin of shape P + (n_pairs,) (P = positions.shape without the stream axis).

    Plain positions are de-duplicated first (batch rows usually repeat the same
    positions), so the double-double work scales with the distinct positions.
    """
    positions = _check_positions(xp, spec, positions)
    if seq_len is None:
        seq_len = _default_seq_len(xp, positions)
    dev = _device(positions)
    p = _f64(xp, positions)
    if spec.n_streams == 1 and p.ndim >= 1 and _size(p) > 1:
        uniq, inverse = xp.unique_inverse(p)
        if uniq.shape[0] < _size(p):
            c, s = _cos_sin_flat(xp, spec, uniq, seq_len, dev)
            idx = xp.reshape(inverse, (-1,))
            shape = tuple(p.shape) + (spec.n_pairs,)
            return (xp.reshape(xp.take(c, idx, axis=0), shape), xp.reshape(xp.take(s, idx, axis=0), shape),
                    seq_len)
    c, s = _cos_sin_flat(xp, spec, p, seq_len, dev)
    return c, s, seq_len


def _cos_sin_flat(xp, spec: RopeSpec, p, seq_len: int | None, dev):
    """cos, sin for float64 positions p of shape Q (+ (n_streams,) for multi-stream specs).

    Elementwise work: large NumPy inputs are split into row chunks across threads
    (``_exec.map_rows``); the result is identical.
    """
    row = spec.n_pairs * (p.shape[-1] if spec.n_streams > 1 else 1)
    return _exec.map_rows(lambda ch: _cos_sin_one(xp, spec, ch, seq_len, dev), p, _size(p) * spec.n_pairs, row)


def _cos_sin_one(xp, spec: RopeSpec, p, seq_len: int | None, dev):
    _, stream = pair_index(spec)
    if spec.n_streams > 1:
        p = xp.take(p, _const(xp, stream, dev), axis=-1)  # Q + (n_pairs,)
    else:
        p = xp.expand_dims(p, axis=-1)  # Q + (1,)
    if spec.rope_type == "longrope" and spec.longrope_switch == "position":
        out = []
        for long in (False, True):
            hi, lo, _ = _omega_dd(spec, seq_len, long)
            out.append(cos_sin_dd(xp, *dd_angle(p, _const(xp, hi, dev), _const(xp, lo, dev))))
        is_long = p >= spec.original_max_position_embeddings
        return xp.where(is_long, out[1][0], out[0][0]), xp.where(is_long, out[1][1], out[0][1])
    hi, lo, _ = _omega_dd(spec, seq_len)
    return cos_sin_dd(xp, *dd_angle(p, _const(xp, hi, dev), _const(xp, lo, dev)))


def _device(a):
    import array_api_compat

    return array_api_compat.device(a)


def _size(a) -> int:
    """Number of elements (``.size`` is a method on torch tensors, a property elsewhere)."""
    return math.prod(a.shape)


def _const(xp, table: np.ndarray, dev):
    """A NumPy table (frequencies, stream indices) as an array of ``xp`` on ``dev``.

    A copy: the cached tables are read-only, and torch warns on (and could write
    through) a tensor sharing a read-only NumPy buffer.
    """
    return xp.asarray(table, device=dev, copy=True)


def _f64(xp, a):
    """``a`` as float64; a TypeError when the namespace silently gives less (JAX without x64)."""
    a = xp.astype(a, xp.float64)
    if a.dtype != xp.float64:
        raise TypeError(f"{xp.__name__} returned {a.dtype} for float64: the reference needs float64 "
                        f"(JAX: jax.config.update('jax_enable_x64', True) before creating arrays)")
    return a


def cos_sin(spec: RopeSpec | dict, positions, seq_len: int | None = None):
    """cos and sin of every angle p * omega_j, float64, shape P + (rotary_dim//2,).

    Not multiplied by the attention factor.  |error| <= 2**-52 against the exact
    value (docs/accuracy.md).
    """
    spec = _as_spec(spec)
    xp = namespace(positions)
    c, s, _ = _angles_cos_sin(xp, spec, positions, seq_len)
    return c, s


def angles(spec: RopeSpec | dict, positions, seq_len: int | None = None):
    """The angles p * omega_j per pair, float64 (rounded once), shape P + (rotary_dim//2,).

    For magnitudes and plots; cos/sin of these are *not* the exact cos/sin
    (use :func:`cos_sin`).  LongRoPE with the per-position switch uses each
    position's own factor set.
    """
    spec = _as_spec(spec)
    xp = namespace(positions)
    positions = _check_positions(xp, spec, positions)
    if seq_len is None:
        seq_len = _default_seq_len(xp, positions)
    dev = _device(positions)
    p = _f64(xp, positions)
    _, stream = pair_index(spec)
    p = xp.take(p, _const(xp, stream, dev), axis=-1) if spec.n_streams > 1 else xp.expand_dims(p, axis=-1)
    if spec.rope_type == "longrope" and spec.longrope_switch == "position":
        short, long = _omega_dd(spec, seq_len, False)[0], _omega_dd(spec, seq_len, True)[0]
        return xp.where(p >= spec.original_max_position_embeddings, p * _const(xp, long, dev),
                        p * _const(xp, short, dev))
    return p * _const(xp, _omega_dd(spec, seq_len)[0], dev)


def xpos_scale(spec: RopeSpec | dict, positions, seq_len: int | None = None, role: str = "query"):
    """xPos magnitude per pair, shape P + (rotary_dim//2,).

    Sun et al., arXiv:2212.10554; rotary-embedding-torch ``get_scale``:
    zeta_j = (2j + 0.4 r) / (1.4 r), power = (p - c) / B with B =
    ``xpos_scale_base`` and c = ``xpos_center`` (default floor(seq_len/2));
    the query gets zeta^power and the key zeta^-power.
    """
    spec = _as_spec(spec)
    xp = namespace(positions)
    positions = _check_positions(xp, spec, positions)
    if seq_len is None:
        seq_len = _default_seq_len(xp, positions)
    return _xpos(xp, spec, positions, seq_len, role)


def _xpos(xp, spec: RopeSpec, positions, seq_len, role):
    if role not in ("query", "key"):
        raise ValueError(f"role must be 'query' or 'key', got {role!r}")
    r = spec.rotary_dim
    c = spec.xpos_center if spec.xpos_center is not None else float((seq_len or 0) // 2)
    sign = 1 if role == "query" else -1
    with hp_context():
        # sign * ln(zeta_j) / B at 60 digits, so that only the (exact) p - c multiplies it
        rate = [to_dd(sign * ((Decimal(2 * j) + Decimal("0.4") * r) / (Decimal("1.4") * r)).ln()
                      / Decimal(spec.xpos_scale_base)) for j in range(spec.n_pairs)]
    dev = _device(positions)
    lz_hi = _const(xp, np.array([v[0] for v in rate]), dev)
    lz_lo = _const(xp, np.array([v[1] for v in rate]), dev)
    p = _f64(xp, positions)
    if spec.n_streams > 1:
        p = p[..., 0]
    e_hi, e_lo = dd_angle(xp.expand_dims(p - c, axis=-1), lz_hi, lz_lo)  # dd product (p - c) * rate
    return xp.exp(e_hi) * (1.0 + e_lo)


def _rotate(xp, spec: RopeSpec, x, c, s, out=None):
    """Rotate the first rotary_dim features of x by per-pair (c, s); pass the tail through.

    Per pair (a, b) -> (a c - b s, b c + a s): the same two products and one sum on
    every path (``_exec.rotate_into`` does it in cache-sized slabs; for large NumPy
    arrays ``kernel.rotate_native`` does it in C, compiled without FMA contraction,
    unless ``$ROPECONF_NATIVE=0``), so all paths give bit-identical results.
    """
    shape = tuple(np.broadcast_shapes(tuple(x.shape[:-1]), tuple(c.shape[:-1]))) + (spec.head_dim,)
    if out is not None and (tuple(out.shape) != shape or out.dtype != xp.float64):
        raise ValueError(f"out must be a float64 array of shape {shape}, got {out.dtype} {tuple(out.shape)}")
    r, h = spec.rotary_dim, spec.n_pairs
    if tuple(x.shape) == shape and x.ndim >= 2 and _exec.native_module(x) is np:
        from . import kernel  # the compiled rotation: the same products and sums, bit for bit (docs/kernel.md)

        res = kernel.rotate_native(x, c, s, r, spec.layout == "half", out)
        if res is not None:
            return res
    if tuple(x.shape) == shape and x.ndim >= 2 and _exec.native_module(x) is not None:
        return _exec.rotate_into(x, c, s, r, spec.layout == "half", out)
    if spec.layout == "half":
        x1, x2 = x[..., :h], x[..., h:r]
    else:
        x1, x2 = x[..., 0:r:2], x[..., 1:r:2]
    o1 = x1 * c - x2 * s
    o2 = x2 * c + x1 * s
    if spec.layout == "half":
        parts = [o1, o2]
    else:
        parts = [xp.reshape(xp.stack([o1, o2], axis=-1), o1.shape[:-1] + (r,))]
    if r < spec.head_dim:
        tail = x[..., r:]
        parts.append(xp.broadcast_to(tail, o1.shape[:-1] + (tail.shape[-1],)))
    res = xp.concat(parts, axis=-1) if len(parts) > 1 else parts[0]
    if out is not None:
        out[...] = res
        return out
    return res


def _prepare_x(xp, spec: RopeSpec, x):
    if not hasattr(x, "shape"):
        x = xp.asarray(np.asarray(x))
    if x.ndim < 1 or x.shape[-1] != spec.head_dim:
        raise ValueError(f"x must have a last axis of head_dim={spec.head_dim}, got shape {tuple(x.shape)}")
    if x.dtype != xp.float64:
        x = _f64(xp, x)
    return x


def _align(xp, table, x, spec: RopeSpec, npos_axes: int):
    """Insert the heads axis for positions (batch, seq) against x (batch, heads, seq, dim)."""
    if npos_axes == x.ndim - 2 and npos_axes >= 1:
        return xp.expand_dims(table, axis=-3)
    return table


def apply(spec: RopeSpec | dict, x, positions, seq_len: int | None = None, *, role: str = "query", out=None):
    """Rotate ``x`` (any real dtype, upcast to float64) and return float64.

    ``out``: optional float64 array of the result's shape to write into (saves
    the allocation and its page faults on large tensors); a mutable array, so
    not JAX.

    Any array-API namespace (NumPy, CuPy, torch, JAX, array_api_strict):
    ``x`` and ``positions`` of one namespace and device give a result of that
    namespace on that device.  JAX needs ``jax_enable_x64`` (a TypeError
    otherwise).

    The attention factor (YaRN, LongRoPE, or ``attention_factor``) multiplies
    the rotated features only, like HF's scaled cos/sin.  With ``xpos=True`` the
    query (``role='query'``) is scaled by zeta^power and the key by
    zeta^-power.  NaN/inf in x propagate.
    """
    spec = _as_spec(spec)
    xp = namespace(x, positions)
    x = _prepare_x(xp, spec, x)
    c, s, seq_len = _angles_cos_sin(xp, spec, positions, seq_len)
    long = False if spec.rope_type == "longrope" and spec.longrope_switch == "position" else None
    att = float(_omega_dd(spec, seq_len, long)[2])
    mag = None
    if spec.xpos:
        mag = _xpos(xp, spec, xp.asarray(positions) if not hasattr(positions, "dtype") else positions, seq_len, role)
    if att != 1.0:
        mag = att if mag is None else mag * att
    if mag is not None:
        c, s = c * mag, s * mag
    npos = c.ndim - 1
    return _rotate(xp, spec, x, _align(xp, c, x, spec, npos), _align(xp, s, x, spec, npos), out)


# The host side of the compiled kernel (ropeconf.reference.kernel) uses the same validation and tables as apply.
check_positions = _check_positions
default_seq_len = _default_seq_len
omega_dd = _omega_dd


def apply_angles(spec: RopeSpec | dict, x, angles):
    """Rotate by given angles (learned rotations): ``angles`` has shape P + (rotary_dim//2,).

    rotary-embedding-torch ``apply_learned_rotations``.  The angles are taken
    as exact doubles; cos/sin are computed to the same 2**-52 bound.
    """
    spec = _as_spec(spec)
    xp = namespace(x, angles)
    x = _prepare_x(xp, spec, x)
    a = _f64(xp, xp.asarray(angles))
    if a.shape[-1] != spec.n_pairs:
        raise ValueError(f"angles must have a last axis of rotary_dim//2={spec.n_pairs}, got {tuple(a.shape)}")
    c, s = cos_sin_dd(xp, a, xp.zeros_like(a))
    npos = c.ndim - 1
    return _rotate(xp, spec, x, _align(xp, c, x, spec, npos), _align(xp, s, x, spec, npos))
