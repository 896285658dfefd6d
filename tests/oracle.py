"""An independent, scalar, arbitrary-precision oracle for every RoPE variant.

This module is the *expected value* side of the reference tests.  It is
written from the published formulas (cited per function) with mpmath at
``DPS`` = 50 significant digits, one scalar at a time, and shares no code with
``ropeconf.reference``: it reads only the *fields* of a spec (``spec.rotary_dim``,
``spec.rope_theta``, ...) and never calls or imports anything from
``reference/frequencies.py``, ``reference/_dd.py``, ``reference/_hp.py`` or
``reference/rotary.py``.  (Derived properties such as ``spec.n_freqs`` are
recomputed here from the raw fields.)

Semantics mirrored (as documented in reference/rotary.py and
reference/frequencies.py docstrings):

* ``seq_len=None`` means ``floor(max(positions)) + 1`` (HF's
  ``max(position_ids) + 1``), taken over every coordinate of every stream.
* LongRoPE ``longrope_switch='sequence'``: long factors when ``seq_len > L0``;
  ``'position'``: per rotated pair, long factors when that pair's position
  ``>= L0``.
* The attention factor multiplies only the rotated part; features
  ``rotary_dim..head_dim-1`` pass through unchanged.
* Layout ``'half'`` rotates pairs ``(i, i + r/2)``, ``'interleaved'`` pairs
  ``(2i, 2i+1)``; a pair ``(u, v)`` maps to ``(u cos - v sin, v cos + u sin)``.
* xPos centre ``floor(seq_len / 2)`` unless ``xpos_center``; the query is
  scaled by ``zeta^power`` and the key by ``zeta^-power``.  For multi-axis
  positions xPos uses the first coordinate (a reference convention: no
  publication defines xPos on more than one axis).

Axial RoPE note: every schedule exponent (geometric ``2i/d``) is taken over the
*per-axis* rotated width ``d = 2 * n_freqs`` (rotary-embedding-torch builds one
``RotaryEmbedding(dim)`` per axis).  The NTK/dynamic exponent ``d/(d-2)`` and the
YaRN correction dimension use that same ``d``, because both formulas are
derived from the schedule ``b^(-2i/d)`` they rescale (bloc97: the lowest
frequency ``b^(-(d-2)/d)`` must become ``1/s`` of itself; YaRN: the wavelength of
dimension index i is ``2 pi b^(2i/d)``).  For non-axial specs ``d = rotary_dim``.
"""

from __future__ import annotations

import math
from functools import lru_cache
from typing import Sequence

import mpmath

DPS = 50
ctx = mpmath.MPContext()
ctx.dps = DPS
mpf = ctx.mpf

__all__ = ["DPS", "ctx", "mpf", "oracle_pair_map", "oracle_inv_freq", "oracle_cos_sin",
           "oracle_apply", "oracle_magnitude", "oracle_xpos_scale", "oracle_default_seq_len",
           "oracle_n_freqs", "oracle_n_streams", "to_float"]


# --------------------------------------------------------------------------- geometry
def oracle_n_freqs(spec) -> int:
    """Distinct frequencies: rotary_dim/2, or rotary_dim/2/axial_axes for axial RoPE."""
    n = spec.rotary_dim // 2
    return n // spec.axial_axes if spec.axial_axes else n


def oracle_n_streams(spec) -> int:
    if spec.axial_axes:
        return spec.axial_axes
    if spec.mrope_section is not None:
        return len(spec.mrope_section)
    return 1


@lru_cache(maxsize=None)
def _pair_map(rotary_dim: int, axial_axes: int, mrope_section, mrope_interleaved: bool):
    n = rotary_dim // 2
    if axial_axes:
        # rotary-embedding-torch get_axial_freqs: per-axis frequency blocks are
        # concatenated in axis order, so block a = pairs [a*nf, (a+1)*nf) uses axis a.
        nf = n // axial_axes
        return tuple((j % nf, j // nf) for j in range(n))
    if mrope_section is None:
        return tuple((j, 0) for j in range(n))
    if not mrope_interleaved:
        # Qwen2-VL (arXiv:2409.12191, HF apply_multimodal_rotary_pos_emb): chunks of
        # mrope_section[k] consecutive pairs take stream k (t, h, w).
        streams = []
        for k, size in enumerate(mrope_section):
            streams.extend([k] * size)
        return tuple((j, streams[j]) for j in range(n))
    # Qwen3-VL HF Qwen3VLTextRotaryEmbedding.apply_interleaved_mrope:
    #   freqs_t = freqs[0]
    #   for dim, offset in enumerate((1, 2), start=1):
    #       length = mrope_section[dim] * 3
    #       freqs_t[..., slice(offset, length, 3)] = freqs[dim, ..., slice(offset, length, 3)]
    streams = [0] * n
    for dim, offset in ((1, 1), (2, 2)):
        length = mrope_section[dim] * 3
        for j in range(offset, min(length, n), 3):
            streams[j] = dim
    return tuple((j, streams[j]) for j in range(n))


def oracle_pair_map(spec) -> tuple[tuple[int, int], ...]:
    """For each rotated pair j: (frequency index, position stream)."""
    sec = None if spec.mrope_section is None else tuple(spec.mrope_section)
    return _pair_map(spec.rotary_dim, spec.axial_axes, sec, spec.mrope_interleaved)


# --------------------------------------------------------------------------- schedules
def _geometric(b, d: int) -> list:
    """RoFormer (Su et al., arXiv:2104.09864, eq. 15): theta_i = b^(-2i/d), i = 0..d/2-1."""
    b = mpf(b)
    return [ctx.power(b, -mpf(2 * i) / d) for i in range(d // 2)]


def _pixel(max_freq: float, n: int) -> list:
    """rotary-embedding-torch freqs_for='pixel': torch.linspace(1., max_freq / 2, dim // 2) * pi."""
    lo, hi = mpf(1), mpf(max_freq) / 2
    if n == 1:
        return [ctx.pi * lo]  # torch.linspace(a, b, 1) == [a]
    return [ctx.pi * (lo + (hi - lo) * i / (n - 1)) for i in range(n)]


def _base_schedule(spec) -> list:
    """The un-scaled frequencies per frequency index (rotary-embedding-torch freqs_for)."""
    nf = oracle_n_freqs(spec)
    if spec.freqs_for == "lang":
        return _geometric(spec.rope_theta, 2 * nf)
    if spec.freqs_for == "pixel":
        return _pixel(spec.max_freq, nf)
    if spec.freqs_for == "constant":
        return [mpf(1)] * spec.num_freqs  # torch.ones(num_freqs)
    if spec.freqs_for == "custom":
        return [mpf(w) for w in spec.inv_freq]  # custom_freqs used as given (exact doubles)
    raise AssertionError(spec.freqs_for)


def _get_mscale(s, m=1):
    """YaRN (arXiv:2309.00071 eq. 22) / DeepSeek-V2 ``yarn_get_mscale``; HF ``get_mscale``:
    1 if scale <= 1 else 0.1 * mscale * ln(scale) + 1  (0.1 is the decimal literal)."""
    s = mpf(s)
    if s <= 1:
        return mpf(1)
    return mpf("0.1") * mpf(m) * ctx.log(s) + 1


def _ntk_base(b, s, d):
    """bloc97 NTK-aware base: b' = b * s^(d/(d-2))."""
    return mpf(b) * ctx.power(mpf(s), mpf(d) / (d - 2))


def _freqs_and_att(spec, seq_len, long):
    """Exact frequency per frequency index and the attention factor (mpf)."""
    t = spec.rope_type
    nf = oracle_n_freqs(spec)
    d = 2 * nf  # width the exponent 2i/d is taken over (per axis for axial RoPE)
    one = mpf(1)
    if t == "default":
        return _base_schedule(spec), one
    if t == "linear":
        # Position interpolation, Chen et al. arXiv:2306.15595: m -> m/s, i.e. theta_i / s
        # (HF _compute_linear_scaling_rope_parameters: inv_freq /= factor).
        s = mpf(spec.factor)
        return [w / s for w in _base_schedule(spec)], one
    if t == "ntk":
        # Static NTK-aware (bloc97, 2023): base' = base * alpha^(dim/(dim-2)).
        return _geometric(_ntk_base(spec.rope_theta, spec.factor, d), d), one
    if t == "dynamic":
        # HF _compute_dynamic_ntk_parameters:
        #   seq_len = seq_len if seq_len > max_pos else max_pos
        #   base = base * ((factor * seq_len / max_pos) - (factor - 1)) ** (dim / (dim - 2))
        # with max_pos = original_max_position_embeddings here.
        if seq_len is None:
            raise ValueError("dynamic needs seq_len")
        L0 = mpf(spec.original_max_position_embeddings)
        L = max(mpf(seq_len), L0)
        s = mpf(spec.factor)
        alpha = s * L / L0 - (s - 1)
        base = mpf(spec.rope_theta) * ctx.power(alpha, mpf(d) / (d - 2))
        return _geometric(base, d), one
    if t == "yarn":
        return _yarn(spec, d)
    if t == "longrope":
        return _longrope(spec, d, seq_len, long)
    if t == "llama3":
        return _llama3(spec, d), one
    raise AssertionError(t)


def _yarn(spec, d):
    """YaRN, Peng et al. arXiv:2309.00071, as HF ``_compute_yarn_parameters`` computes it.

    find_correction_dim(N) = dim * ln(L0 / (N * 2 pi)) / (2 ln base)
    low, high = corr(beta_fast), corr(beta_slow); floor/ceil if truncate;
    return max(low, 0), min(high, dim - 1)
    linear_ramp_factor: if min == max: max += 0.001; clamp((i - min)/(max - min), 0, 1)
    inv_freq_extrapolation_factor = 1 - ramp
    inv_freq = inv_freq_interpolation * (1 - extrap) + inv_freq_extrapolation * extrap
    attention_factor: given, else get_mscale(s, mscale)/get_mscale(s, mscale_all_dim) when both
    mscale and mscale_all_dim are truthy (DeepSeek), else get_mscale(s).
    """
    s = mpf(spec.factor)
    b = mpf(spec.rope_theta)
    L0 = mpf(spec.original_max_position_embeddings)

    def corr(n_rot):
        return d * ctx.log(L0 / (mpf(n_rot) * 2 * ctx.pi)) / (2 * ctx.log(b))

    low, high = corr(spec.beta_fast), corr(spec.beta_slow)
    if spec.truncate:
        low, high = ctx.floor(low), ctx.ceil(high)
    low, high = max(low, mpf(0)), min(high, mpf(d - 1))
    if low == high:
        high = high + mpf("0.001")
    base = _geometric(b, d)
    out = []
    for i, w in enumerate(base):
        ramp = (mpf(i) - low) / (high - low)
        ramp = min(max(ramp, mpf(0)), mpf(1))
        extrap = 1 - ramp
        out.append((w / s) * (1 - extrap) + w * extrap)
    if spec.attention_factor is not None:
        att = mpf(spec.attention_factor)
    elif spec.mscale and spec.mscale_all_dim:
        att = _get_mscale(s, spec.mscale) / _get_mscale(s, spec.mscale_all_dim)
    else:
        att = _get_mscale(s)
    return out, att


def _longrope(spec, d, seq_len, long):
    """LongRoPE, Ding et al. arXiv:2402.13753; HF ``_compute_longrope_parameters``.

    factor = config factor, else max_position_embeddings / original_max_position_embeddings;
    attention_factor = given, else 1 if factor <= 1 else sqrt(1 + ln(factor) / ln(L0));
    ext_factors = long_factor if seq_len and seq_len > L0 else short_factor;
    inv_freq = 1 / (ext_factors * base^(arange(0, dim, 2) / dim)).
    """
    L0 = spec.original_max_position_embeddings
    if long is None:
        long = seq_len is not None and seq_len > L0
    ext = spec.long_factor if long else spec.short_factor
    b = mpf(spec.rope_theta)
    out = [1 / (mpf(ext[i]) * ctx.power(b, mpf(2 * i) / d)) for i in range(d // 2)]
    if spec.factor is not None:
        s = mpf(spec.factor)
    else:
        s = mpf(spec.max_position_embeddings) / mpf(L0)
    if spec.attention_factor is not None:
        att = mpf(spec.attention_factor)
    elif s <= 1:
        att = mpf(1)
    else:
        att = ctx.sqrt(1 + ctx.log(s) / ctx.log(mpf(L0)))
    return out, att


def _llama3(spec, d):
    """Llama 3.1, meta-llama/llama-models reference_impl/model.py ``apply_scaling``:

    for freq in freqs:
        wavelen = 2 * math.pi / freq
        if wavelen < high_freq_wavelen: new_freqs.append(freq)
        elif wavelen > low_freq_wavelen: new_freqs.append(freq / scale_factor)
        else:
            smooth = (old_context_len / wavelen - low_freq_factor) / (high_freq_factor - low_freq_factor)
            new_freqs.append((1 - smooth) * freq / scale_factor + smooth * freq)
    with low_freq_wavelen = L0 / low_freq_factor, high_freq_wavelen = L0 / high_freq_factor.
    """
    s = mpf(spec.factor)
    L0 = mpf(spec.original_max_position_embeddings)
    lo, hi = mpf(spec.low_freq_factor), mpf(spec.high_freq_factor)
    low_wl, high_wl = L0 / lo, L0 / hi
    out = []
    for w in _geometric(spec.rope_theta, d):
        wl = 2 * ctx.pi / w
        if wl < high_wl:
            out.append(w)
        elif wl > low_wl:
            out.append(w / s)
        else:
            if hi == lo:  # only reachable with wl == L0/lo exactly: the w/s end of the blend
                out.append(w / s)
                continue
            smooth = (L0 / wl - lo) / (hi - lo)
            out.append((1 - smooth) * w / s + smooth * w)
    return out


@lru_cache(maxsize=4096)
def _cached(spec, seq_len, long):
    freqs, att = _freqs_and_att(spec, seq_len, long)
    per_pair = tuple(freqs[f] for f, _ in oracle_pair_map(spec))
    return per_pair, att


def oracle_inv_freq(spec, seq_len: int | None = None, long: bool | None = None):
    """(exact omega per rotated pair as a list of mpf, exact attention factor as mpf).

    Mirrors ``reference.inv_freq``: LongRoPE with ``seq_len=None`` behaves as
    ``seq_len = L0`` (short factors); ``long`` forces the short/long set.
    """
    if spec.rope_type == "longrope" and seq_len is None and long is None:
        seq_len = spec.original_max_position_embeddings
    if spec.rope_type == "longrope" and long is None and spec.longrope_switch == "position":
        long = bool(seq_len is not None and seq_len > spec.original_max_position_embeddings)
    if spec.rope_type not in ("dynamic", "longrope"):
        seq_len = None  # irrelevant: share the cache entry
    per_pair, att = _cached(spec, seq_len, long)
    return list(per_pair), att


# --------------------------------------------------------------------------- positions
def _coords(spec, position) -> list:
    ns = oracle_n_streams(spec)
    if ns == 1:
        if isinstance(position, (list, tuple)):
            if len(position) != 1:
                raise ValueError("one coordinate expected")
            position = position[0]
        return [position]
    coords = list(position)
    if len(coords) != ns:
        raise ValueError(f"{ns} coordinates expected, got {coords}")
    return coords


def oracle_default_seq_len(positions) -> int:
    """HF's rule max(position_ids) + 1 over every coordinate (floor for real positions)."""
    flat = []

    def walk(p):
        if isinstance(p, (list, tuple)):
            for q in p:
                walk(q)
        else:
            flat.append(p)

    walk(positions)
    return int(math.floor(max(flat))) + 1


def _angles(spec, position, seq_len):
    coords = _coords(spec, position)
    if seq_len is None:
        seq_len = oracle_default_seq_len(coords)
    pm = oracle_pair_map(spec)
    if spec.rope_type == "longrope" and spec.longrope_switch == "position":
        # MAX-style stitched table: per pair, long factors when its position >= L0.
        short, _ = oracle_inv_freq(spec, seq_len, long=False)
        long_, _ = oracle_inv_freq(spec, seq_len, long=True)
        L0 = spec.original_max_position_embeddings
        omega = [long_[j] if coords[st] >= L0 else short[j] for j, (_, st) in enumerate(pm)]
    else:
        omega, _ = oracle_inv_freq(spec, seq_len)
    return [mpf(coords[st]) * omega[j] for j, (_, st) in enumerate(pm)], seq_len


def oracle_cos_sin(spec, position, seq_len: int | None = None):
    """Exact (cos list, sin list) per rotated pair for ONE token.

    ``position``: a number (1 stream) or a sequence of n_streams coordinates.
    Not multiplied by the attention factor or the xPos scale.
    """
    angles, _ = _angles(spec, position, seq_len)
    return [ctx.cos(a) for a in angles], [ctx.sin(a) for a in angles]


def oracle_xpos_scale(spec, position, seq_len: int | None = None, role: str = "query"):
    """xPos magnitude per pair (Sun et al., arXiv:2212.10554; rotary-embedding-torch get_scale):

    scale = (arange(0, dim, 2) + 0.4 * dim) / (1.4 * dim)    -> zeta_j = (10 j + 2 r) / (7 r)
    power = (t - (seq_len // 2)) / scale_base; query: zeta^power, key: zeta^-power.
    """
    coords = _coords(spec, position)
    if seq_len is None:
        seq_len = oracle_default_seq_len(coords)
    r = spec.rotary_dim
    c = mpf(spec.xpos_center) if spec.xpos_center is not None else mpf(seq_len // 2)
    power = (mpf(coords[0]) - c) / mpf(spec.xpos_scale_base)
    if role == "key":
        power = -power
    elif role != "query":
        raise ValueError(role)
    return [ctx.power(mpf(10 * j + 2 * r) / (7 * r), power) for j in range(r // 2)]


def oracle_magnitude(spec, position, seq_len: int | None = None, role: str = "query"):
    """Per-pair magnitude of the rotated output: attention factor times the xPos scale."""
    coords = _coords(spec, position)
    if seq_len is None:
        seq_len = oracle_default_seq_len(coords)
    if spec.rope_type == "longrope" and spec.longrope_switch == "position":
        _, att = oracle_inv_freq(spec, seq_len, long=False)
    else:
        _, att = oracle_inv_freq(spec, seq_len)
    if spec.xpos:
        return [att * z for z in oracle_xpos_scale(spec, coords, seq_len, role)]
    return [att] * (spec.rotary_dim // 2)


def _pair_slots(spec) -> list[tuple[int, int]]:
    r, h = spec.rotary_dim, spec.rotary_dim // 2
    if spec.layout == "half":
        return [(i, i + h) for i in range(h)]
    if spec.layout == "interleaved":
        return [(2 * i, 2 * i + 1) for i in range(h)]
    raise AssertionError(spec.layout)


def oracle_apply(spec, x_row: Sequence[float], position, seq_len: int | None = None,
                 role: str = "query") -> list:
    """Exact RoPE of one head vector ``x_row`` (length head_dim, float64 values taken exactly).

    Returns head_dim mpf values: rotated pairs times (attention factor * xPos
    scale), tail ``x_row[rotary_dim:]`` unchanged.
    """
    x = [mpf(float(v)) for v in x_row]
    if len(x) != spec.head_dim:
        raise ValueError("x_row must have head_dim entries")
    coords = _coords(spec, position)
    if seq_len is None:
        seq_len = oracle_default_seq_len(coords)
    angles, _ = _angles(spec, coords, seq_len)
    mag = oracle_magnitude(spec, coords, seq_len, role)
    out = list(x)
    for j, (a, b) in enumerate(_pair_slots(spec)):
        c, s = ctx.cos(angles[j]), ctx.sin(angles[j])
        u, v = x[a], x[b]
        out[a] = mag[j] * (u * c - v * s)
        out[b] = mag[j] * (v * c + u * s)
    return out


def to_float(v) -> float:
    """Correctly rounded float64 of an mpf (mpmath rounds to nearest)."""
    return float(v)
