"""``ropeconf parity``: the reference on another array namespace or device vs NumPy, over the golden corpus.

The reference (``ropeconf.reference``) is written against an array namespace
(array-api-compat), so the same code runs on NumPy, array_api_strict, torch,
JAX and CuPy.  For every golden case this runs it on the backend and on NumPy
and compares, per element: cos and sin, the rounded angles and the xPos scale
of both roles (ulp of the value, against NumPy's); the tables the backend's
``apply`` rotated by (against the product of its own cos/sin and scale); and
``apply`` for every input dtype and, for xPos specs, both roles (ulp of the
pair norm, as the judge measures outputs), end to end and net of what the
tables' difference propagates.  It reports the per-case maximum ulp distance
and how many elements are bit-identical.  Bound: 2 ulp on every group but the
end-to-end ``apply``, which is reported: a 1-ulp libm difference in cos/sin or
exp moves it by up to ~4 ulp (docs/accuracy.md, "Reference on every array
backend", says which results are bit-identical and why the others are not).

Exit codes of ``cmd_parity``: 0 every case within the bound; 1 a case exceeds
it or the reference raised on the backend; 2 the backend cannot run here (the
package is missing, or no CUDA device), with the reason.

JAX computes in float32 unless x64 is enabled; :func:`parity` enables it for
the duration of the run (and restores the previous setting).  A caller that
passes JAX arrays to the reference directly must enable it first:
``jax.config.update('jax_enable_x64', True)``; the reference raises a
TypeError otherwise.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

import numpy as np

BACKENDS = ("numpy", "strict", "torch", "jax", "cupy")
DEVICES = ("cpu", "cuda")
BOUND_ULP = 2.0
# Quantity groups, in report order.  cos/sin, angles, xPos scale: the backend's values vs NumPy's, ulp of the
# value.  tables: the rotation tables (c' = c * scale, s' = s * scale) the backend's apply used vs the product
# of its own cos/sin and scale, ulp of the value.  apply: vs NumPy, ulp of the pair norm, end to end
# (reported, not gated: a 1-ulp libm difference in cos/sin/exp moves it by up to ~4).  apply_net: the same
# less what the two sides' table difference propagates through the exact rotation: the rotation's own part.
GROUPS = ("cos_sin", "angles", "xpos", "tables", "apply", "apply_net")
GATED = ("cos_sin", "angles", "xpos", "tables", "apply_net")  # held to BOUND_ULP
GROUP_LABEL = {"cos_sin": "cos/sin", "angles": "angles", "xpos": "xpos", "tables": "tables", "apply": "apply",
               "apply_net": "apply-net"}


# ----------------------------------------------------------------------------- shared helpers (gpu.py uses them)
def gpu_unavailable_reason() -> str | None:
    """Why CuPy cannot run on a CUDA device here, or None when it can."""
    try:
        import cupy
    except Exception as e:
        return f"CuPy not importable: {type(e).__name__}: {e}"
    try:
        if cupy.cuda.runtime.getDeviceCount() < 1:
            return "CuPy found no CUDA device"
    except Exception as e:
        return f"no CUDA device: {type(e).__name__}: {e}"
    return None


def ulp_array(a: np.ndarray, b: np.ndarray, scale: np.ndarray) -> np.ndarray:
    """|a - b| per element in units of the ulp of ``scale``; 0 where both are NaN, inf where only one is."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    scale = np.asarray(scale, dtype=np.float64)
    with np.errstate(invalid="ignore"):
        d = np.abs(a - b) / np.spacing(np.maximum(np.abs(scale), np.finfo(np.float64).tiny))
        d = np.where(a == b, 0.0, d)  # equal infinities: inf - inf is NaN
    na, nb = np.isnan(a), np.isnan(b)
    return np.where(na & nb, 0.0, np.where(na | nb | np.isnan(d), np.inf, d))


def ulp_diff(a: np.ndarray, b: np.ndarray, scale: np.ndarray) -> float:
    """max |a - b| in units of the ulp of ``scale`` (for cos/sin: of the value; for outputs: of the pair norm)."""
    d = ulp_array(a, b, scale)
    return float(np.max(d)) if d.size else 0.0


def _identical(a: np.ndarray, b: np.ndarray) -> int:
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return int(np.count_nonzero((a == b) | (np.isnan(a) & np.isnan(b))))


# ----------------------------------------------------------------------------- backends
class BackendUnavailable(Exception):
    """The backend cannot run here; the message says why."""


@dataclass
class Backend:
    """How to move golden (NumPy) arrays onto a backend and back."""

    name: str
    device: str
    version: str
    asarray: Callable[[np.ndarray], Any]
    to_numpy: Callable[[Any], np.ndarray]
    # input dtypes the backend holds natively (name -> dtype); others are passed upcast to float64 (exact)
    dtypes: dict[str, Any] = field(default_factory=dict)
    astype: Callable[[Any, Any], Any] | None = None


@contextlib.contextmanager
def _jax_x64() -> Iterator[None]:
    """JAX with float64 enabled for the duration (the previous setting restored after)."""
    import jax

    prev = bool(jax.config.jax_enable_x64)
    jax.config.update("jax_enable_x64", True)
    try:
        yield
    finally:
        jax.config.update("jax_enable_x64", prev)


def _import(name: str, module: str, hint: str):
    import importlib

    try:
        return importlib.import_module(module)
    except Exception as e:
        raise BackendUnavailable(f"{name}: cannot import {module} ({type(e).__name__}: {e}); {hint}") from None


def load_backend(name: str, device: str = "cpu") -> Backend:
    """The backend ``name`` on ``device``, or BackendUnavailable with the reason (call inside ``_jax_x64`` for jax)."""
    if name not in BACKENDS:
        raise BackendUnavailable(f"unknown backend {name!r} (one of {', '.join(BACKENDS)})")
    if device not in DEVICES:
        raise BackendUnavailable(f"unknown device {device!r} (one of {', '.join(DEVICES)})")
    if name in ("numpy", "strict") and device != "cpu":
        raise BackendUnavailable(f"{name} runs on the CPU only (--device cpu)")
    if name == "cupy" and device != "cuda":
        raise BackendUnavailable("cupy runs on CUDA only (--device cuda)")

    if name == "numpy":
        from ropeconf.reference.dtypes import numpy_dtype

        dts = {d: numpy_dtype(d) for d in ("float32", "float16", "bfloat16")}
        return Backend(name, device, np.__version__, lambda a: np.array(a, copy=True), np.asarray, dts,
                       lambda a, dt: a.astype(dt))
    if name == "strict":
        xs = _import(name, "array_api_strict", "pip install array-api-strict (requirements/test.txt)")
        return Backend(name, device, xs.__version__, xs.asarray, np.from_dlpack, {"float32": xs.float32}, xs.astype)
    if name == "torch":
        torch = _import(name, "torch", "pip install torch")
        if device == "cuda" and not torch.cuda.is_available():
            raise BackendUnavailable(f"torch {torch.__version__}: no CUDA device (torch.cuda.is_available() is False)")
        dts = {d: getattr(torch, d) for d in ("float32", "float16", "bfloat16")}
        return Backend(name, device, torch.__version__, lambda a: torch.asarray(np.array(a, copy=True), device=device),
                       lambda t: t.detach().cpu().numpy(), dts, lambda t, dt: t.to(dt))
    if name == "jax":
        jax = _import(name, "jax", "pip install jax")
        import jax.numpy as jnp

        plat = "cpu" if device == "cpu" else "gpu"
        try:
            dev = jax.devices(plat)[0]
        except Exception as e:
            raise BackendUnavailable(f"jax {jax.__version__}: no {plat} device ({type(e).__name__}: {e})") from None
        if not jax.config.jax_enable_x64:
            raise BackendUnavailable("jax: float64 needs jax.config.update('jax_enable_x64', True)")
        dts = {d: getattr(jnp, d) for d in ("float32", "float16", "bfloat16")}
        return Backend(name, device, jax.__version__, lambda a: jax.device_put(jnp.asarray(a), dev), np.asarray, dts,
                       lambda a, dt: a.astype(dt))
    # cupy
    why = gpu_unavailable_reason()
    if why:
        raise BackendUnavailable(why)
    import cupy

    return Backend(name, device, cupy.__version__, cupy.asarray, cupy.asnumpy,
                   {"float32": cupy.float32, "float16": cupy.float16}, lambda a, dt: a.astype(dt))


def default_device(name: str) -> str:
    """cuda for CuPy, cpu for every other backend."""
    return "cuda" if name == "cupy" else "cpu"


def unavailable_reason(name: str, device: str = "cpu") -> str | None:
    """Why ``name`` cannot run on ``device`` here, or None when it can."""
    try:
        with _jax_x64() if name == "jax" and _importable("jax") else contextlib.nullcontext():
            load_backend(name, device)
    except BackendUnavailable as e:
        return str(e)
    return None


def _importable(module: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(module) is not None


# ----------------------------------------------------------------------------- the comparison
def select_cases(cases: list, limit: int | None) -> list:
    """``limit`` cases spread evenly over the corpus (every case when None)."""
    if limit is None or limit >= len(cases):
        return cases
    if limit < 1:
        return []
    idx = np.unique(np.linspace(0, len(cases) - 1, limit).round().astype(int))
    return [cases[i] for i in idx]


def _pairs(spec, a: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Views of the first and second member of every rotated pair (spec.layout)."""
    from .tolerance import pair_views

    return pair_views(a, spec.rotary_dim, spec.layout)


def _unit_input(spec, shape: tuple[int, ...]) -> np.ndarray:
    """x with (1, 0) in every rotated pair and 0 in the tail: ``apply`` of it returns its tables.

    Per pair (a, b) -> (a c' - b s', b c' + a s') with c' = c * scale, s' = s * scale;
    at (1, 0) both outputs are exact: (c', s').
    """
    u = np.zeros(shape)
    _pairs(spec, u)[0][...] = 1.0
    return u


def _propagated(spec, x: np.ndarray, dc: np.ndarray, ds: np.ndarray) -> np.ndarray:
    """Per output element: |a| |dc| + |b| |ds| (first of a pair), |b| |dc| + |a| |ds| (second); tail 0.

    The change of the exact rotation (a c - b s, b c + a s) when its tables move by (dc, ds).
    """
    prop = np.zeros(np.broadcast_shapes(x.shape, dc.shape[:-1] + (x.shape[-1],)))
    a, b = (np.abs(v) for v in _pairs(spec, x))
    p1, p2 = _pairs(spec, prop)
    p1[...] = a * dc + b * ds
    p2[...] = b * dc + a * ds
    return prop


def _compare_case(be: Backend, case: dict[str, Any], arrays: dict[str, np.ndarray]) -> dict[str, Any]:
    """Per-group max ulp and [identical, elements] for one golden case.

    The chain, each link on its own: the values (cos, sin, angles, xPos scale)
    against NumPy's; the backend's rotation tables (c', s') against the exact
    product of its own cos/sin and scale ("tables"); its ``apply`` against
    NumPy's, end to end ("apply", reported) and less what the difference of the
    two sides' tables propagates ("apply_net").
    """
    from ropeconf.golden_data import corpus
    from ropeconf.reference import RopeSpec, angles, apply, cos_sin, inv_freq, xpos_scale

    from .tolerance import pair_norm

    spec = RopeSpec.from_dict(case["spec"])
    pos = arrays["positions"]
    pb = be.asarray(pos)
    ulp = {g: 0.0 for g in GROUPS}
    ident = {g: [0, 0] for g in GROUPS if g != "apply_net"}
    rot_miss = 0  # apply elements that differ from NumPy although both sides rotated by identical tables

    def host(v) -> np.ndarray:
        return np.asarray(be.to_numpy(v))

    def add(group: str, got: np.ndarray, ref: np.ndarray, scale: np.ndarray) -> np.ndarray:
        if got.shape != ref.shape:
            raise ValueError(f"{group}: shape {got.shape} != expected {ref.shape}")
        ulp[group] = max(ulp[group], ulp_diff(got, ref, scale))
        ident[group][0] += _identical(got, ref)
        ident[group][1] += ref.size
        return got

    c, s = cos_sin(spec, pos)
    cb, sb = (host(v) for v in cos_sin(spec, pb))
    add("cos_sin", cb, c, c)
    add("cos_sin", sb, s, s)
    a = angles(spec, pos)
    add("angles", host(angles(spec, pb)), a, a)
    roles = ("query", "key") if spec.xpos else ("query",)
    # the scale apply multiplies cos/sin by: xPos (per role) times the attention factor (docs/spec.md)
    att = float(inv_freq(spec, int(np.max(pos)) + 1)[1]) if pos.size else 1.0
    scale_b: dict[str, Any] = {}
    for role in roles:
        mb = None
        if spec.xpos:
            m = xpos_scale(spec, pos, role=role)
            mb = add("xpos", host(xpos_scale(spec, pb, role=role)), m, m)
        if att != 1.0:
            mb = att if mb is None else mb * att
        scale_b[role] = mb

    x_shape = np.asarray(arrays[f"x_{corpus.INPUT_DTYPES[0]}"]).shape
    u = _unit_input(spec, x_shape)
    delta = {}
    for role in roles:  # the rotation tables (c', s') each side used, read back through apply itself
        (c1, s1), (cb1, sb1) = _pairs(spec, apply(spec, u, pos, role=role)), \
            _pairs(spec, host(apply(spec, be.asarray(u), pb, role=role)))
        mb = scale_b[role]
        ec, es = (cb, sb) if mb is None else (cb * mb, sb * mb)  # heads axis: (batch, seq, h) -> (batch, 1, ...)
        ec, es = (np.broadcast_to(np.expand_dims(v, -3), cb1.shape) for v in (ec, es))
        add("tables", np.ascontiguousarray(cb1), ec, ec)
        add("tables", np.ascontiguousarray(sb1), es, es)
        delta[role] = (np.abs(cb1 - c1), np.abs(sb1 - s1))
    for dt in corpus.INPUT_DTYPES:
        x64 = np.asarray(corpus.input_array(arrays, dt), dtype=np.float64)
        xb = be.asarray(x64)
        if dt in be.dtypes:
            xb = be.astype(xb, be.dtypes[dt])  # exact: x64 holds values of dt
        for role in roles:
            y = apply(spec, x64, pos, role=role)
            norm = pair_norm(y, spec.rotary_dim, spec.layout)
            yb = add("apply", host(apply(spec, xb, pb, role=role)), y, norm)
            prop = _propagated(spec, x64, *delta[role])
            rot_miss += int(np.count_nonzero((yb != y) & (prop == 0)))
            net = np.maximum(ulp_array(yb, y, norm)
                             - prop / np.spacing(np.maximum(np.abs(norm), np.finfo(np.float64).tiny)), 0.0)
            ulp["apply_net"] = max(ulp["apply_net"], float(np.max(net)) if net.size else 0.0)
    return {"ulp": ulp, "identical": ident, "rotation_mismatch": rot_miss}


def parity(backend: str, device: str = "cpu", golden_dir: str | None = None, limit: int | None = None,
           ) -> dict[str, Any]:
    """``backend`` on ``device`` vs NumPy over the golden corpus (``limit``: that many cases, spread evenly).

    Returns backend, device, version, bound_ulp, per-case records (id; ulp per
    group; [identical, elements] per group except apply_net; max_ulp over the
    gated groups; error), totals per group (max_ulp, identical, elements),
    max_ulp, errors, ok, seconds.  Raises BackendUnavailable when the backend
    cannot run here.
    """
    from ropeconf.golden_data import corpus

    t0 = time.time()
    with _jax_x64() if backend == "jax" and _importable("jax") else contextlib.nullcontext():
        be = load_backend(backend, device)
        man = corpus.read_manifest(golden_dir)
        records = []
        for case in select_cases(man["cases"], limit):
            arrays = corpus.load_case(golden_dir, case)
            rec: dict[str, Any] = {"id": case["id"], "error": None}
            try:
                rec.update(_compare_case(be, case, arrays))
                rec["max_ulp"] = max(rec["ulp"][g] for g in GATED)
            except Exception as e:  # the reference failed on this backend: a finding, not a skip
                rec.update(ulp={g: float("inf") for g in GROUPS}, identical={g: [0, 0] for g in GROUPS
                                                                             if g != "apply_net"},
                           rotation_mismatch=0, max_ulp=float("inf"), error=f"{type(e).__name__}: {e}")
            records.append(rec)
    totals = {}
    for g in GROUPS:
        totals[g] = {"max_ulp": max((r["ulp"][g] for r in records), default=0.0)}
        if g != "apply_net":
            totals[g]["identical"] = sum(r["identical"][g][0] for r in records)
            totals[g]["elements"] = sum(r["identical"][g][1] for r in records)
    worst = max((r["max_ulp"] for r in records), default=0.0)
    return {"backend": backend, "device": device, "version": be.version, "numpy": np.__version__,
            "bound_ulp": BOUND_ULP, "cases": records, "totals": totals, "max_ulp": worst,
            "errors": sum(r["error"] is not None for r in records),
            "rotation_mismatch": sum(r["rotation_mismatch"] for r in records),
            "ok": bool(records) and worst <= BOUND_ULP, "seconds": time.time() - t0}


# ----------------------------------------------------------------------------- the command
def _pct(ident: int, n: int) -> str:
    return f"{100.0 * ident / n:.1f}%" if n else "n/a"


def _fmt_ulp(v: float) -> str:
    return "inf" if v == float("inf") else f"{v:.2f}"


def render(res: dict[str, Any], top: int = 10) -> str:
    """The per-case table (worst cases first, ``top`` rows) and the totals."""
    recs = sorted(res["cases"], key=lambda r: (-r["max_ulp"], r["id"]))
    idw = max([len("case")] + [len(r["id"]) for r in recs[:top]])
    lines = [f"parity: {res['backend']} {res['version']} ({res['device']}) vs NumPy {res['numpy']}, "
             f"{len(recs)} golden cases, bound {res['bound_ulp']:g} ulp on "
             + ", ".join(GROUP_LABEL[g] for g in GATED) + " (apply end to end: reported)",
             f"{'case':{idw}}  " + "  ".join(f"{GROUP_LABEL[g]:>9}" for g in GROUPS) + "  bit-identical"]
    for r in recs[:top]:
        n_id = sum(v[0] for v in r["identical"].values())
        n = sum(v[1] for v in r["identical"].values())
        row = f"{r['id']:{idw}}  " + "  ".join(f"{_fmt_ulp(r['ulp'][g]):>9}" for g in GROUPS)
        lines.append(row + f"  {n_id}/{n}" + (f"  ERROR {r['error']}" if r["error"] else ""))
    if len(recs) > top:
        lines.append(f"... {len(recs) - top} more cases (gated max ulp per case <= "
                     f"{_fmt_ulp(recs[top]['max_ulp'])})")
    lines.append("totals (max ulp; bit-identical elements):")
    for g in GROUPS:
        t = res["totals"][g]
        ident = (f"bit-identical {_pct(t['identical'], t['elements']):>6} ({t['identical']}/{t['elements']})"
                 if "identical" in t else "after the propagated table difference")
        lines.append(f"  {GROUP_LABEL[g]:9} max {_fmt_ulp(t['max_ulp']):>5} ulp   {ident}"
                     + ("" if g in GATED else "   (not gated)"))
    lines.append(f"  apply elements that differ although their tables are bit-identical: {res['rotation_mismatch']}")
    over = sum(r["max_ulp"] > res["bound_ulp"] for r in recs)
    verdict = "OK" if res["ok"] else (f"EXCEEDS the bound in {over} case(s)" if recs else "no case compared")
    if res["errors"]:
        verdict += f"; the reference raised in {res['errors']} case(s)"
    lines.append(f"-> {verdict} (max {_fmt_ulp(res['max_ulp'])} ulp, {res['seconds']:.1f} s)")
    return "\n".join(lines)


def _positive_int(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if v < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {v}")
    return v


def add_parser(sub) -> argparse.ArgumentParser:
    """Register ``ropeconf parity`` on the CLI's subparsers."""
    p = sub.add_parser("parity", help="the reference on an array backend/device vs NumPy, ulp per golden case")
    p.add_argument("--backend", required=True, choices=BACKENDS,
                   help="array namespace to run the reference on (strict: array_api_strict; jax runs with x64)")
    p.add_argument("--device", default=None, choices=DEVICES,
                   help="device of the backend's arrays (default: cpu; cuda for cupy)")
    p.add_argument("--golden-dir", metavar="DIR", help="golden corpus (default: the one in the package)")
    p.add_argument("--limit", type=_positive_int, metavar="N",
                   help="compare N cases spread evenly over the corpus (default: every case)")
    p.add_argument("--top", type=_positive_int, default=10, metavar="N",
                   help="table rows, worst cases first (default 10)")
    p.add_argument("--json", metavar="PATH", help="write the per-case results as JSON")
    return p


def cmd_parity(args: argparse.Namespace) -> int:
    """0 every case within 2 ulp; 1 a case exceeds it or errors; 2 the backend cannot run here."""
    try:
        res = parity(args.backend, getattr(args, "device", None) or default_device(args.backend),
                     getattr(args, "golden_dir", None), getattr(args, "limit", None))
    except BackendUnavailable as e:
        print(f"parity: cannot run: {e}", file=sys.stderr)
        return 2
    print(render(res, getattr(args, "top", 10)))
    if getattr(args, "json", None):
        with open(args.json, "w") as f:
            json.dump(res, f, indent=1, default=lambda v: None)
    return 0 if res["ok"] else 1
