"""The variant catalogue: one function per frequency formula, with its source.

Each function takes a validated :class:`RopeSpec` (and the sequence length where
the formula depends on it) and returns ``(omega, attention_factor)``: the exact
inverse frequencies as :class:`decimal.Decimal` (one per frequency index,
``spec.n_freqs`` of them) and the cos/sin magnitude factor.  All arithmetic is
60-digit decimal, so threshold decisions (YaRN's floor/ceil, Llama 3's bands,
LongRoPE's switch) are taken on exact values.  Notation follows
docs/variants.md: r = rotary_dim, b = rope_theta, s = factor,
L0 = original_max_position_embeddings.
"""

from __future__ import annotations

import dataclasses
import math
from decimal import Decimal
from typing import TYPE_CHECKING, Callable

import numpy as np

from ._hp import D, PI_DEC, hp_context, power
from .validate import check_int, check_range

if TYPE_CHECKING:
    from .spec import RopeSpec

ONE = Decimal(1)


def geometric(spec: RopeSpec, base: Decimal | None = None, dim: int | None = None) -> list[Decimal]:
    """omega_i = b^(-2i/r), i = 0..r/2-1.

    Su et al., RoFormer, arXiv:2104.09864 eq. (15); HF ``_compute_default_rope_parameters``.
    ``dim`` is the width the exponent is taken over (per axis for axial RoPE).
    """
    b = D(spec.rope_theta) if base is None else base
    r = dim if dim is not None else 2 * spec.n_freqs
    return [ONE / power(b, D(2 * i) / D(r)) for i in range(r // 2)]


def pixel(spec: RopeSpec) -> list[Decimal]:
    """omega = pi * linspace(1, max_freq/2, n).

    rotary-embedding-torch ``RotaryEmbedding(freqs_for='pixel')`` (v0.9.1,
    rotary_embedding_torch.py).
    """
    n = spec.n_freqs
    lo, hi = ONE, D(spec.max_freq) / 2
    if n == 1:
        return [PI_DEC * lo]
    return [PI_DEC * (lo + (hi - lo) * D(i) / D(n - 1)) for i in range(n)]


def constant(spec: RopeSpec) -> list[Decimal]:
    """omega = 1 for every pair (rotary-embedding-torch ``freqs_for='constant'``)."""
    return [ONE] * spec.n_freqs


def custom(spec: RopeSpec) -> list[Decimal]:
    """Explicit (for example learned) frequencies, taken as exact doubles."""
    return [D(w) for w in spec.inv_freq]


def linear(spec: RopeSpec) -> list[Decimal]:
    """Position interpolation: omega_i / s (== positions / s in exact arithmetic).

    Chen et al., arXiv:2306.15595; HF ``_compute_linear_scaling_rope_parameters``.
    """
    return [w / D(spec.factor) for w in base_schedule(spec)]


def ntk(spec: RopeSpec) -> list[Decimal]:
    """Static NTK-aware base: b' = b * s^(r/(r-2)).

    bloc97 (2023); rotary-embedding-torch ``theta_rescale_factor``, zeta
    ``base_rescale_factor``.
    """
    r = D(2 * spec.n_freqs)  # the schedule's own width (per axis for axial RoPE)
    return geometric(spec, base=D(spec.rope_theta) * power(D(spec.factor), r / (r - 2)))


def dynamic(spec: RopeSpec, seq_len: int) -> list[Decimal]:
    """Dynamic NTK: b' = b * (s*L/L0 - (s-1))^(r/(r-2)) with L = max(seq_len, L0).

    emozilla (2023); HF ``_compute_dynamic_ntk_parameters``.  ``seq_len`` is the
    length the model is run at: by HF's rule ``max(position_ids) + 1``; for
    L <= L0 this is plain RoPE.
    """
    s, r, L0 = D(spec.factor), D(2 * spec.n_freqs), D(spec.original_max_position_embeddings)
    L = max(D(seq_len), L0)
    return geometric(spec, base=D(spec.rope_theta) * power(s * L / L0 - (s - 1), r / (r - 2)))


def _yarn_mscale(s: Decimal, m: Decimal = ONE) -> Decimal:
    """get_mscale(s, m) = 0.1 * m * ln(s) + 1 for s > 1, else 1 (YaRN eq. 22, DeepSeek-V2)."""
    return ONE if s <= 1 else Decimal("0.1") * m * s.ln() + 1


def yarn(spec: RopeSpec) -> tuple[list[Decimal], Decimal]:
    """YaRN as HF transformers v5 computes it (``_compute_yarn_parameters``).

    Peng et al., arXiv:2309.00071.  d_c(N) = r ln(L0/(2 pi N)) / (2 ln b);
    low = d_c(beta_fast), high = d_c(beta_slow), floored/ceiled when ``truncate``,
    clamped to [0, r-1]; ramp_i = clamp((i-low)/(high-low), 0, 1) (+0.001 to
    high when equal); omega_i = omega_i/s * ramp_i + omega_i * (1-ramp_i).
    Attention factor: ``attention_factor`` if given; else with ``mscale`` and
    ``mscale_all_dim`` both set and nonzero the DeepSeek ratio
    get_mscale(s, mscale)/get_mscale(s, mscale_all_dim); else get_mscale(s).
    """
    s, r, b = D(spec.factor), 2 * spec.n_freqs, D(spec.rope_theta)
    L0 = D(spec.original_max_position_embeddings)

    def corr_dim(n_rot: float) -> Decimal:
        return D(r) * (L0 / (D(n_rot) * 2 * PI_DEC)).ln() / (2 * b.ln())

    low, high = corr_dim(spec.beta_fast), corr_dim(spec.beta_slow)
    if spec.truncate:
        low, high = D(math.floor(low)), D(math.ceil(high))
    low, high = max(low, Decimal(0)), min(high, D(r - 1))
    if low == high:
        high += Decimal("0.001")
    base = geometric(spec)
    omega = []
    for i, w in enumerate(base):
        ramp = min(max((D(i) - low) / (high - low), Decimal(0)), ONE)
        omega.append(w / s * ramp + w * (1 - ramp))
    if spec.attention_factor is not None:
        att = D(spec.attention_factor)
    elif spec.mscale and spec.mscale_all_dim:
        att = _yarn_mscale(s, D(spec.mscale)) / _yarn_mscale(s, D(spec.mscale_all_dim))
    else:
        att = _yarn_mscale(s)
    return omega, att


def longrope_factor(spec: RopeSpec) -> Decimal:
    """s = factor, or max_position_embeddings / L0 when factor is not given (HF v5)."""
    if spec.factor is not None:
        return D(spec.factor)
    return D(spec.max_position_embeddings) / D(spec.original_max_position_embeddings)


def longrope(spec: RopeSpec, long: bool) -> tuple[list[Decimal], Decimal]:
    """LongRoPE / Phi-3 "su": omega_i = 1 / (lambda_i * b^(2i/r)).

    Ding et al., arXiv:2402.13753; HF ``_compute_longrope_parameters``.  lambda =
    ``long_factor`` when ``long`` else ``short_factor``; which one applies is
    decided in :func:`inv_freq_for` by ``longrope_switch``.  Attention factor:
    ``attention_factor`` if given, else sqrt(1 + ln s / ln L0) for s > 1, else 1.
    """
    ext = spec.long_factor if long else spec.short_factor
    omega = [w / D(f) for w, f in zip(geometric(spec), ext)]
    s, L0 = longrope_factor(spec), D(spec.original_max_position_embeddings)
    if spec.attention_factor is not None:
        att = D(spec.attention_factor)
    elif s <= 1:
        att = ONE
    else:
        att = (1 + s.ln() / L0.ln()).sqrt()
    return omega, att


def llama3(spec: RopeSpec) -> list[Decimal]:
    """Llama 3.1 band scaling.

    meta-llama/llama-models ``reference_impl/model.py::apply_scaling``; HF
    ``_compute_llama3_parameters``.  lambda_i = 2 pi / omega_i; lambda < L0/high:
    keep; lambda > L0/low: omega/s; otherwise (both edges included)
    (1 - sigma) omega/s + sigma omega with sigma = (L0/lambda - low)/(high - low).
    """
    s, L0 = D(spec.factor), D(spec.original_max_position_embeddings)
    lo, hi = D(spec.low_freq_factor), D(spec.high_freq_factor)
    out = []
    for w in geometric(spec):
        lam = 2 * PI_DEC / w
        if lam < L0 / hi:
            out.append(w)
        elif lam > L0 / lo:
            out.append(w / s)
        else:
            sigma = (L0 / lam - lo) / (hi - lo)  # hi == lo only reaches here at lam == L0/lo
            out.append((1 - sigma) * w / s + sigma * w)
    return out


def base_schedule(spec: RopeSpec) -> list[Decimal]:
    return {"lang": geometric, "pixel": pixel, "constant": constant, "custom": custom}[spec.freqs_for](spec)


def ramp_bounds(spec: RopeSpec) -> tuple[float, float]:
    """YaRN's (low, high) correction-dimension bounds in float64, as a conventional float implementation
    computes them (HF ``find_correction_range``): the tolerance model's view of the ramp."""
    r, b, L0 = 2 * spec.n_freqs, spec.rope_theta, spec.original_max_position_embeddings

    def corr(rot: float) -> float:
        return r * math.log(L0 / (rot * 2 * math.pi)) / (2 * math.log(b))

    low, high = corr(spec.beta_fast), corr(spec.beta_slow)
    if spec.truncate:
        low, high = math.floor(low), math.ceil(high)
    low, high = max(low, 0.0), min(high, r - 1.0)
    if high == low:
        high += 0.001
    return low, high


# ----------------------------------------------------------------------------- conditioning
# How a scaling formula amplifies the rounding errors of a conventional float implementation
# (docs/tolerance.md).  Each returns per pair (kappa, extra): the angle error bound is
# (kappa (C_PHI + |ln omega0|) + extra) u_a |phi|, with kappa = |d ln omega / d ln omega0|.

def _unit(spec: RopeSpec, omega0: np.ndarray, omega: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    n = spec.n_pairs
    return np.ones(n), np.zeros(n)


def llama3_conditioning(spec: RopeSpec, omega0: np.ndarray, omega: np.ndarray):
    """In the smoothing band sigma is computed from omega0 itself: kappa = 1 + (1 - 1/s) a / g with
    g = omega/omega0 and a = (sigma (high - low) + low) / (high - low); 1 outside the band."""
    kappa, extra = _unit(spec, omega0, omega)
    s, lo, hi = spec.factor, spec.low_freq_factor, spec.high_freq_factor
    g = omega / omega0
    if s != 1.0 and hi > lo:
        sigma = (g - 1.0 / s) / (1.0 - 1.0 / s)
        medium = (sigma > 0.0) & (sigma < 1.0)
        a = (sigma * (hi - lo) + lo) / (hi - lo)
        kappa = np.where(medium, 1.0 + (1.0 - 1.0 / s) * a / g, 1.0)
    return kappa, extra


def yarn_conditioning(spec: RopeSpec, omega0: np.ndarray, omega: np.ndarray):
    """A_yarn per pair: the float rounding of the ramp (i - low)/(high - low) (3 roundings, plus the
    bounds' own when ``truncate=False``) amplified by the blend, (1 - 1/s)/g (0 for factor <= 1)."""
    kappa, extra = _unit(spec, omega0, omega)
    if spec.factor <= 1.0:
        return kappa, extra
    s = spec.factor
    low, high = ramp_bounds(spec)
    i = np.arange(spec.n_pairs) % spec.n_freqs
    ramp = np.clip((i - low) / (high - low), 0.0, 1.0)
    g = ramp / s + 1.0 - ramp
    inside = (ramp > 0.0) & (ramp < 1.0)
    err = 3.0 * ramp
    if not spec.truncate:
        err = err + (abs(low) + ramp * (abs(high) + abs(low))) / abs(high - low)
    return kappa, np.where(inside, (1.0 - 1.0 / s) * err / g, 0.0)


def scaled_base_conditioning(spec: RopeSpec, omega0: np.ndarray, omega: np.ndarray):
    """NTK / dynamic NTK compute omega = b'^(-2i/r) from a scaled base b': the exponent's rounding is
    amplified by |ln omega|, not |ln omega0| (extra = |ln omega| - |ln omega0| >= 0)."""
    kappa, _ = _unit(spec, omega0, omega)
    return kappa, np.maximum(np.abs(np.log(omega)) - np.abs(np.log(omega0)), 0.0)


# ----------------------------------------------------------------------------- type checks
# Type-specific validation beyond "only this type's keys are set" and "required keys present".

def _check_width(spec: RopeSpec) -> None:
    if 2 * spec.n_freqs <= 2:  # r = 2 * n_freqs: the schedule's width (per axis for axial)
        raise ValueError(f"rope_type={spec.rope_type!r} needs rotary_dim > 2 per axis (exponent r/(r-2)), got "
                         f"rotary_dim={spec.rotary_dim} with axial_axes={spec.axial_axes}")


def _check_yarn(spec: RopeSpec) -> None:
    check_range("beta_fast", spec.beta_fast, 0.0, low_open=True)
    check_range("beta_slow", spec.beta_slow, 0.0, low_open=True)
    if spec.beta_fast < spec.beta_slow:
        raise ValueError(f"beta_fast={spec.beta_fast} must be >= beta_slow={spec.beta_slow}")
    for k in ("mscale", "mscale_all_dim"):
        if getattr(spec, k) is not None:
            check_range(k, getattr(spec, k), 0.0)


def _check_longrope(spec: RopeSpec) -> None:
    n = spec.n_freqs
    for k in ("short_factor", "long_factor"):
        v = getattr(spec, k)
        if v is None or len(v) != n:
            raise ValueError(f"{k} must be a list of rotary_dim/2 = {n} factors for rope_type="
                             f"'longrope', got length {None if v is None else len(v)}")
        for i, f in enumerate(v):
            check_range(f"{k}[{i}]", f, 0.0, low_open=True)
    if spec.original_max_position_embeddings < 2:
        raise ValueError(f"original_max_position_embeddings={spec.original_max_position_embeddings} is "
                         f"out of range for rope_type='longrope': must be >= 2 (its attention factor "
                         f"divides by ln L0)")
    if spec.factor is None and spec.max_position_embeddings is None:
        raise ValueError("rope_type='longrope' needs factor or max_position_embeddings "
                         "(factor defaults to max_position_embeddings / original_max_position_embeddings)")


def _check_llama3(spec: RopeSpec) -> None:
    check_range("low_freq_factor", spec.low_freq_factor, 0.0, low_open=True)
    check_range("high_freq_factor", spec.high_freq_factor, 0.0, low_open=True)
    if spec.high_freq_factor < spec.low_freq_factor:
        raise ValueError(f"high_freq_factor={spec.high_freq_factor} must be >= "
                         f"low_freq_factor={spec.low_freq_factor}")


# ----------------------------------------------------------------------------- the records
@dataclasses.dataclass(frozen=True)
class RopeType:
    """One record per ``rope_type``: everything the spec, the reference and the tolerance model know.

    Adding a rope type: its formula above, one record below, a row in docs/variants.md.
    """

    name: str
    frequencies: Callable                   # (spec, length key) -> (omega per frequency index, attention factor)
    keys: frozenset = frozenset()           # scaling keys it reads (others must stay at their defaults)
    required: tuple[str, ...] = ()          # keys that must be set (an omitted one is an error naming it)
    length_key: Callable | None = None      # (spec, seq_len, long) -> what of the length omega depends on
    conditioning: Callable = _unit          # (spec, omega0, omega) -> (kappa, extra) per pair
    check: Callable | None = None           # type-specific validation
    lang_only: bool = True                  # defined on the geometric schedule (freqs_for='lang')
    source: str = ""

    @property
    def length_dependent(self) -> bool:
        """omega depends on the sequence length (max position + 1): dynamic NTK, LongRoPE."""
        return self.length_key is not None

    @property
    def needs_original_length(self) -> bool:
        return "original_max_position_embeddings" in self.required

    def validate(self, spec: RopeSpec) -> None:
        for key in self.required:
            if getattr(spec, key) is None:
                raise ValueError(f"{key} is required for rope_type={self.name!r}")
        if spec.factor is not None:
            check_range("factor", spec.factor, 0.0, low_open=True)
        if spec.original_max_position_embeddings is not None:
            check_int("original_max_position_embeddings", spec.original_max_position_embeddings, 1)
        if self.check is not None:
            self.check(spec)

    def key_for(self, spec: RopeSpec, seq_len: int | None, long: bool | None = None):
        """The normalized length key (None for a length-independent type): equal keys, equal omega."""
        return None if self.length_key is None else self.length_key(spec, seq_len, long)


def _fixed(fn):
    return lambda spec, key: (fn(spec), ONE)


def _dynamic_key(spec: RopeSpec, seq_len: int | None, long: bool | None) -> int:
    if seq_len is None:
        raise ValueError("rope_type='dynamic' needs seq_len (or positions to derive it)")
    return max(int(seq_len), spec.original_max_position_embeddings)  # the same omega at every L <= L0


def _longrope_key(spec: RopeSpec, seq_len: int | None, long: bool | None) -> bool:
    if long is None:
        if seq_len is None:
            raise ValueError("rope_type='longrope' needs seq_len (or positions to derive it)")
        long = seq_len > spec.original_max_position_embeddings
    return bool(long)


_L0 = "original_max_position_embeddings"
ROPE_TYPES: dict[str, RopeType] = {t.name: t for t in [
    RopeType("default", _fixed(base_schedule), lang_only=False, source="RoFormer, arXiv:2104.09864"),
    RopeType("linear", _fixed(linear), frozenset({"factor"}), ("factor",), lang_only=False,
             source="arXiv:2306.15595"),
    RopeType("ntk", _fixed(ntk), frozenset({"factor"}), ("factor",), conditioning=scaled_base_conditioning,
             check=_check_width, source="bloc97 (2023)"),
    RopeType("dynamic", lambda spec, length: (dynamic(spec, length), ONE), frozenset({"factor", _L0}),
             ("factor", _L0), length_key=_dynamic_key, conditioning=scaled_base_conditioning, check=_check_width,
             source="emozilla (2023)"),
    RopeType("yarn", lambda spec, key: yarn(spec),
             frozenset({"factor", _L0, "attention_factor", "beta_fast", "beta_slow", "mscale", "mscale_all_dim",
                        "truncate", "max_position_embeddings"}), ("factor", _L0),
             conditioning=yarn_conditioning, check=_check_yarn, source="arXiv:2309.00071"),
    RopeType("longrope", lambda spec, long: longrope(spec, long),
             frozenset({"factor", _L0, "attention_factor", "short_factor", "long_factor", "max_position_embeddings",
                        "longrope_switch"}), (_L0, "short_factor", "long_factor"), length_key=_longrope_key,
             check=_check_longrope, source="arXiv:2402.13753"),
    RopeType("llama3", _fixed(llama3), frozenset({"factor", _L0, "low_freq_factor", "high_freq_factor"}),
             ("factor", _L0, "low_freq_factor", "high_freq_factor"), conditioning=llama3_conditioning,
             check=_check_llama3, source="meta-llama/llama-models apply_scaling"),
]}
SCALING_KEYS = frozenset().union(*(t.keys for t in ROPE_TYPES.values()))


def inv_freq_for(spec: RopeSpec, seq_len: int | None, long: bool | None = None) -> tuple[list[Decimal], Decimal]:
    """Exact omega (per frequency index) and attention factor of ``spec`` (its rope-type record's formula).

    ``long`` overrides LongRoPE's short/long choice (used for the per-position switch).
    """
    rt = ROPE_TYPES[spec.rope_type]
    with hp_context():
        return rt.frequencies(spec, rt.key_for(spec, seq_len, long))
