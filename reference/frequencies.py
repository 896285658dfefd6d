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

import math
from decimal import Decimal

from ._hp import D, PI_DEC, hp_context, power
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


def inv_freq_for(spec: RopeSpec, seq_len: int | None, long: bool | None = None) -> tuple[list[Decimal], Decimal]:
    """Dispatch on ``rope_type``: exact omega (per frequency index) and attention factor.

    ``long`` overrides LongRoPE's short/long choice (used for the per-position switch).
    """
    with hp_context():
        t = spec.rope_type
        if t == "default":
            return base_schedule(spec), ONE
        if t == "linear":
            return linear(spec), ONE
        if t == "ntk":
            return ntk(spec), ONE
        if t == "dynamic":
            if seq_len is None:
                raise ValueError("rope_type='dynamic' needs seq_len (or positions to derive it)")
            return dynamic(spec, seq_len), ONE
        if t == "yarn":
            return yarn(spec)
        if t == "longrope":
            if long is None:
                if seq_len is None:
                    raise ValueError("rope_type='longrope' needs seq_len (or positions to derive it)")
                long = seq_len > spec.original_max_position_embeddings
            return longrope(spec, long)
        if t == "llama3":
            return llama3(spec), ONE
        raise AssertionError(t)
