"""Why a case diverges: a catalogue of convention hypotheses, each a small transformation of the reference.

A :class:`Hypothesis` is a record, like a variant: a name, what it means, where the
convention is seen, and ``transform(case) -> case'`` that changes the spec, the
positions, the role, the length rule, the precision, or the output (pairing,
magnitude, tail) the way an implementation following that convention would.  A
hypothesis *explains* a divergence when the adapter's output conforms to the
transformed reference under the same tolerance model, on the failing case and on
confirmation cases (fresh adapter calls at other positions and inputs).  Pairs of
hypotheses are tried (pruned to the singles that help most) when no single one
explains it.  Otherwise the report gives the error's structure: which pairs, how
it grows with position, whether the relative error is constant.

Diagnosis runs only on diverging (and known) cells, within a bounded budget
(docs/diagnosis.md).  Adding a hypothesis: one record in ``HYPOTHESES``.
"""

from __future__ import annotations

import dataclasses
import math
import time
import types
from typing import Any, Callable

import numpy as np

from ropeconf.reference import RopeSpec, apply, inv_freq
from ropeconf.reference.dtypes import round_to
from ropeconf.reference.frequencies import SCALING_KEYS

from .tolerance import Precision

BUDGET_SECONDS = 3.0  # per diagnosed cell (docs/diagnosis.md)


# ----------------------------------------------------------------------------- the case under test
@dataclasses.dataclass
class Case:
    """One judged case as a hypothesis sees it; ``post`` are output transformations applied in order."""

    spec: RopeSpec
    x: np.ndarray                      # the dtype-rounded input, float64
    positions: np.ndarray
    role: str = "query"
    seq_len: int | None = None         # None: max(positions) + 1
    precision: Precision | None = None
    post: tuple[Callable[[np.ndarray, "Case"], np.ndarray], ...] = ()
    expected_override: Callable[["Case"], np.ndarray] | None = None
    # a feature permutation applied to output and expected before judging, so that the tolerance
    # model's pairs are the rotated pairs again (for hypotheses that move features around)
    frame: np.ndarray | None = None

    def expected(self) -> np.ndarray:
        if self.expected_override is not None:
            y = self.expected_override(self)
        else:
            y = np.asarray(apply(self.spec, self.x, self.positions, self.seq_len, role=self.role))
        for f in self.post:
            y = f(y, self)
        return y


def _replace(case: Case, **kw) -> Case:
    return dataclasses.replace(case, **kw)


def _with_post(case: Case, f) -> Case:
    return _replace(case, post=case.post + (f,))


def _seq_len(case: Case) -> int:
    return case.seq_len if case.seq_len is not None else int(np.max(case.positions)) + 1


def _magnitude(factor: float):
    def post(y: np.ndarray, case: Case) -> np.ndarray:
        y = y.copy()
        y[..., : case.spec.rotary_dim] *= factor
        return y
    return post


def _attention(case: Case) -> float:
    return inv_freq(case.spec, _seq_len(case))[1]


def _custom(case: Case, omega: np.ndarray, magnitude: float) -> Case:
    """The case's geometry with explicit per-frequency omega and a magnitude (no scaling keys)."""
    d = {k: v for k, v in case.spec.to_dict().items() if k not in SCALING_KEYS}
    d.update(rope_type="default", freqs_for="custom", inv_freq=[float(w) for w in omega])
    spec = RopeSpec.from_dict(d)
    out = _replace(case, spec=spec)
    return _with_post(out, _magnitude(magnitude)) if magnitude != 1.0 else out


def _omega(spec: RopeSpec, seq_len: int | None = None) -> np.ndarray:
    """Per-frequency omega (n_freqs of them) in float64."""
    w, _ = inv_freq(spec, seq_len)
    return w[: spec.n_freqs]


def _omega0(spec: RopeSpec) -> np.ndarray:
    d = {k: v for k, v in spec.to_dict().items() if k not in SCALING_KEYS}
    d["rope_type"] = "default"
    return _omega(RopeSpec.from_dict(d))


def _proxy(spec: RopeSpec, **overrides):
    """A spec-like object with some values changed past validation (e.g. betas swapped)."""
    fields = {f.name: getattr(spec, f.name) for f in dataclasses.fields(spec)}
    fields.update(overrides)
    fields["n_freqs"] = spec.n_freqs
    return types.SimpleNamespace(**fields)


# ----------------------------------------------------------------------------- the transformations
def _swap_layout(c: Case) -> Case | None:
    return _replace(c, spec=c.spec.replace(layout="interleaved" if c.spec.layout == "half" else "half"))


def _perm(spec: RopeSpec) -> np.ndarray:
    r = spec.rotary_dim
    return np.concatenate([np.arange(0, r, 2), np.arange(1, r, 2), np.arange(r, spec.head_dim)])


def _deinterleaved_output(c: Case) -> Case | None:
    """The rotation is right but the output is left in the other pair order."""
    perm = _perm(c.spec) if c.spec.layout == "interleaved" else np.argsort(_perm(c.spec))
    out = _with_post(c, lambda y, case: y[..., perm])
    return _replace(out, frame=np.argsort(perm) if c.frame is None else c.frame[np.argsort(perm)])


def _shift(k: int):
    def t(c: Case) -> Case | None:
        p = np.asarray(c.positions) + k
        if p.min() < 0 and c.spec.rope_type in ("dynamic", "longrope"):
            return None
        return _replace(c, positions=p, seq_len=None)
    return t


def _sin_flipped(c: Case) -> Case | None:
    """Rotation the other way round: the angle -phi (cos even, sin odd)."""
    if c.spec.xpos:
        return None
    return _replace(c, positions=-np.asarray(c.positions), seq_len=_seq_len(c))


def _theta_default(c: Case) -> Case | None:
    if c.spec.freqs_for != "lang" or c.spec.rope_theta == 10000.0:
        return None
    return _replace(c, spec=c.spec.replace(rope_theta=10000.0))


def _exponent_over_head_dim(c: Case) -> Case | None:
    s = c.spec
    if s.rotary_dim == s.head_dim or s.freqs_for != "lang" or s.rope_type != "default" or s.n_streams > 1:
        return None
    omega = s.rope_theta ** (-2.0 * np.arange(s.n_freqs) / s.head_dim)
    return _custom(c, omega, 1.0)


def _partial_on_last_dims(c: Case) -> Case | None:
    s = c.spec
    if s.rotary_dim == s.head_dim:
        return None
    tail = s.head_dim - s.rotary_dim
    x = np.concatenate([c.x[..., tail:], c.x[..., :tail]], axis=-1)   # the last r features first

    def back(y: np.ndarray, case: Case) -> np.ndarray:
        return np.concatenate([y[..., s.rotary_dim:], y[..., :s.rotary_dim]], axis=-1)
    frame = np.concatenate([np.arange(tail, s.head_dim), np.arange(tail)])  # judged with the rotated part first
    return _with_post(_replace(c, x=x, frame=frame), back)


def _tail_zeroed(c: Case) -> Case | None:
    if c.spec.rotary_dim == c.spec.head_dim:
        return None

    def zero(y: np.ndarray, case: Case) -> np.ndarray:
        y = y.copy()
        y[..., case.spec.rotary_dim:] = 0.0
        return y
    return _with_post(c, zero)


def _positions_in(dtype: str):
    def t(c: Case) -> Case | None:
        p = np.asarray(c.positions)
        q = round_to(p.astype(np.float64), dtype).astype(np.float64)
        if np.array_equal(q, p) or not np.all(np.isfinite(q)):
            return None
        if c.spec.rope_type in ("dynamic", "longrope"):
            q = np.round(q)
        return _replace(c, positions=q, seq_len=_seq_len(c))
    return t


def _precision(**kw):
    def t(c: Case) -> Case | None:
        p = c.precision
        if p is None:
            return None
        new = dataclasses.replace(p, **kw)
        return None if new == p else _replace(c, precision=new)
    return t


def _attention_missing(c: Case) -> Case | None:
    a = _attention(c)
    return None if a == 1.0 else _with_post(c, _magnitude(1.0 / a))


def _attention_squared(c: Case) -> Case | None:
    a = _attention(c)
    return None if a == 1.0 else _with_post(c, _magnitude(a))


def _attention_on_sin_only(c: Case) -> Case | None:
    a = _attention(c)
    if a == 1.0 or c.spec.xpos:
        return None

    def expected(case: Case) -> np.ndarray:
        # (cos part) + a (sin part): cos is even and sin odd in the angle, so with the factor a on both,
        # y(phi) + y(-phi) = 2 a (cos part) and y(phi) - y(-phi) = 2 a (sin part)
        y1 = np.asarray(apply(case.spec, case.x, case.positions, _seq_len(case), role=case.role))
        y2 = np.asarray(apply(case.spec, case.x, -np.asarray(case.positions), _seq_len(case), role=case.role))
        r = case.spec.rotary_dim
        out = y1.copy()
        cos_part, sin_part = (y1[..., :r] + y2[..., :r]) / (2 * a), (y1[..., :r] - y2[..., :r]) / (2 * a)
        out[..., :r] = cos_part + a * sin_part
        return out
    return _replace(c, expected_override=expected)


def _linear_sqrt(c: Case) -> Case | None:
    if c.spec.rope_type != "linear":
        return None
    return _replace(c, spec=c.spec.replace(factor=math.sqrt(c.spec.factor)))


def _yarn_blend(c: Case, f: Callable[[np.ndarray, float], np.ndarray]) -> Case | None:
    s = c.spec
    if s.rope_type != "yarn" or s.factor <= 1.0:
        return None
    w0, w = _omega0(s), _omega(s)
    ramp = (1.0 - w / w0) / (1.0 - 1.0 / s.factor)
    return _custom(c, f(w0, ramp), _attention(c))


def _yarn_ramp_inverted(c: Case) -> Case | None:
    return _yarn_blend(c, lambda w0, ramp: w0 * ((1.0 - ramp) / c.spec.factor + ramp))


def _yarn_betas_swapped(c: Case) -> Case | None:
    from ropeconf.reference.frequencies import inv_freq_for

    s = c.spec
    if s.rope_type != "yarn" or s.beta_fast == s.beta_slow:
        return None
    omega, att = inv_freq_for(_proxy(s, beta_fast=s.beta_slow, beta_slow=s.beta_fast), None)
    return _custom(c, np.array([float(w) for w in omega]), float(att))


def _yarn_truncate_ignored(c: Case) -> Case | None:
    if c.spec.rope_type != "yarn":
        return None
    return _replace(c, spec=c.spec.replace(truncate=not c.spec.truncate))


def _yarn_mscale_007(c: Case) -> Case | None:
    s = c.spec
    if s.rope_type != "yarn" or s.factor <= 1.0 or s.attention_factor is not None or (s.mscale and s.mscale_all_dim):
        return None
    a = _attention(c)
    return _with_post(c, _magnitude((0.07 * math.log(s.factor) + 1.0) / a))


def _dynamic_never_rescaled(c: Case) -> Case | None:
    if c.spec.rope_type != "dynamic" or _seq_len(c) <= c.spec.original_max_position_embeddings:
        return None
    return _replace(c, spec=RopeSpec.from_dict({k: v for k, v in c.spec.to_dict().items()
                                                if k not in SCALING_KEYS} | {"rope_type": "default"}))


def _dynamic_length(k: int):
    def t(c: Case) -> Case | None:
        if c.spec.rope_type != "dynamic" or _seq_len(c) + k <= c.spec.original_max_position_embeddings:
            return None
        return _replace(c, seq_len=_seq_len(c) + k)
    return t


def _dynamic_as(kind: str):
    def t(c: Case) -> Case | None:
        s = c.spec
        if s.rope_type != "dynamic":
            return None
        base = {k: v for k, v in s.to_dict().items() if k not in SCALING_KEYS}
        if kind == "ntk":      # the factor used as a static NTK alpha
            return _replace(c, spec=RopeSpec.from_dict(base | {"rope_type": "ntk", "factor": s.factor}))
        r = 2 * s.n_freqs      # a uniform division by s^(r/(r-2)) (KerasHub's "dynamic")
        return _replace(c, spec=RopeSpec.from_dict(base | {"rope_type": "linear", "factor": s.factor ** (r / (r - 2))}))
    return t


def _longrope_at_equal(c: Case) -> Case | None:
    s = c.spec
    if s.rope_type != "longrope" or s.longrope_switch != "sequence" or _seq_len(c) != s.original_max_position_embeddings:
        return None
    return _replace(c, seq_len=_seq_len(c) + 1)


def _longrope_switch_swapped(c: Case) -> Case | None:
    s = c.spec
    if s.rope_type != "longrope":
        return None
    other = "position" if s.longrope_switch == "sequence" else "sequence"
    return _replace(c, spec=s.replace(longrope_switch=other), seq_len=_seq_len(c))


def _llama3_reversed(c: Case) -> Case | None:
    s = c.spec
    if s.rope_type != "llama3" or s.factor == 1.0:
        return None
    w0, w = _omega0(s), _omega(s)
    g = w / w0
    sigma = (g - 1.0 / s.factor) / (1.0 - 1.0 / s.factor)
    band = (sigma > 0.0) & (sigma < 1.0)
    if not band.any():
        return None
    g2 = np.where(band, sigma / s.factor + (1.0 - sigma), g)
    return _custom(c, w0 * g2, 1.0)


# common library defaults: a configured value that is not read falls back to these
_DEFAULTS = {"beta_fast": 32.0, "beta_slow": 1.0, "attention_factor": None, "mscale": None, "mscale_all_dim": None,
             "truncate": True, "low_freq_factor": 1.0, "high_freq_factor": 4.0, "xpos_scale_base": 512.0,
             "max_freq": 10.0}


def _ignored(key: str):
    def t(c: Case) -> Case | None:
        s = c.spec
        if getattr(s, key) == _DEFAULTS[key]:
            return None
        try:
            changes = {key: _DEFAULTS[key]}
            if key in ("mscale", "mscale_all_dim"):
                changes = {"mscale": None, "mscale_all_dim": None}
            return _replace(c, spec=s.replace(**changes))
        except ValueError:
            return None
    return t


def _xpos_query_scale_for_keys(c: Case) -> Case | None:
    if not c.spec.xpos or c.role != "key":
        return None
    return _replace(c, role="query")


def _xpos_centre_zero(c: Case) -> Case | None:
    if not c.spec.xpos or c.spec.xpos_center == 0.0:
        return None
    return _replace(c, spec=c.spec.replace(xpos_center=0.0), seq_len=_seq_len(c))


# ----------------------------------------------------------------------------- the catalogue
@dataclasses.dataclass(frozen=True)
class Hypothesis:
    name: str
    description: str
    transform: Callable[[Case], Case | None]
    source: str = ""
    hint: str = ""      # what to declare instead of calling it a bug (precision conventions)


HYPOTHESES: dict[str, Hypothesis] = {h.name: h for h in [
    Hypothesis("pairing", "the other pair layout (half <-> interleaved)", _swap_layout,
               "GPT-NeoX rotate_half vs GPT-J / RoFormer adjacent pairs"),
    Hypothesis("output-order", "the rotation is right but the output is left in the other pair order",
               _deinterleaved_output, "kernels that rotate interleaved pairs on a half-layout tensor"),
    Hypothesis("positions+1", "positions off by +1", _shift(1), "1-based positions, BOS handling"),
    Hypothesis("positions-1", "positions off by -1", _shift(-1), "cache offsets counted after the write"),
    Hypothesis("sin-sign", "rotation in the other direction (sin sign flipped)", _sin_flipped,
               "rotate_half written as cat(x2, -x1)"),
    Hypothesis("theta-default", "theta 10000 instead of the configured rope_theta", _theta_default,
               "a config key that is not read"),
    Hypothesis("exponent-head-dim", "frequency exponent 2i/head_dim instead of 2i/rotary_dim",
               _exponent_over_head_dim, "partial rotary (GPT-NeoX, Phi) with the full head width"),
    Hypothesis("partial-last-dims", "the last rotary_dim features rotated instead of the first",
               _partial_on_last_dims, "partial rotary on the wrong end of the head"),
    Hypothesis("tail-zeroed", "the pass-through tail zeroed", _tail_zeroed, "partial rotary that drops the tail"),
    Hypothesis("positions-bfloat16", "positions rounded to bfloat16 before the angle", _positions_in("bfloat16"),
               "arange in the activation dtype (rotary-embedding-torch get_seq_pos)"),
    Hypothesis("positions-float16", "positions rounded to float16 before the angle", _positions_in("float16"),
               "arange in the activation dtype"),
    Hypothesis("angles-float32", "angles formed in float32 (under float64 input)", _precision(angle="float32"),
               "position_ids.float() * inv_freq", hint="declare Numerics(angle_dtype='float32')"),
    Hypothesis("cos-sin-bfloat16", "cos/sin rounded to bfloat16 before the rotation",
               _precision(compute="bfloat16"), "tables cached in bfloat16",
               hint="declare Numerics(compute_dtype='bfloat16') if that is the library's convention"),
    Hypothesis("cos-sin-float32", "cos/sin kept in float32 (rotation with float32 tables)",
               _precision(compute="float32"), "float32 tables applied to the activation",
               hint="declare Numerics(compute_dtype='float32')"),
    Hypothesis("attention-missing", "the attention factor (YaRN/LongRoPE magnitude) not applied",
               _attention_missing, "cos/sin not scaled by attention_scaling"),
    Hypothesis("attention-squared", "the attention factor applied twice (squared)", _attention_squared,
               "scaled cos/sin and scaled logits"),
    Hypothesis("attention-sin-only", "the attention factor applied to sin only", _attention_on_sin_only, ""),
    Hypothesis("linear-sqrt", "linear factor applied as its square root", _linear_sqrt, ""),
    Hypothesis("yarn-ramp-inverted", "YaRN ramp inverted (interpolation on the fast frequencies)",
               _yarn_ramp_inverted, "YaRN eq. 18 read backwards"),
    Hypothesis("yarn-betas-swapped", "YaRN beta_fast and beta_slow swapped", _yarn_betas_swapped, ""),
    Hypothesis("yarn-truncate", "YaRN truncate setting ignored (the other rounding of the correction range)",
               _yarn_truncate_ignored, "gpt-oss truncate=False not read"),
    Hypothesis("yarn-mscale-0.07", "YaRN magnitude 0.07 ln s + 1 instead of 0.1 ln s + 1", _yarn_mscale_007,
               "DeepSeek mscale constant misapplied"),
    Hypothesis("dynamic-never-rescaled", "dynamic NTK never rescales (plain RoPE past L0)", _dynamic_never_rescaled,
               "the dynamic update not wired"),
    Hypothesis("dynamic-length+1", "dynamic NTK length off by +1 (max position + 2)", _dynamic_length(1), ""),
    Hypothesis("dynamic-length-1", "dynamic NTK length off by -1 (max position)", _dynamic_length(-1), ""),
    Hypothesis("dynamic-as-ntk", "dynamic NTK computed as static NTK with the factor as alpha",
               _dynamic_as("ntk"), "alpha vs factor (vLLM DynamicNTKAlpha)"),
    Hypothesis("dynamic-as-uniform", "dynamic NTK computed as a uniform division by s^(r/(r-2))",
               _dynamic_as("linear"), "KerasHub RotaryEmbedding rope_type='dynamic'"),
    Hypothesis("longrope-switch-at-equal", "LongRoPE switching to the long factors at length == L0 (>= not >)",
               _longrope_at_equal, ""),
    Hypothesis("longrope-switch-per-position", "LongRoPE switching per position instead of per sequence "
               "(or the reverse)", _longrope_switch_swapped, "Modular MAX stitched tables"),
    Hypothesis("llama3-reversed", "Llama 3 smoothing reversed in the band", _llama3_reversed, ""),
    Hypothesis("xpos-query-scale-for-keys", "the key gets the query's xPos scale", _xpos_query_scale_for_keys, ""),
    *[Hypothesis(f"{k}-ignored", f"{k} not read (the common default {_DEFAULTS[k]!r} used)", _ignored(k),
                 "a config key the library drops or hard-codes") for k in _DEFAULTS],
    Hypothesis("xpos-centre-0", "xPos scale centred at 0 instead of seq_len // 2", _xpos_centre_zero, ""),
]}


NOT_A_CONVENTION = ("state",)   # diagnoses that are not catalogue records (the stateful check)


def unknown_names(label: str) -> list[str]:
    """The parts of a diagnosis label ("a" or "a+b") that are not catalogued (a registry entry's ``diagnosis``)."""
    return [n for n in label.split("+") if n not in HYPOTHESES and n not in NOT_A_CONVENTION]


def first_explanation(d: dict[str, Any] | None) -> str | None:
    """The label of a diagnosis' first explanation (None when nothing explains it)."""
    ex = (d or {}).get("explained_by") or []
    return ex[0]["hypothesis"] if ex else None


def tied_first(d: dict[str, Any] | None) -> list[str]:
    """The explanations that leave exactly the first one's error ratio: where the case cannot tell them
    apart (a LongRoPE factor of 1 makes "attention factor missing" and "its default used" the same output)."""
    ex = (d or {}).get("explained_by") or []
    if not ex:
        return []
    best = ex[0].get("ratio")
    if best is None:
        return [ex[0]["hypothesis"]]
    return [e["hypothesis"] for e in ex
            if e.get("ratio") is not None and math.isclose(e["ratio"], best, rel_tol=1e-6, abs_tol=1e-12)]


# ----------------------------------------------------------------------------- judging a hypothesis
def ratio_under(case: Case, actual: np.ndarray, dtype: str) -> float:
    """Max error ratio of ``actual`` against the transformed reference, under the case's tolerance model."""
    from .judge import compare

    expected = case.expected()
    if case.frame is not None:
        actual, expected = np.asarray(actual)[..., case.frame], expected[..., case.frame]
    ratio, *_ = compare(case.spec, actual, expected, case.positions, case.precision, dtype)
    return ratio


def explain(case: Case, actual: np.ndarray, dtype: str, budget: float = BUDGET_SECONDS,
            hypotheses: dict[str, Hypothesis] | None = None) -> list[tuple[tuple[str, ...], float]]:
    """Single hypotheses (then pruned pairs) ordered by the error ratio they leave; explaining ones <= 1."""
    t0 = time.perf_counter()
    hyps = hypotheses or HYPOTHESES
    scored: list[tuple[tuple[str, ...], float]] = []
    for name, h in hyps.items():
        if time.perf_counter() - t0 > budget:
            break
        try:
            c2 = h.transform(case)
            if c2 is None:
                continue
            r = ratio_under(c2, actual, dtype)
            if r <= 1.0 and name in TABLE_PRECISION and (not _widespread(case, actual, dtype)
                                                         or _rotation_only(case, actual)):
                r = math.inf   # widened enough, but not the cause: see _widespread and _rotation_only
            scored.append(((name,), r))
        except (ValueError, ArithmeticError, TypeError, IndexError):
            continue
    scored.sort(key=_rank)
    if scored and scored[0][1] <= 1.0:
        return scored
    base = _safe_ratio(case, actual, dtype)
    helpful = [s for s in scored if s[1] < 0.5 * base][:6]
    for i, (a, _) in enumerate(helpful):
        for b, _ in helpful[i + 1:]:
            if time.perf_counter() - t0 > budget:
                break
            try:
                c2 = hyps[a[0]].transform(case)
                c3 = hyps[b[0]].transform(c2) if c2 is not None else None
                if c3 is not None:
                    scored.append((a + b, ratio_under(c3, actual, dtype)))
            except (ValueError, ArithmeticError, TypeError, IndexError):
                continue
    scored.sort(key=_rank)
    return scored


# hypotheses that only round the cos/sin tables: they widen the bound of every pair alike
TABLE_PRECISION = ("cos-sin-bfloat16", "cos-sin-float32")


def _widespread(case: Case, actual: np.ndarray, dtype: str) -> bool:
    """Whether the error is spread like rounded tables: cos/sin rounded to a narrower dtype move every
    pair with a non-zero angle by up to that dtype's unit roundoff, far beyond the cell's own bound, so at
    least half the pairs exceed it.  A divergence confined to a few pairs (two pairs left unrotated, one
    inaccurate frequency) is small enough to hide under the widened bound but is not explained by it."""
    from .judge import compare

    expected = case.expected()
    if case.frame is not None:
        actual, expected = np.asarray(actual)[..., case.frame], expected[..., case.frame]
    *_, profile = compare(case.spec, actual, expected, case.positions, case.precision, dtype)
    by_pair = np.asarray(profile["ratio_by_pair"], dtype=np.float64)
    return by_pair.size > 0 and np.count_nonzero(by_pair > 1.0) >= 0.5 * by_pair.size


def _rotation_only(case: Case, actual: np.ndarray) -> bool:
    """Whether the error is (nearly) a pure rotation of each pair: an angle error (an inaccurate frequency,
    angles from a running product) moves the output along the circle, so the pair norms stay within a small
    fraction of the error, while cos/sin rounded independently move the norm as much as the direction.
    Aggregated over the rotated elements: sum |norm change| below a fifth of sum |error| is a rotation."""
    y = case.expected()
    a = np.asarray(actual, dtype=np.float64)
    if case.frame is not None:
        a, y = a[..., case.frame], y[..., case.frame]
    from .tolerance import pair_views

    s = case.spec
    if a.shape != y.shape or a.shape[-1] < s.rotary_dim or s.n_pairs == 0:
        return False
    pa, py = pair_views(a, s.rotary_dim, s.layout), pair_views(y, s.rotary_dim, s.layout)
    err = np.hypot(pa[0] - py[0], pa[1] - py[1])
    radial = np.abs(np.hypot(*pa) - np.hypot(*py))
    total = float(np.sum(err[np.isfinite(err)]))
    return total > 0 and float(np.sum(radial[np.isfinite(radial)])) < 0.2 * total


def _rank(s: tuple[tuple[str, ...], float]) -> tuple:
    """Explaining hypotheses first; among them a convention (it predicts the output) before a precision
    (it only widens the bound), single before pairs, then by the error left."""
    names, ratio = s
    precision = any(HYPOTHESES[n].hint for n in names)
    return (not ratio <= 1.0, precision if ratio <= 1.0 else False, len(names), ratio)


def _safe_ratio(case: Case, actual: np.ndarray, dtype: str) -> float:
    try:
        return ratio_under(case, actual, dtype)
    except (ValueError, ArithmeticError):
        return math.inf


def structure(case: Case, actual: np.ndarray) -> dict[str, Any]:
    """What the error looks like when no convention explains it: pairs, growth with position, constancy."""
    from .tolerance import pair_norm, pair_views

    y = case.expected()
    err = np.abs(np.asarray(actual, dtype=np.float64) - y)
    pn = np.maximum(pair_norm(y, case.spec.rotary_dim, case.spec.layout), 1e-300)
    rel = err / pn
    s, r, h = case.spec, case.spec.rotary_dim, case.spec.n_pairs
    a, b = pair_views(rel, r, s.layout)
    per_pair = np.maximum(a, b).reshape(-1, h).max(axis=0)
    top = float(per_pair.max()) if per_pair.size else 0.0
    pairs = [int(j) for j in np.flatnonzero(per_pair > 0.1 * top)] if top > 0 else []
    pos = np.asarray(case.positions, dtype=np.float64)
    pos = pos[..., 0] if pos.ndim == 3 else pos
    per_tok = rel[..., :r].max(axis=(1, 3)).ravel() if rel.ndim == 4 else rel.ravel()
    p = pos.ravel()
    growth = None
    if p.size > 2 and np.ptp(p) > 0 and np.all(per_tok > 0):
        growth = float(np.corrcoef(np.log1p(np.abs(p)), np.log(per_tok))[0, 1])
    tail = bool(np.any(err[..., r:] > 0)) if r < s.head_dim else False
    return {"pairs": pairs if len(pairs) <= 16 else f"{len(pairs)} of {h}",
            "relative_error_max": top, "relative_error_spread": float(np.ptp(per_tok) / top) if top else 0.0,
            "grows_with_position": growth, "tail_changed": tail}


def describe(names: tuple[str, ...]) -> str:
    return " + ".join(HYPOTHESES[n].description for n in names)


def hints(names: tuple[str, ...]) -> list[str]:
    return [HYPOTHESES[n].hint for n in names if HYPOTHESES[n].hint]


# ----------------------------------------------------------------------------- a cell's diagnosis
def diagnose_cell(cell, minimal: dict[str, Any], budget: float = BUDGET_SECONDS) -> dict[str, Any] | None:
    """The diagnosis of a cell's smallest failing (or known) case: the explaining hypotheses, confirmed on
    fresh adapter calls, or the error's structure.  None when the case cannot be rebuilt."""
    t0 = time.perf_counter()
    if minimal.get("scenario"):
        return _diagnose_state(cell, minimal)
    if minimal.get("source", "").startswith("metamorphic"):
        return {"explained_by": [], "note": "a metamorphic check (no reference output to transform)"}
    built = _rebuild(cell, minimal)
    if built is None:
        return None
    case, x_dtyped = built
    try:
        actual = _call(cell, case, x_dtyped)
    except BaseException as e:  # noqa: BLE001 - an erroring case has no output to explain
        return {"explained_by": [], "note": f"the adapter raised: {type(e).__name__}", "seconds": 0.0}
    if _safe_ratio(case, actual, cell.dtype) <= 1.0:   # nothing to explain: every hypothesis would
        return {"explained_by": [], "seconds": round(time.perf_counter() - t0, 3),
                "note": "this call conforms when made afresh: the failure needs how the run made it "
                        "(a live instance's state or settings, or another dtype's earlier call)"}
    scored = explain(case, actual, cell.dtype, budget)
    found = [(names, ratio) for names, ratio in scored if ratio <= 1.0]
    explained = []
    for names, ratio in found[:3]:
        confirmed, tried = _confirm(cell, case, names)
        if confirmed == tried:
            explained.append({"hypothesis": "+".join(names), "description": describe(names), "ratio": ratio,
                              "confirmed": f"{confirmed}/{tried} more cases", "hints": hints(names)})
    out: dict[str, Any] = {"explained_by": explained}
    if not explained:
        out["structure"] = structure(case, actual)
        out["closest"] = [{"hypothesis": "+".join(n), "ratio": r} for n, r in scored[:3]]
    out["seconds"] = round(time.perf_counter() - t0, 3)
    return out


def _rebuild(cell, m: dict[str, Any]):
    from ropeconf.golden_data.corpus import input_array

    from .judge import make_input

    if m.get("spec") is None:
        return None
    spec = RopeSpec.from_dict(m["spec"])
    role = m.get("role") or "query"
    if m.get("source") == "golden":
        arrays = next((a for c, a in cell.golden if c["id"] == m["case_id"]), None)
        if arrays is None:
            return None
        x, pos = input_array(arrays, cell.dtype), arrays["positions"]
    else:
        if m.get("positions") is None:
            return None
        pos = np.asarray(m["positions"], dtype=np.int64)
        heads = (m.get("worst") or {}).get("heads", 1)
        x = make_input(spec, pos.shape[0], heads, pos.shape[1], cell.dtype, m.get("seed") or 0)
    return Case(spec, np.asarray(x).astype(np.float64), np.asarray(pos), role, precision=cell.precision), x


def _call(cell, case: Case, x_dtyped) -> np.ndarray:
    from .judge import check_output, run_adapter_call

    out = np.asarray(run_adapter_call(cell.adapter, case.spec, x_dtyped, np.asarray(case.positions), cell.dtype,
                                      cell.device, case.role))
    check_output(out, case.x.shape, cell.dtype, cell.precision)  # raises on the wrong kind of output
    return out


def _confirm(cell, case: Case, names: tuple[str, ...]) -> tuple[int, int]:
    """How many fresh cases (other positions, another input) the hypothesis also explains."""
    from .judge import make_input

    p = np.asarray(case.positions)
    if p.shape[-1] > 1 and np.all(np.diff(p, axis=-1) == 1):
        other = p + p.shape[-1]            # contiguous rows stay contiguous (adapters may take another path
    else:                                  # for arbitrary positions): the next block of positions
        other = p.copy()                   # other positions, the same length (max position kept)
        mask = p != p.max()
        other[mask] = np.abs(p[mask]) // 2 + 1
    variants = [other, p]                  # and the same positions with another input
    confirmed = tried = 0
    for k, pos in enumerate(variants):
        try:
            x = make_input(case.spec, pos.shape[0], case.x.shape[1], pos.shape[1], cell.dtype, 1000 + k)
            fresh = Case(case.spec, x.astype(np.float64), pos, case.role, precision=case.precision)
            actual = _call(cell, fresh, x)
            c2 = fresh
            for n in names:
                c2 = HYPOTHESES[n].transform(c2)
                if c2 is None:
                    break
            if c2 is None:
                continue
            tried += 1
            confirmed += ratio_under(c2, actual, cell.dtype) <= 1.0
        except BaseException:  # noqa: BLE001 - a confirmation that cannot run confirms nothing
            tried += 1
    return confirmed, tried


def _diagnose_state(cell, m: dict[str, Any]) -> dict[str, Any] | None:
    """A stateful failure: does the failing call conform on a fresh instance (then: state from earlier calls)?
    Else the failing call is diagnosed like any other case."""
    from .sources import run_scenario

    sc = m["scenario"]
    k = int(m["case_id"].split(":call")[1].split(":")[0]) if ":call" in m["case_id"] else len(sc["calls"]) - 1
    alone = {"kind": "alone", "instances": [sc["instances"][sc["calls"][k]["instance"]]],
             "calls": [{**sc["calls"][k], "instance": 0}]}
    results = run_scenario(cell.adapter, alone, cell.device, dtype=cell.dtype)
    fresh_ok = bool(results) and all(r.outcome == "conforms" for r in results)
    if fresh_ok:
        return {"explained_by": [{"hypothesis": "state", "ratio": results[-1].max_ratio,
                                  "description": f"state left by the earlier calls of the {sc['kind']} sequence: "
                                                 f"the same call on a fresh instance conforms",
                                  "confirmed": "1/1 fresh instance", "hints": []}]}
    if results and results[-1].outcome == "error":   # no output to explain, fresh or not
        return {"explained_by": [], "note": f"the call fails on a fresh instance too: {results[-1].message}"}
    call = sc["calls"][k]
    plain = {**m, "scenario": None, "source": "stateful-call", "positions": call["positions"],
             "seed": call.get("seed", k + 1), "worst": {"heads": call.get("heads", 1)},
             "spec": sc["instances"][call["instance"]], "role": call.get("role", "query")}
    return diagnose_cell(cell, plain)


def diagnose(adapter, spec: RopeSpec, positions: np.ndarray, dtype: str, device: str = "cpu", role: str = "query",
             seed: int = 0, heads: int = 1, budget: float = BUDGET_SECONDS) -> dict[str, Any] | None:
    """The diagnosis of one case (what ``ropeconf replay`` prints and the tests use)."""
    from .judge import precision_for

    cell = types.SimpleNamespace(adapter=adapter, dtype=dtype, device=device, golden=[],
                                 precision=precision_for(adapter, dtype))
    minimal = {"spec": spec.to_dict(), "positions": np.asarray(positions).tolist(), "seed": seed, "role": role,
               "source": "property", "case_id": "case", "worst": {"heads": heads}}
    return diagnose_cell(cell, minimal, budget)
