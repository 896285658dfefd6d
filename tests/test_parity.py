"""The reference on every array namespace: ``ropeconf parity`` (conformance/parity.py).

NumPy, array_api_strict, torch (CPU, float64) and JAX (CPU, x64) reproduce
NumPy's reference on the golden corpus within 2 ulp (docs/accuracy.md,
"Reference on every array backend").  NumPy, array_api_strict and torch run
the whole corpus (240 cases); JAX runs 60 cases spread evenly over it (every
variant included, the worst case of the whole corpus among them): its eager
ops compile once per new shape, ~0.1 s each, so the whole corpus costs 30-70 s
on two cores.  ``ropeconf parity --backend jax`` runs all of it.
"""

from __future__ import annotations

import contextlib
import importlib.util

import numpy as np
import pytest

from ropeconf.conformance import parity as par
from ropeconf.conformance.cli import main
from ropeconf.conformance.tolerance import pair_norm
from ropeconf.golden_data import corpus
from ropeconf.reference import RopeSpec, angles, apply, cos_sin, xpos_scale

N_CASES = len(corpus.read_manifest()["cases"])
LIMIT = {"numpy": None, "strict": None, "torch": None, "jax": 60}
MODULE = {"numpy": "numpy", "strict": "array_api_strict", "torch": "torch", "jax": "jax"}


def _need(backend: str) -> None:
    if importlib.util.find_spec(MODULE[backend]) is None:
        pytest.skip(f"{MODULE[backend]} is not installed (pip install -r requirements/test.txt)")


@pytest.mark.parametrize("backend", ["numpy", "strict", "torch", "jax"])
def test_backend_reproduces_numpy_within_2_ulp_on_the_golden_corpus(backend):
    _need(backend)
    res = par.parity(backend, "cpu", limit=LIMIT[backend])
    assert len(res["cases"]) == (N_CASES if LIMIT[backend] is None else LIMIT[backend])
    assert res["errors"] == 0, [r["error"] for r in res["cases"] if r["error"]][:3]
    worst = sorted(res["cases"], key=lambda r: -r["max_ulp"])[:3]
    assert res["ok"], [(r["id"], r["ulp"]) for r in worst]
    tot = res["totals"]
    for g in par.GATED:
        assert tot[g]["max_ulp"] <= par.BOUND_ULP, (g, tot[g])
    # exactly rounded operations are bit-identical on every backend: the angle p * omega (one product of
    # the same doubles), the tables c * scale, and the rotation wherever its tables are identical
    for g in ("angles", "tables"):
        assert tot[g]["identical"] == tot[g]["elements"] > 0, (g, tot[g])
    assert res["rotation_mismatch"] == 0
    if backend in ("numpy", "strict"):  # the same ufuncs (array_api_strict wraps NumPy): bit-identical throughout
        for g, t in tot.items():
            assert t["max_ulp"] == 0.0, (g, t)
            if "identical" in t:
                assert t["identical"] == t["elements"], (g, t)


def test_results_stay_in_the_callers_namespace():
    """cos_sin, angles, xpos_scale and apply return float64 arrays of their inputs' namespace."""
    import array_api_compat

    spec = RopeSpec(head_dim=16, xpos=True, layout="interleaved")
    pos = np.array([[0, 3, 7], [1, 2, 900]], dtype=np.int64)
    x = np.random.default_rng(0).standard_normal((2, 1, 3, 16))
    conv = {}
    if importlib.util.find_spec("array_api_strict"):
        import array_api_strict as xs

        conv["strict"] = (xs.asarray, np.from_dlpack)
    if importlib.util.find_spec("torch"):
        import torch

        conv["torch"] = (torch.asarray, lambda t: t.numpy())
    if importlib.util.find_spec("jax"):
        import jax.numpy as jnp

        conv["jax"] = (jnp.asarray, np.asarray)
    if not conv:
        pytest.skip("none of array_api_strict, torch, jax is installed")
    ref = (*cos_sin(spec, pos), angles(spec, pos), xpos_scale(spec, pos, role="key"), apply(spec, x, pos))
    for name, (to, back) in conv.items():
        with par._jax_x64() if name == "jax" else contextlib.nullcontext():
            pb, xb = to(pos), to(x)
            got = (*cos_sin(spec, pb), angles(spec, pb), xpos_scale(spec, pb, role="key"), apply(spec, xb, pb))
            scales = ref[:4] + (pair_norm(ref[4], spec.rotary_dim, spec.layout),)  # apply: ulp of the pair norm
            for g, r, sc in zip(got, ref, scales):
                assert array_api_compat.array_namespace(g) is array_api_compat.array_namespace(pb), name
                assert str(g.dtype).endswith("float64"), (name, g.dtype)
                assert par.ulp_diff(back(g), r, sc) <= par.BOUND_ULP, name


@pytest.mark.filterwarnings("ignore:Explicitly requested dtype float64")
def test_jax_needs_x64_and_says_so():
    _need("jax")
    import jax
    import jax.numpy as jnp

    spec = RopeSpec(head_dim=8)
    prev = bool(jax.config.jax_enable_x64)
    jax.config.update("jax_enable_x64", False)
    try:
        with pytest.raises(TypeError, match="jax_enable_x64"):
            cos_sin(spec, jnp.arange(4))
    finally:
        jax.config.update("jax_enable_x64", prev)
    with par._jax_x64():
        c, _ = cos_sin(spec, jnp.arange(4))
        assert c.dtype == jnp.float64
    assert bool(jax.config.jax_enable_x64) == prev  # parity restores the caller's setting


def _plant_4_ulp_in_strict_cos(monkeypatch):
    xs = pytest.importorskip("array_api_strict", reason="array_api_strict is not installed")
    orig = xs.cos

    def cos_plus_4_ulp(x):
        a = np.from_dlpack(orig(x)).copy()
        for _ in range(4):
            a = np.nextafter(a, np.inf)
        return xs.asarray(a)

    monkeypatch.setattr(xs, "cos", cos_plus_4_ulp)


def test_a_planted_4_ulp_difference_is_detected(monkeypatch):
    _plant_4_ulp_in_strict_cos(monkeypatch)
    res = par.parity("strict", "cpu", limit=4)
    assert not res["ok"]
    assert res["totals"]["cos_sin"]["max_ulp"] >= 3
    assert all(r["max_ulp"] > par.BOUND_ULP for r in res["cases"])


def test_a_wrong_rotation_is_not_absorbed_as_a_table_difference(monkeypatch):
    """apply-net discounts what the tables' difference explains; the tables are checked against the backend's
    own cos/sin, so a rotation that goes wrong on one backend (here: the sine's sign) still fails."""
    xs = pytest.importorskip("array_api_strict", reason="array_api_strict is not installed")
    from ropeconf.reference import rotary

    orig = rotary._rotate

    def flipped(xp, spec, x, c, s, out=None):
        return orig(xp, spec, x, c, -s if xp is xs else s, out)

    monkeypatch.setattr(rotary, "_rotate", flipped)
    res = par.parity("strict", "cpu", limit=2)
    assert not res["ok"]
    assert res["totals"]["tables"]["max_ulp"] > par.BOUND_ULP


def test_ulp_helpers():
    a = np.array([1.0, 1.0, np.nan, np.nan, np.inf])
    b = np.array([1.0, np.nextafter(1.0, 2.0), np.nan, 0.0, np.inf])
    d = par.ulp_array(a, b, b)
    assert d[0] == 0 and d[1] == pytest.approx(1.0) and d[2] == 0 and d[3] == np.inf and d[4] == 0
    assert par.ulp_diff(a[:2], b[:2], b[:2]) == pytest.approx(1.0)
    assert par.select_cases(list(range(240)), 3) == [0, 120, 239]
    assert par.select_cases(list(range(5)), None) == list(range(5))


# ----------------------------------------------------------------------------- the CLI and its exit codes
def test_cli_exit_0_within_the_bound(capsys):
    assert main(["parity", "--backend", "numpy", "--limit", "3"]) == 0
    out = capsys.readouterr().out
    assert "3 golden cases" in out and "-> OK" in out


def test_cli_exit_1_when_a_case_exceeds_the_bound(monkeypatch, capsys, tmp_path):
    _plant_4_ulp_in_strict_cos(monkeypatch)
    js = tmp_path / "p.json"
    assert main(["parity", "--backend", "strict", "--limit", "3", "--json", str(js)]) == 1
    assert "EXCEEDS the bound in 3 case(s)" in capsys.readouterr().out
    import json

    assert len(json.loads(js.read_text())["cases"]) == 3


@pytest.mark.skipif(par.gpu_unavailable_reason() is None, reason="CuPy and a CUDA device are present here")
def test_cli_exit_2_when_the_backend_cannot_run_here(capsys):
    assert main(["parity", "--backend", "cupy"]) == 2
    assert "cannot run" in capsys.readouterr().err
    assert main(["parity", "--backend", "numpy", "--device", "cuda"]) == 2
    assert "CPU only" in capsys.readouterr().err
    assert main(["gpu-parity"]) == 2  # the alias keeps its exit code without a GPU
