"""``ropeconf identify``: what does an implementation actually compute? Black-box fingerprinting.

The adapter is probed with the basis vectors e_k of its head (one per head) at chosen
positions, so each call returns the linear map M(p) at every probed position.  From M(p):

* the pairs (which features rotate together: half or interleaved layout, or another
  pairing), the pass-through tail (rotary_dim) and the direction of rotation;
* per pair, the angle phi_j(p) and the magnitude m_j(p); omega_j is read at p = 1
  and refined by unwrapping at p = 2, 4, ... 2^k (each step keeps the prediction
  within pi), so it is as precise as the implementation's own angles;
* the same at several sequence lengths (the largest position of a call), which
  tells length-dependent schedules (dynamic NTK, LongRoPE) and where they switch
  (bisection on the length).

Candidate specs of every rope type are fitted to those frequencies and magnitudes
and each is judged against the probe outputs under the tolerance model: the best
is printed in Hugging Face ``rope_parameters`` form with its residual in tolerance
units (<= 1: identified), with the runner-up, how precise its positions are (exact, or
rounded to bfloat16/float16) and what the key role does (the query's rotation, or
xPos's inverse scale; xPos's scale base and centre are fitted from the magnitudes).  Parameters that the outputs cannot
tell apart are reported in a canonical form (docs/diagnosis.md: Llama 3's L0 and
band factors only up to a common scale, YaRN's betas and L0 only through the
correction range, static NTK as default RoPE with the scaled base, LongRoPE's theta
as 10000 with its factor lists relative to it).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import numpy as np

from ropeconf.reference import RopeSpec
from ropeconf.reference.dtypes import round_to
from ropeconf.reference.frequencies import ramp_bounds

from .adapter import Adapter, Unsupported
from .judge import compare, precision_for
from .tolerance import Precision

SMALL = (1, 2, 3, 4, 5, 6, 7, 8)
CONTIGUOUS_MAX = 4096   # the longest all-positions probe (D calls' worth of D x n outputs)
COMPLEXITY = {"default": 0, "linear": 1, "ntk": 1, "dynamic": 2, "yarn": 3, "llama3": 3, "longrope": 4}


@dataclasses.dataclass
class Probe:
    positions: np.ndarray           # (n,) probed positions of one call
    M: np.ndarray                   # (n, D, D): M[t] @ e_k = output for e_k at positions[t]


def _call(adapter: Adapter, spec: RopeSpec, positions: np.ndarray, dtype: str, device: str,
          role: str = "query") -> np.ndarray:
    from .judge import run_adapter_call

    D = spec.head_dim
    x = round_to(np.broadcast_to(np.eye(D)[None, :, None, :], (1, D, len(positions), D)).copy(), dtype)
    out = run_adapter_call(adapter, spec, x, np.asarray(positions, dtype=np.int64)[None], dtype, device, role)
    y = np.asarray(out, dtype=np.float64)[0]            # (D heads = input basis k, n, D outputs)
    return np.transpose(y, (1, 2, 0))                    # (n, out i, in k): M[t][i, k]


def probe(adapter: Adapter, spec: RopeSpec, dtype: str, device: str, length: int, role: str = "query") -> Probe:
    """One call at positions 0..8 and powers of two below ``length`` (its last position is length - 1)."""
    pos = sorted({0, *SMALL, *[2 ** k for k in range(4, 31) if 2 ** k < length - 1], length - 1})
    pos = np.array([p for p in pos if p < length])
    try:
        return Probe(pos, _call(adapter, spec, pos, dtype, device, role))
    except Unsupported:
        if length > CONTIGUOUS_MAX:    # a library that takes only 0..n-1 (no offsets, no gaps): probe them all
            raise
        return Probe(pos, _call(adapter, spec, np.arange(length), dtype, device, role)[pos])


def pairs_of(M: np.ndarray, tol: float = 0.0) -> tuple[list[tuple[int, int]], list[int]]:
    """(rotated pairs (a, b) in first-element order, pass-through features) from M at every probed position.

    A basis vector's output has exactly two nonzero features when it rotates (x2 = 0 makes
    a c - b s exact), one when it passes through; the slowest pair only shows at long positions.
    """
    D = M.shape[-1]
    off = np.abs(M[..., :, :]).max(axis=0) * (1 - np.eye(D))
    pairs, tail, seen = [], [], set()
    for k in range(D):
        if k in seen:
            continue
        partners = [i for i in np.flatnonzero(off[:, k] > tol) if i != k]
        if not partners:
            tail.append(k)
            continue
        j = int(partners[np.argmax(off[partners, k])])
        pairs.append((k, j))
        seen.update((k, j))
    return pairs, tail


def layout_of(pairs: list[tuple[int, int]], D: int) -> str | None:
    r = 2 * len(pairs)
    if all(b == a + r // 2 for a, b in pairs) and [a for a, _ in pairs] == list(range(r // 2)):
        return "half"
    if all(a == 2 * i and b == 2 * i + 1 for i, (a, b) in enumerate(pairs)):
        return "interleaved"
    return None


def angles_of(pr: Probe, pairs: list[tuple[int, int]]) -> tuple[np.ndarray, np.ndarray]:
    """phi (n, pairs) and magnitude (n, pairs): M[a,a] = m cos, M[b,a] = m sin for the rotation of e_a."""
    a = np.array([p[0] for p in pairs])
    b = np.array([p[1] for p in pairs])
    c = pr.M[:, a, a]
    s = pr.M[:, b, a]
    return np.arctan2(s, c), np.hypot(c, s)


def omegas(pr: Probe, phi: np.ndarray) -> np.ndarray:
    """omega per pair from phi(1), refined by unwrapping along the doubling positions."""
    pos = pr.positions
    t1 = int(np.flatnonzero(pos == 1)[0])
    w = phi[t1].copy()
    for t in np.argsort(pos):
        p = pos[t]
        if p <= 1:
            continue
        k = np.round((w * p - phi[t]) / (2 * np.pi))
        w = (phi[t] + 2 * np.pi * k) / p
    return w


@dataclasses.dataclass
class Fingerprint:
    head_dim: int
    rotary_dim: int
    layout: str | None
    direction: int                       # +1 counter-clockwise (every peer), -1 the other way
    omega: np.ndarray                    # per pair at the short length
    omega_long: np.ndarray               # per pair at the longest probed length
    magnitude: float
    magnitude_varies: bool
    length_switch: int | None            # the largest short length before the schedule changes
    short_len: int
    long_len: int
    xpos: tuple[float, float] | None = None   # (scale base, centre) fitted when magnitudes follow xPos


def fingerprint(adapter: Adapter, spec: RopeSpec, dtype: str, device: str, long_len: int) -> tuple[Fingerprint,
                                                                                                   list[Probe]]:
    short = probe(adapter, spec, dtype, device, 64)
    longp = probe(adapter, spec, dtype, device, long_len)
    pairs, tail = pairs_of(np.concatenate([short.M, longp.M]))
    D = spec.head_dim
    layout = layout_of(pairs, D)
    phi, mag = angles_of(short, pairs)
    w = omegas(short, phi)
    direction = -1 if np.median(w) < 0 else 1
    phil, magl = angles_of(longp, pairs)
    wl = omegas(longp, phil)
    probes = [short, longp]
    switch = None
    # omega at the short length is known to about eps(dtype) / 63 (its last position): a change beyond that
    # noise (and 1e-5 relative) means the schedule depends on the length
    noise = 8 * float(np.finfo(np.float32).eps if dtype in ("float32", "float64") else
                      (2.0 ** -8 if dtype == "bfloat16" else 2.0 ** -11)) / short.positions.max()

    def changed(w2: np.ndarray) -> bool:
        return bool(np.any(np.abs(w2 - w) > noise + 1e-5 * np.abs(w)))

    if changed(wl):
        lo, hi = 64, long_len
        while hi - lo > 1:                                             # bisection: a handful of calls
            mid = (lo + hi) // 2
            pm = probe(adapter, spec, dtype, device, mid)
            wm = omegas(pm, angles_of(pm, pairs)[0])
            if changed(wm):
                hi = mid
            else:
                lo = mid
        switch = lo
        if 2 * switch < long_len:  # a length between the switch and the longest: step (LongRoPE) or slope (NTK)?
            probes.append(probe(adapter, spec, dtype, device, 2 * switch + 1))
    else:
        w = wl                   # one schedule at every length: the long probe resolves omega best
    m = np.concatenate([mag.ravel(), magl.ravel()])
    varies = bool(np.ptp(m) > max(1e-3, noise * short.positions.max()) * np.median(m))  # beyond output rounding
    fp = Fingerprint(D, 2 * len(pairs), layout, direction, np.abs(w), np.abs(wl), float(np.median(mag)),
                     varies, switch, 64, long_len, _xpos_fit(short, mag, 2 * len(pairs)) if varies else None)
    return fp, probes


# ----------------------------------------------------------------------------- candidate specs
def _geometric_fit(w: np.ndarray, r: int, idx: np.ndarray | None = None) -> tuple[float, float]:
    """(theta, scale) with omega_j = theta^(-2j/r) / scale, least squares in log omega over ``idx``."""
    j = np.arange(len(w)) if idx is None else idx
    A = np.stack([-2.0 * j / r, -np.ones(len(j))], axis=1)
    # an omega read from angles is known to about the same absolute error for every pair, so its log to
    # a relative error ~ 1/omega: weight each row by omega (the slow pairs of a bfloat16 probe count less)
    wt = w[j] / np.max(w[j])
    sol, *_ = np.linalg.lstsq(A * wt[:, None], np.log(w[j]) * wt, rcond=None)
    return float(np.exp(sol[0])), float(np.exp(sol[1]))


def candidates(fp: Fingerprint) -> list[RopeSpec]:
    geo = dict(head_dim=fp.head_dim, rotary_dim=fp.rotary_dim, layout=fp.layout or "half")
    r, w, out = fp.rotary_dim, fp.omega, []
    theta, scale = _geometric_fit(w, r)
    out.append(RopeSpec(**geo, rope_theta=theta))
    if abs(scale - 1) > 1e-6:
        out.append(RopeSpec(**geo, rope_type="linear", rope_theta=theta, factor=scale))
    n = len(w)
    # Llama 3 and YaRN: the first (fastest) pairs keep the base schedule, the last ones are divided by s
    head = np.arange(min(4, n))
    theta0, _ = _geometric_fit(w, r, head)
    w0 = theta0 ** (-2.0 * np.arange(n) / r)
    g = w / w0
    s = float(1.0 / np.min(g)) if np.min(g) > 0 else 1.0
    if s > 1.0001:
        out += _llama3_candidates(geo, theta0, w0, g, s)
        out += _yarn_candidates(geo, theta0, g, s, fp.magnitude)
    if fp.length_switch is not None:
        out += _length_candidates(fp, geo, theta)
    if fp.xpos is not None:
        B, c = fp.xpos
        out += [RopeSpec(**geo, rope_theta=theta, xpos=True, xpos_scale_base=B, xpos_center=cc)
                for cc in ((None, c) if abs(c - fp.short_len // 2) < 0.5 else (c,))]
    return out


def _xpos_fit(pr: Probe, mag: np.ndarray, r: int) -> tuple[float, float] | None:
    """(scale base B, centre c) when the magnitudes follow xPos: ln m_j(p) = (p - c) ln(zeta_j) / B."""
    p = pr.positions.astype(np.float64)
    lm = np.log(np.maximum(mag, 1e-300))
    if lm.shape[0] < 3 or np.ptp(lm[:, 0]) < 1e-6:
        return None
    slope, icpt = np.polyfit(p, lm[:, 0], 1)
    if slope == 0:
        return None
    zeta0 = 0.4 * r / (1.4 * r)
    B, c = math.log(zeta0) / slope, -icpt / slope
    return (float(B), float(c)) if B > 0 else None


def _llama3_candidates(geo, theta, w0, g, s) -> list[RopeSpec]:
    lam = 2 * np.pi / w0
    sigma = (g - 1.0 / s) / (1.0 - 1.0 / s)
    band = (sigma > 1e-4) & (sigma < 1 - 1e-4)
    out = []
    if band.sum() >= 2:   # sigma = (L0/lam - lo)/(hi - lo) is linear in 1/lam: slope L0/(hi-lo), intercept -lo/(hi-lo)
        slope, icpt = np.polyfit(1.0 / lam[band], sigma[band], 1)
        lo = 1.0                              # (L0, lo, hi) and (k L0, k lo, k hi) are the same schedule
        hi = lo - lo / icpt if icpt < 0 else 4.0
        L0 = slope * (hi - lo)
        cands = [(L0, lo, hi)]
    else:                 # no pair inside the band: its edges lie between two pairs' wavelengths
        fast = lam[g > 1 - 1e-6].max() if np.any(g > 1 - 1e-6) else lam.min()
        slow = lam[g < 1.0 / s + 1e-6].min() if np.any(g < 1.0 / s + 1e-6) else lam.max()
        cands = [(float(slow), 1.0, float(slow / fast))]
    for L0, lo, hi in cands:
        try:
            out.append(RopeSpec(**geo, rope_type="llama3", rope_theta=theta, factor=s,
                                original_max_position_embeddings=max(int(round(L0)), 1), low_freq_factor=lo,
                                high_freq_factor=max(hi, lo)))
        except ValueError:
            continue
    return out


def _yarn_candidates(geo, theta, g, s, magnitude) -> list[RopeSpec]:
    ramp = (1.0 - g) / (1.0 - 1.0 / s)
    j = np.arange(len(g))
    inside = (ramp > 1e-4) & (ramp < 1 - 1e-4)
    if inside.sum() >= 2:
        slope, icpt = np.polyfit(j[inside], ramp[inside], 1)
        low, high = -icpt / slope, (1 - icpt) / slope
    else:
        low = float(j[ramp <= 1e-4].max()) if np.any(ramp <= 1e-4) else 0.0
        high = float(j[ramp >= 1 - 1e-4].min()) if np.any(ramp >= 1 - 1e-4) else float(len(g))
    att_default = 0.1 * math.log(s) + 1.0
    out = []
    for truncate in (True, False):
        for L0 in sorted({2 ** k for k in range(6, 21)} | {int(2 * np.pi * 32 * theta ** (2 * max(low, 0) / geo["rotary_dim"]))}):
            try:
                spec = RopeSpec(**geo, rope_type="yarn", rope_theta=theta, factor=s, original_max_position_embeddings=L0,
                                truncate=truncate,
                                attention_factor=None if abs(magnitude - att_default) < 1e-4 else magnitude)
            except ValueError:
                continue
            lo2, hi2 = ramp_bounds(spec)
            if abs(lo2 - low) < 0.5 and abs(hi2 - high) < 0.5:
                out.append(spec)
                break
    return out


def _length_candidates(fp: Fingerprint, geo, theta) -> list[RopeSpec]:
    L0 = fp.length_switch
    r = fp.rotary_dim
    out = []
    # dynamic NTK: b'(L) = b (s L/L0 - (s - 1))^(r/(r-2)) at the long length L
    b_long, _ = _geometric_fit(fp.omega_long, r)
    ratio = (b_long / theta) ** ((r - 2) / r)
    L = fp.long_len
    if L > L0 and ratio > 1:
        s = (ratio - 1) / (L / L0 - 1)
        try:
            out.append(RopeSpec(**geo, rope_type="dynamic", rope_theta=theta, factor=max(s, 1e-6),
                                original_max_position_embeddings=L0))
        except ValueError:
            pass
    # LongRoPE: per-pair factors against theta 10000 (not identifiable apart from them), switch past L0
    w0 = 10000.0 ** (-2.0 * np.arange(len(fp.omega)) / r)
    short, long = w0 / fp.omega, w0 / fp.omega_long
    m = fp.magnitude
    s = math.exp((m * m - 1.0) * math.log(L0)) if m > 1 else 1.0
    try:
        out.append(RopeSpec(**geo, rope_type="longrope", rope_theta=10000.0, factor=s,
                            original_max_position_embeddings=L0, short_factor=[float(v) for v in short],
                            long_factor=[float(v) for v in long]))
    except ValueError:
        pass
    return out


# ----------------------------------------------------------------------------- judging candidates
def residual(adapter: Adapter, spec: RopeSpec, probes: list[Probe], precision: Precision, dtype: str,
             role: str = "query", positions_in: str | None = None) -> float:
    """Max error ratio of the probed outputs against ``spec`` under the tolerance model (the reference
    evaluated for ``role``, at positions first rounded to ``positions_in`` when given)."""
    from ropeconf.reference import apply

    worst = 0.0
    D = spec.head_dim
    for pr in probes:
        x = round_to(np.broadcast_to(np.eye(D)[None, :, None, :], (1, D, len(pr.positions), D)).copy(), dtype)
        pos = pr.positions[None].astype(np.int64)
        y = np.transpose(pr.M, (2, 0, 1))[None]           # back to (1, D heads, n, D)
        ref_pos = pos if positions_in is None else round_to(pos.astype(np.float64), positions_in).astype(np.float64)
        exp = np.asarray(apply(spec, x.astype(np.float64), ref_pos, role=role, seq_len=int(pos.max()) + 1))
        ratio, *_ = compare(spec, round_to(y, dtype), exp, pos, precision, dtype)
        worst = max(worst, ratio)
    return worst


def identify(adapter: Adapter, spec: RopeSpec | None = None, dtype: str | None = None, device: str = "cpu",
             long_len: int = 2 ** 16) -> dict[str, Any]:
    """The best and runner-up RopeSpec for what ``adapter`` computes when configured with ``spec``."""
    spec = spec or RopeSpec(head_dim=64)
    caps = adapter.capabilities
    dtype = dtype or next((d for d in ("float64", "float32", "float16", "bfloat16") if d in caps.dtypes), "float32")
    if caps.max_position is not None:
        long_len = min(long_len, caps.max_position + 1)
    fp, probes = fingerprint(adapter, spec, dtype, device, long_len)
    result: dict[str, Any] = {"adapter": adapter.name, "dtype": dtype, "head_dim": fp.head_dim,
                              "rotary_dim": fp.rotary_dim, "layout": fp.layout,
                              "direction": "counter-clockwise" if fp.direction > 0 else "clockwise (sin sign flipped)",
                              "length_switch": fp.length_switch}
    if fp.layout is None or fp.rotary_dim == 0:
        result.update(identified=False, reason="no RoPE pairing found (not half, not interleaved)")
        return result
    prec = precision_for(adapter, dtype)
    cands = candidates(fp)
    top = max(int(p.positions.max()) for p in probes)
    # exact positions first; then positions formed in a narrow float (diagnosis: positions-<dtype>)
    for pdt in (None, "bfloat16", "float16"):
        if pdt == "float16" and top >= float(np.finfo(np.float16).max):
            continue
        scored = []
        for cand in cands:
            try:
                scored.append((residual(adapter, cand, probes, prec, dtype, positions_in=pdt), cand))
            except (ValueError, ArithmeticError):
                continue
        # within the tolerance the simplest explanation wins (LongRoPE's lists can mimic much at two lengths)
        scored.sort(key=lambda s: (not s[0] <= 1.0, COMPLEXITY[s[1].rope_type] if s[0] <= 1.0 else 0, s[0]))
        if pdt is None:
            first = scored
        if scored and scored[0][0] <= 1.0:
            break
    else:
        scored, pdt = first, None
    if not scored:
        result.update(identified=False, reason="no candidate spec could be fitted")
        return result
    best_r, best = scored[0]
    # also when the fit misses: a fitted theta of 10000.000000000027 is 1.3x the float64 tolerance
    # away at position 2^16, the round 10000 the library was given is not
    best, best_r = _snap(adapter, best, probes, prec, dtype, best_r, pdt)
    result.update(identified=bool(best_r <= 1.0), residual=best_r, best=_describe(best),
                  runner_up=_describe(scored[1][1]) | {"residual": scored[1][0]} if len(scored) > 1 else None)
    if best_r <= 1.0 and dtype == "float64":
        wider = residual(adapter, best, probes, dataclasses.replace(prec, angle="float64"), dtype, positions_in=pdt)
        result["angles"] = "float64" if wider <= 1.0 else "float32 (only within the float32-angle tolerance)"
    if best_r <= 1.0:
        result["positions"] = f"rounded to {pdt} before the angle" if pdt else f"exact (probed up to {top})"
        if pdt and best.rope_type not in ("dynamic", "longrope"):
            result["length_switch"] = None   # the rounded positions, not a length-dependent schedule
        result["roles"] = _roles(adapter, spec, best, probes[0], prec, dtype, device, pdt)
    else:
        result["reason"] = f"the closest candidate ({best.rope_type}) is {best_r:.3g} x the tolerance away"
    return result


SNAPPED = ("rope_theta", "factor", "attention_factor", "low_freq_factor", "high_freq_factor", "xpos_scale_base",
           "xpos_center", "beta_fast", "beta_slow")


def _snap(adapter: Adapter, spec: RopeSpec, probes: list[Probe], prec: Precision, dtype: str,
          r: float, positions_in: str | None = None) -> tuple[RopeSpec, float]:
    """Each fitted scalar rounded to the fewest significant digits (1..7) that still conform (or fit
    better than the raw fit): the probes cannot tell 9999.98 from 10000, and the round value is what
    the library was given."""
    for name in SNAPPED:
        v = getattr(spec, name, None)
        if not isinstance(v, float) or v == 0 or not math.isfinite(v):
            continue
        for digits in range(1, 8):
            rounded = float(f"{v:.{digits}g}")
            if rounded == v:
                break
            try:
                trial = dataclasses.replace(spec, **{name: rounded})
                tr = residual(adapter, trial, probes, prec, dtype, positions_in=positions_in)
            except (ValueError, ArithmeticError):
                continue
            if tr <= 1.0 or tr < r:
                spec, r = trial, tr
                break
    return spec, r


def _roles(adapter: Adapter, spec: RopeSpec, best: RopeSpec, short: Probe, prec: Precision, dtype: str, device: str,
           pdt: str | None) -> str:
    """The key role's convention: the same rotation as the query, or the reference's key role (xPos)."""
    try:
        key = probe(adapter, spec, dtype, device, int(short.positions.max()) + 1, "key")
        r = residual(adapter, best, [key], prec, dtype, role="key", positions_in=pdt)
    except Exception as e:  # noqa: BLE001 - a library without a key role is a fact to report, not a crash
        return f"the key role could not be probed ({type(e).__name__})"
    if r <= 1.0:
        return "the key matches the spec's key role" + (" (xPos: inverse scale)" if best.xpos else "")
    return f"the key differs from the spec's key role ({r:.3g} x tolerance)"


def _describe(spec: RopeSpec) -> dict[str, Any]:
    try:
        hf = spec.to_hf_rope_parameters()
    except ValueError:
        hf = None
    return {"rope_type": spec.rope_type, "rope_parameters": hf, "spec": spec.to_dict()}


def _short(params: dict[str, Any]) -> str:
    """rope_parameters as JSON with per-pair lists cut to their ends (the whole list is in --json)."""
    import json

    def cut(v: Any) -> Any:
        if isinstance(v, list) and len(v) > 6:
            return [*(float(f"{a:.6g}") for a in v[:2]), f"... {len(v)} values ...", float(f"{v[-1]:.6g}")]
        return v

    return json.dumps({k: cut(v) for k, v in params.items()})


def render(result: dict[str, Any]) -> str:

    lines = [f"adapter {result['adapter']} ({result['dtype']}): head_dim {result['head_dim']}, rotary_dim "
             f"{result['rotary_dim']}, layout {result['layout']}, rotation {result['direction']}"
             + (f", schedule switches past length {result['length_switch']}" if result.get("length_switch") else "")]
    if result.get("best"):
        verdict = "identified" if result["identified"] else "not identified"
        lines.append(f"{verdict}: best {result['best']['rope_type']} at {result['residual']:.3g} x tolerance")
        lines.append("  rope_parameters: " + _short(result["best"]["rope_parameters"] or result["best"]["spec"]))
        for key in ("angles", "positions", "roles"):
            if result.get(key):
                lines.append(f"  {key}: {result[key]}")
        if result.get("runner_up"):
            ru = result["runner_up"]
            lines.append(f"runner-up {ru['rope_type']} at {ru['residual']:.3g} x tolerance: "
                         + _short(ru["rope_parameters"] or ru["spec"]))
    if result.get("reason"):
        lines.append(f"not identified: {result['reason']}" if result.get("best") is None else f"  ({result['reason']})")
    return "\n".join(lines)

