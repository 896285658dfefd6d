"""Judging one case: run the adapter, compare with the reference under the tolerance model.

The outcome of one case (:class:`~ropeconf.conformance.outcome.Outcome`):
conforms, diverges, unsupported (declared, or the adapter raised
:class:`~ropeconf.conformance.adapter.Unsupported`) or error (anything else
raised).  Classification against the registry (known / fixed) happens in the
runner's cell, for every case source alike.
"""

from __future__ import annotations

import traceback
from typing import Any

import numpy as np

from ropeconf.reference import RopeSpec, angles, apply
from ropeconf.reference.dtypes import MAX_FINITE, name_of, round_to

from .adapter import Adapter, Unsupported
from .outcome import Outcome
from .results import CaseResult
from .tolerance import (Precision, angle_error_factor, angle_magnitude, bound, error_ratio, pair_norm, unjudgeable,
                        xpos_error_factor)


class OutputError(ValueError):
    """The adapter's output is not a result of the tested kind (shape, dtype, complex, object)."""


def make_input(spec: RopeSpec, batch: int, heads: int, seq: int, dtype: str, seed: int) -> np.ndarray:
    """Seeded normal input rounded to ``dtype`` (bfloat16 as ml_dtypes.bfloat16)."""
    x = np.random.default_rng([seed, 0x0C0F]).standard_normal((batch, heads, seq, spec.head_dim))
    return round_to(x, dtype)


def precision_for(adapter: Adapter, dtype: str) -> Precision:
    """The tolerance model's precisions for ``adapter`` at ``dtype`` (its declared Numerics, else conventional)."""
    p = adapter.precision
    return Precision.conventional(dtype, p.angle_dtype, p.compute_dtype, p.output_dtype)


def check_output(actual: Any, shape: tuple[int, ...], dtype: str, precision: Precision) -> np.ndarray:
    """The adapter's output as float64, after checking it is a real array of the tested dtype and shape.

    A complex, object, integer or otherwise-typed result is an error (its imaginary part
    or its type would otherwise be dropped silently), and so is a float dtype other than
    the tested one (or the declared ``output_dtype``): a float64 result of a float32 case
    is not what the library returns for float32 input.
    """
    act = np.asarray(actual)
    if act.dtype.kind == "c":
        raise OutputError(f"adapter returned a complex array ({act.dtype}): a RoPE output is real")
    got = name_of(act.dtype) if act.dtype.kind in "fV" else None
    if got is None:
        raise OutputError(f"adapter returned dtype {act.dtype}, not a floating array of the tested dtype {dtype}")
    if got != precision.dtype:
        raise OutputError(f"adapter returned {got} for a {dtype} case (expected {precision.dtype}; declare "
                          f"Numerics(output_dtype=...) if the library really returns another dtype)")
    if act.shape != shape:
        raise OutputError(f"adapter returned shape {act.shape}, expected {shape}")
    return act.astype(np.float64)


def angle_terms(spec: RopeSpec, positions: np.ndarray, x_shape: tuple[int, ...]):
    """Per element of x: |phi|, the angle-error multiplier (tolerance.angle_error_factor) and the
    magnitude-error multiplier (tolerance.xpos_error_factor)."""
    p = np.asarray(positions)
    seq_len = int(p.max()) + 1 if p.size else None
    a = np.asarray(angles(spec, positions))               # (batch, seq, r/2)
    per_elem = angle_magnitude(a, spec.rotary_dim, spec.head_dim, spec.layout)  # (batch, seq, D)
    fac = angle_magnitude(angle_error_factor(spec, seq_len), spec.rotary_dim, spec.head_dim, spec.layout)  # (D,)
    xs = angle_magnitude(xpos_error_factor(spec, p, seq_len), spec.rotary_dim, spec.head_dim, spec.layout)
    return np.broadcast_to(per_elem[:, None], x_shape), fac, np.broadcast_to(xs[:, None], x_shape)


def compare(spec: RopeSpec, actual: Any, expected: np.ndarray, positions: np.ndarray,
            precision: Precision, dtype: str | None = None) -> tuple[float, float, dict[str, Any], dict[str, Any]]:
    """(max ratio, max abs error, worst location, error profile) of actual vs expected.

    Elements whose tolerance reaches their pair's size are not judged (their ratio is 0);
    ``worst["unjudgeable"]`` counts them and ``worst["rotated"]`` counts the rotated elements.
    """
    act = check_output(actual, expected.shape, dtype or precision.dtype, precision)
    phi, fac, xs = angle_terms(spec, positions, expected.shape)
    tol = bound(expected, phi, spec.rotary_dim, spec.layout, precision, fac, xs)
    ratio = error_ratio(act, expected, tol)
    blind = unjudgeable(phi, spec.rotary_dim, precision, fac, xs)
    ratio = np.where(blind, 0.0, ratio)
    # A value beyond the dtype's range (xPos scales at long positions) cannot be represented:
    # overflowing to inf (or the largest finite value) of the right sign is the correct answer.
    big = MAX_FINITE[precision.dtype]
    over = np.abs(expected) > big
    if over.any():
        right = (np.abs(act) >= big) & (np.sign(act) == np.sign(expected))
        ratio = np.where(over, np.where(right, 0.0, np.inf), ratio)
    with np.errstate(invalid="ignore"):
        abs_err = np.abs(act - expected)
    abs_err = np.where(np.isnan(abs_err) & ~np.isnan(expected), np.inf, abs_err)
    i = np.unravel_index(int(np.argmax(ratio)), ratio.shape)
    b, h, s, d = (int(v) for v in i)
    pair = _pair_of(d, spec)
    worst = {"batch": b, "head": h, "seq": s, "element": d, "pair": pair,
             "position": np.asarray(positions)[b, s].tolist(),
             "actual": float(act[i]), "expected": float(expected[i]), "tolerance": float(tol[i]),
             "unjudgeable": int(blind.sum()), "rotated": int(np.prod(expected.shape[:-1])) * spec.rotary_dim}
    # error profile: per token (max over features) and per pair index (max over tokens)
    r_tok = ratio.max(axis=(1, 3))                          # (batch, seq)
    pn = np.maximum(pair_norm(expected, spec.rotary_dim, spec.layout), np.finfo(np.float64).tiny)
    profile = {"position": np.asarray(positions)[..., 0].ravel().tolist() if np.ndim(positions) == 3
               else np.asarray(positions).ravel().tolist(),
               "ratio_by_token": _finite(r_tok.ravel()),
               "abs_by_token": _finite(abs_err.max(axis=(1, 3)).ravel()),
               "tol_by_token": _finite(tol.max(axis=(1, 3)).ravel()),
               # relative to the pair norm: comparable across inputs, attention factors and xPos scales
               "rel_by_token": _finite((abs_err / pn).max(axis=(1, 3)).ravel()),
               "reltol_by_token": _finite((tol / pn).max(axis=(1, 3)).ravel())}
    rp = _per_pair(ratio, spec)
    profile["ratio_by_pair"] = _finite(rp)
    return float(ratio.max()), float(abs_err.max()) if abs_err.size else 0.0, worst, profile


def _finite(a: np.ndarray) -> list[float]:
    return [float(v) if np.isfinite(v) else 1e300 for v in np.asarray(a, dtype=np.float64)]


def _pair_of(d: int, spec: RopeSpec) -> int | None:
    if d >= spec.rotary_dim:
        return None
    return d % spec.n_pairs if spec.layout == "half" else d // 2


def _per_pair(ratio: np.ndarray, spec: RopeSpec) -> np.ndarray:
    r, h = spec.rotary_dim, spec.n_pairs
    if spec.layout == "half":
        a, b = ratio[..., :h], ratio[..., h:r]
    else:
        a, b = ratio[..., 0:r:2], ratio[..., 1:r:2]
    return np.maximum(a, b).reshape(-1, h).max(axis=0)


def run_adapter_call(adapter: Adapter, spec: RopeSpec, x: np.ndarray, positions: np.ndarray, dtype: str,
                     device: str, role: str = "query") -> np.ndarray:
    """One adapter call on private copies of x and positions (an adapter that writes into its
    inputs cannot change what the case is judged against)."""
    out = adapter.run(np.array(x, copy=True), np.array(positions, copy=True), spec, dtype=dtype, device=device,
                      role=role)
    return np.asarray(out.cpu() if hasattr(out, "cpu") and not isinstance(out, np.ndarray) else out)


def judge(adapter: Adapter, spec: RopeSpec, x: np.ndarray, positions: np.ndarray, *, dtype: str,
          device: str = "cpu", role: str = "query", variant: str = "", source: str = "property",
          case_id: str = "", seed: int | None = None, expected: np.ndarray | None = None) -> CaseResult:
    """Judge one case.  ``expected`` may be given (golden data); else the reference computes it."""
    res = CaseResult(adapter.name, variant, dtype, device, source, case_id, Outcome.CONFORMS,
                     spec=spec.to_dict(), positions=np.asarray(positions).tolist(), seed=seed, role=role)
    try:
        why = adapter.why_unsupported(spec, dtype, device, positions)
        if why:
            res.outcome, res.message = Outcome.UNSUPPORTED, why
            return res
        if expected is None:
            expected = np.asarray(apply(spec, np.asarray(x).astype(np.float64), positions, role=role))
        actual = run_adapter_call(adapter, spec, x, positions, dtype, device, role)
        ratio, abs_err, worst, profile = compare(spec, actual, expected, positions, precision_for(adapter, dtype),
                                                 dtype)
    except Unsupported as e:  # the adapter refused the case: a declaration, not a failure
        res.outcome, res.message = Outcome.UNSUPPORTED, str(e)
        return res
    except BaseException as e:  # noqa: BLE001 - anything the adapter raises (SystemExit too) is this case's error
        res.outcome = Outcome.ERROR
        res.message = f"{type(e).__name__}: {e}"
        if isinstance(e, MemoryError):
            res.message += " (memory exhausted: the worker's address space is limited by --memory-limit)"
        res.worst = {"traceback": traceback.format_exc(limit=-3)}
        return res
    res.max_ratio, res.max_abs_error, res.worst, res.profile = ratio, abs_err, worst, profile
    if not ratio <= 1.0:
        res.outcome = Outcome.DIVERGES
        res.message = (f"max error {abs_err:.3g} = {ratio:.3g} x tolerance at position {worst['position']}, "
                       f"pair {worst['pair']}")
    elif worst["rotated"] and worst["unjudgeable"] == worst["rotated"]:
        res.outcome = Outcome.UNJUDGEABLE
        res.message = (f"every rotated element is unjudgeable at position {worst['position']}: the {dtype} "
                       f"tolerance there reaches the pair's size (docs/tolerance.md, judgeable positions)")
    return res


def judge_case(adapter: Adapter, spec: RopeSpec, positions: np.ndarray, *, dtype: str = "float32",
               device: str = "cpu", seed: int = 0, role: str = "query", heads: int = 2) -> CaseResult:
    """Convenience: build a seeded input for ``positions`` (batch, seq[, streams]) and judge it."""
    positions = np.asarray(positions, dtype=np.int64)
    x = make_input(spec, positions.shape[0], heads, positions.shape[1], dtype, seed)
    return judge(adapter, spec, x, positions, dtype=dtype, device=device, role=role, seed=seed)
