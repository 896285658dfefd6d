"""KerasHub adapters (adapters/keras_hub.py): keras-torch, keras-jax, keras-tf.

Keras fixes its backend at import, so every backend runs in its own
subprocess (``KERAS_BACKEND=<backend> python -c SCRIPT``).  The three
subprocesses are started together once per module; each runs every check of
its backend in one go (importing keras/keras_hub costs ~5-10 s) and prints one
JSON line; its output arrays go to an .npz so the backends can be compared
with each other here.  A backend whose module or keras_hub is not installed
is skipped with the reason.

Declared limits (``why_unsupported``) need no keras and are checked in this
process.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import textwrap
from itertools import combinations

import numpy as np
import pytest

from ropeconf.adapters.keras_hub import KerasHubJax, KerasHubRotary, KerasHubTensorflow, KerasHubTorch
from ropeconf.conformance.tolerance import angle_error_factor, pair_norm
from ropeconf.reference import RopeSpec
from ropeconf.reference.variants import VARIANTS

U32 = 2.0 ** -24
U_BF16 = 2.0 ** -8
BACKENDS = {"torch": ("torch", KerasHubTorch), "jax": ("jax", KerasHubJax),
            "tensorflow": ("tensorflow", KerasHubTensorflow)}
TIMEOUT = 240

# Bound for default RoPE at float32, positions 0..15, |x| pair norm pn (|phi| <= 15 * omega_0 = 15):
#   angle: omega_i = powf(W, -2i/d) within 2 ulp (libm/XLA powf), p exact, product rounded once
#          -> |d phi| <= 2.5 u |phi| <= 37.5 u; a pair rotated by phi + d phi is off by <= pn |d phi|;
#   cos/sin in float32 within 1 ulp each, the rotation a*c - b*s (2 products, 1 sum) <= 3 sqrt(2) u pn,
#   output rounding 0.5 u |y|.  Sum <= (37.5 + 2 + 4.3 + 0.5) u pn = 44.3 u pn < 64 u pn.
DEFAULT_BOUND_ULPS = 64

SCRIPT = textwrap.dedent(r'''
    import json, os, sys, time, warnings
    warnings.filterwarnings("ignore")
    t0 = time.time()
    import numpy as np
    backend = os.environ["KERAS_BACKEND"]
    from ropeconf.adapters.keras_hub import KerasHubJax, KerasHubTensorflow, KerasHubTorch
    classes = {"torch": KerasHubTorch, "jax": KerasHubJax, "tensorflow": KerasHubTensorflow}
    ad = classes[backend]()
    out = {"backend": backend, "availability": ad.availability()}
    if out["availability"] is not None:
        print(json.dumps(out)); sys.exit(0)
    import keras
    from ropeconf.conformance.judge import judge_case, make_input
    from ropeconf.conformance.tolerance import pair_norm
    from ropeconf.reference import RopeSpec, apply
    from ropeconf.reference.variants import VARIANTS
    out.update(keras_backend=keras.config.backend(), version=ad.version(), checks={})
    arrays = {}

    def rng(start, seq=16, batch=2):
        return np.broadcast_to(start + np.arange(seq, dtype=np.int64), (batch, seq)).copy()

    # 1. default RoPE, float32, positions 0..15: error / (u * pair norm)
    spec = RopeSpec(head_dim=64)
    pos = rng(0)
    x = make_input(spec, 2, 2, 16, "float32", 0)
    y = np.asarray(ad.run(x, pos, spec, dtype="float32"), dtype=np.float64)
    ref = np.asarray(apply(spec, x.astype(np.float64), pos))
    out["default_f32_short_ulps"] = float(np.max(np.abs(y - ref) / (2.0 ** -24 * pair_norm(ref, 64, "half"))))
    out["default_f32_short_dtype_ok"] = bool(y.shape == x.shape)

    # 2. outputs for the cross-backend comparison (one fixed input per case)
    arb = np.array([[3, 1, 7, 100000, 0, 5000, 2, 9] * 2, [9, 2, 5000, 0, 100000, 7, 1, 3] * 2], dtype=np.int64)
    cases = {"default_short": ("default", rng(0)), "default_long": ("default", rng(100000)),
             "default_arbitrary": ("default", arb), "linear_long": ("linear", rng(100000)),
             "dynamic_long": ("dynamic", rng(100000)), "yarn_long": ("yarn", rng(100000)),
             "llama3_long": ("llama3", rng(100000)), "longrope_long": ("longrope", rng(100000)),
             "longrope_short": ("longrope", rng(0))}
    for name, (variant, p) in cases.items():
        sp = VARIANTS[variant].spec(head_dim=64)
        for dt in ("float32", "bfloat16"):
            xi = make_input(sp, p.shape[0], 2, p.shape[1], dt, 7)
            yi = np.asarray(ad.run(xi, p, sp, dtype=dt), dtype=np.float64)
            arrays[f"{name}__{dt}"] = yi
            arrays[f"{name}__{dt}__ref"] = np.asarray(apply(sp, xi.astype(np.float64), p))
            arrays[f"{name}__{dt}__pos"] = p

    # 3. the mapping conforms where the library's semantics match the reference (short positions,
    #    and across the LongRoPE switch); dynamic is the known divergence
    for variant, start in (("default", 0), ("theta500k", 0), ("linear", 0), ("yarn", 0), ("llama3", 0),
                           ("longrope", 4080), ("longrope", 4081), ("dynamic", 0)):
        sp = VARIANTS[variant].spec(head_dim=64)
        for dt in ("float32", "bfloat16"):
            r = judge_case(ad, sp, rng(start), dtype=dt, seed=1)
            out["checks"][f"{variant}@{start}:{dt}"] = [r.outcome, r.max_ratio]

    # 5. stateful: one instance per spec, its layer built once per dtype and reused by every call
    from ropeconf.conformance.sources import run_scenario
    inst = ad.instance(RopeSpec(head_dim=64), "float32")
    x1 = make_input(RopeSpec(head_dim=64), 1, 2, 4, "float32", 0)
    inst.run(x1, np.arange(4)[None]); first = inst.layers["float32"]
    inst.run(x1[:, :, :1], np.array([[4]])); inst.run(x1.astype(np.float32), np.array([[9, 2, 7, 1]]))
    out["instance_reuses_layer"] = inst.layers["float32"] is first and len(inst.layers) == 1

    def scen(kind, specs, calls):
        return {"kind": kind, "instances": specs, "calls": [
            {"instance": c[0], "positions": c[1], "dtype": c[2], "role": "query", "seed": k + 1, "heads": 2}
            for k, c in enumerate(calls)]}

    out["stateful"] = {}
    for variant in ("default", "yarn", "llama3", "longrope"):
        sp = VARIANTS[variant].spec(head_dim=64).to_dict()
        seqs = {"decode": [(0, [list(range(100, 106))], "float32"), (0, [[106]], "float32"), (0, [[107]], "float32")],
                "dtype_switch": [(0, [list(range(4090, 4098))], "bfloat16"), (0, [list(range(4090, 4098))], "float32"),
                                 (0, [list(range(4090, 4098))], "bfloat16")],
                "two_specs": [(0, [list(range(8))], "float32"), (1, [list(range(8))], "float32"),
                              (0, [list(range(8))], "float32")]}
        if variant != "longrope":
            seqs["ragged"] = [(0, [list(range(p, p + 4)) for p in (0, 7000)], "float32"), (0, [[4], [7004]], "float32")]
        for kind, calls in seqs.items():
            specs = [sp, {**sp, "rope_theta": sp.get("rope_theta", 10000.0) * 50}]
            rs = run_scenario(ad, scen(kind, specs, calls), "cpu")
            out["stateful"][f"{variant}:{kind}"] = [[r.outcome, r.max_ratio, r.message] for r in rs]

    # 4. the other backends' adapters refuse this process
    out["refusals"] = {n: c().availability() for n, c in classes.items() if n != backend}
    np.savez(sys.argv[1], **arrays)
    out["seconds"] = time.time() - t0
    print(json.dumps(out))
''')


def _installed(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


def _skip_reason(backend: str) -> str | None:
    module = BACKENDS[backend][0]
    missing = [m for m in (module, "keras", "keras_hub") if not _installed(m)]
    return f"{', '.join(missing)} not installed (KERAS_BACKEND={backend})" if missing else None


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    """Start one subprocess per installed backend (concurrently); {backend: (json, arrays) or skip text}."""
    tmp = tmp_path_factory.mktemp("keras_hub")
    procs, res = {}, {}
    for backend in BACKENDS:
        why = _skip_reason(backend)
        if why:
            res[backend] = why
            continue
        env = dict(os.environ, KERAS_BACKEND=backend, TF_CPP_MIN_LOG_LEVEL="3")
        npz = tmp / f"{backend}.npz"
        procs[backend] = (subprocess.Popen([sys.executable, "-c", SCRIPT, str(npz)], env=env, text=True,
                                           stdout=subprocess.PIPE, stderr=subprocess.PIPE), npz)
    for backend, (proc, npz) in procs.items():
        try:
            stdout, stderr = proc.communicate(timeout=TIMEOUT)
        except subprocess.TimeoutExpired:
            proc.kill()
            stdout, stderr = proc.communicate()
            pytest.fail(f"KERAS_BACKEND={backend} subprocess timed out after {TIMEOUT} s: {stderr[-2000:]}")
        assert proc.returncode == 0, f"KERAS_BACKEND={backend} subprocess failed:\n{stderr[-3000:]}"
        lines = [ln for ln in stdout.splitlines() if ln.startswith("{")]
        assert lines, f"no JSON from KERAS_BACKEND={backend}:\n{stdout[-2000:]}\n{stderr[-2000:]}"
        out = json.loads(lines[-1])
        arrays = dict(np.load(npz)) if npz.exists() else {}
        res[backend] = (out, arrays)
    return res


def _get(results, backend):
    r = results[backend]
    if isinstance(r, str):
        pytest.skip(r)
    out, arrays = r
    if out["availability"] is not None:
        pytest.skip(f"keras-{backend} unavailable: {out['availability']}")
    return out, arrays


@pytest.mark.parametrize("backend", list(BACKENDS))
def test_backend_in_its_own_process_and_version(results, backend):
    out, _ = _get(results, backend)
    print(f"keras-{backend}: keras_hub {out['version']}, subprocess {out['seconds']:.1f} s, "
          f"default f32 short: {out['default_f32_short_ulps']:.2f} u*pn, checks {out['checks']}")
    assert out["keras_backend"] == backend
    assert out["version"] not in ("?", "not installed")


@pytest.mark.parametrize("backend", list(BACKENDS))
def test_default_float32_short_positions_within_bound(results, backend):
    out, _ = _get(results, backend)
    assert out["default_f32_short_dtype_ok"]
    assert out["default_f32_short_ulps"] <= DEFAULT_BOUND_ULPS, out["default_f32_short_ulps"]


@pytest.mark.parametrize("backend", list(BACKENDS))
def test_mapped_variants_conform_and_dynamic_diverges(results, backend):
    out, _ = _get(results, backend)
    for key, (outcome, ratio) in out["checks"].items():
        if key.startswith("dynamic"):
            # KerasHub "dynamic" divides every frequency by s**(d/(d-2)); the reference (HF dynamic NTK)
            # is plain RoPE below L0: conformance/known/keras_hub.toml keras-hub-dynamic-is-uniform
            assert outcome == "diverges" and ratio > 10, (key, outcome, ratio)
        else:
            assert outcome == "conforms", (key, outcome, ratio)


@pytest.mark.parametrize("backend", list(BACKENDS))
def test_availability_refuses_other_backends(results, backend):
    out, _ = _get(results, backend)
    for other, why in out["refusals"].items():
        assert why, f"keras-{other} accepted a KERAS_BACKEND={backend} process"
        if _installed(BACKENDS[other][0]):
            assert f"needs {other!r}" in why and f"backend {backend!r}" in why, why


@pytest.mark.parametrize("adapter", [KerasHubTorch(), KerasHubJax(), KerasHubTensorflow()], ids=lambda a: a.name)
def test_availability_refuses_a_foreign_keras_backend_before_importing(adapter, monkeypatch):
    if "keras" in sys.modules:
        pytest.skip("keras is already imported in this process (its backend is fixed)")
    other = next(b for b in BACKENDS if b != adapter.backend)
    monkeypatch.setenv("KERAS_BACKEND", other)
    why = adapter.availability()
    assert why and f"needs {adapter.backend!r}" in why and f"KERAS_BACKEND={adapter.backend}" in why
    assert "keras" not in sys.modules


def test_backends_agree_to_float32_rounding(results):
    """Every pair of installed backends: same input, same spec -> the same output up to float32 rounding.

    The backends share the layer's code and differ only in their elementwise kernels (powf, log, sin/cos,
    division; XLA's are not always correctly rounded), so two backends may differ by what one
    implementation's float32 steps may commit, per the tolerance model: the per-pair angle budget
    F_i u |phi| with F_i = kappa_i (C_PHI + |ln omega0_i|) (tolerance.angle_error_factor: it covers the
    omega differences, amplified by Llama 3's smoothing band), plus cos/sin and the rotation (16 u):
    |a - b| <= pn (F_i u |phi| + 16 u).  At bfloat16 cos/sin are rounded to bfloat16 and the rotation runs
    in it, so a one-ulp flip of cos or sin costs 2**-8 more: + 4 u_bf16.
    """
    have = {b: _get_arrays(results, b) for b in BACKENDS}
    have = {b: a for b, a in have.items() if a is not None}
    if len(have) < 2:
        pytest.skip(f"fewer than two Keras backends available ({sorted(have) or 'none'})")
    from ropeconf.reference import angles

    worst = {}
    for (b1, a1), (b2, a2) in combinations(have.items(), 2):
        for key in a1:
            if key.endswith(("__ref", "__pos")):
                continue
            name, dt = key.split("__")
            variant = name.rsplit("_", 1)[0]
            spec = VARIANTS[variant].spec(head_dim=64)
            if variant == "dynamic":  # KerasHub's own angles: omega / s**(d/(d-2)), i.e. linear scaling
                spec = RopeSpec(head_dim=64, rope_type="linear", factor=spec.factor ** (64 / 62))
            ref, pos = a1[key + "__ref"], a1[key + "__pos"]
            pn = pair_norm(ref, 64, "half")
            phi = np.abs(np.asarray(angles(spec, pos))) * angle_error_factor(spec)   # (batch, seq, 32)
            phi = np.concatenate([phi, phi], axis=-1)[:, None]                        # (batch, 1, seq, 64)
            tol = pn * (U32 * phi + 16 * U32 + (4 * U_BF16 if dt == "bfloat16" else 0.0))
            r = float(np.max(np.abs(a1[key] - a2[key]) / tol))
            worst[f"{b1}-{b2}:{key}"] = r
            assert r <= 1.0, (b1, b2, key, r)
    assert worst
    print("worst |a-b|/bound per case:", json.dumps({k: round(v, 4) for k, v in sorted(worst.items())}))


def _get_arrays(results, backend):
    r = results[backend]
    if isinstance(r, str) or r[0]["availability"] is not None:
        return None
    return r[1]


# ------------------------------------------------------------------ declared limits (no keras needed)
ADAPTERS = [KerasHubTorch(), KerasHubJax(), KerasHubTensorflow()]
POS = np.broadcast_to(np.arange(8, dtype=np.int64), (1, 8))
UNSUPPORTED = [
    (RopeSpec(head_dim=64, layout="interleaved"), "float32", POS, "layout=interleaved"),
    (RopeSpec(head_dim=64, rotary_dim=32), "float32", POS, "partial rotation"),
    (RopeSpec(head_dim=64, xpos=True), "float32", POS, "xpos"),
    (VARIANTS["axial2d"].spec(head_dim=64), "float32", np.zeros((1, 8, 2), np.int64), "freqs_for=pixel"),
    (VARIANTS["axial2d"].spec(head_dim=64, freqs_for="lang"), "float32", np.zeros((1, 8, 2), np.int64),
     "axial positions"),
    (VARIANTS["mrope"].spec(head_dim=64), "float32", np.zeros((1, 8, 3), np.int64), "mrope_section"),
    (VARIANTS["ntk"].spec(head_dim=64), "float32", POS, "rope_type=ntk"),
    (VARIANTS["constant"].spec(head_dim=64), "float32", POS, "freqs_for=constant"),
    (RopeSpec(head_dim=64), "float64", POS, "dtype=float64"),
    (RopeSpec(head_dim=64), "float32", POS, "device=cuda"),
    (VARIANTS["yarn-deepseek"].spec(head_dim=64), "float32", POS, "mscale"),
    (VARIANTS["yarn"].spec(head_dim=64, attention_factor=1.5), "float32", POS, "attention_factor"),
    (VARIANTS["longrope"].spec(head_dim=64, attention_factor=1.5), "float32", POS, "attention_factor"),
    (VARIANTS["longrope-position"].spec(head_dim=64), "float32", POS, "longrope_switch"),
    (VARIANTS["longrope"].spec(head_dim=64), "float32", np.array([[0, 5, 2, 4096]]), "positions= argument raises"),
]


@pytest.mark.parametrize("adapter", ADAPTERS, ids=lambda a: a.name)
@pytest.mark.parametrize("spec,dtype,pos,text", UNSUPPORTED, ids=[u[3] for u in UNSUPPORTED])
def test_unsupported_specs_are_declared(adapter, spec, dtype, pos, text):
    device = "cuda" if text == "device=cuda" else "cpu"
    why = adapter.why_unsupported(spec, dtype, device, pos)
    assert why is not None and text in why, why


@pytest.mark.parametrize("adapter", ADAPTERS, ids=lambda a: a.name)
def test_supported_specs_are_not_refused(adapter):
    for variant in ("default", "theta500k", "linear", "dynamic", "yarn", "yarn-notrunc", "llama3", "longrope"):
        spec = VARIANTS[variant].spec(head_dim=64)
        for dtype in ("float32", "float16", "bfloat16"):
            assert adapter.why_unsupported(spec, dtype, "cpu", POS) is None, (variant, dtype)
    # longrope with one shared offset goes through start_index, so it is supported
    assert adapter.why_unsupported(VARIANTS["longrope"].spec(head_dim=64), "float32", "cpu", POS + 4090) is None


def test_names_env_and_mapping_without_keras():
    assert [(a.name, a.env, a.requires) for a in ADAPTERS] == [
        ("keras-torch", {"KERAS_BACKEND": "torch"}, ("torch", "keras_hub")),
        ("keras-jax", {"KERAS_BACKEND": "jax"}, ("jax", "keras_hub")),
        ("keras-tf", {"KERAS_BACKEND": "tensorflow"}, ("tensorflow", "keras_hub"))]
    assert all(a.distribution == "keras-hub" for a in ADAPTERS)
    base = KerasHubRotary()
    kind, kw = base.layer_kwargs(VARIANTS["dynamic"].spec(head_dim=64), "bfloat16")
    assert kind == "RotaryEmbedding" and kw["rope_type"] == "dynamic" and kw["scaling_factor"] == 4.0
    assert kw["dtype"] == "bfloat16" and kw["sequence_axis"] == 2 and kw["feature_axis"] == -1
    kind, kw = base.layer_kwargs(VARIANTS["llama3"].spec(head_dim=64), "float32")
    assert kind == "LlamaRotaryEmbedding" and kw["pretraining_sequence_length"] == 8192
    kind, kw = base.layer_kwargs(VARIANTS["longrope"].spec(head_dim=64), "float32")
    assert kind == "Phi3SuScaledRotaryEmbedding" and kw["max_sequence_length"] == 32 * 4096


def test_jax_shape_padding_leaves_real_rows_unchanged():
    """KerasHubJax pads shapes to buckets (jax recompiles per shape); padding must not change any real row."""
    pytest.importorskip("keras_hub", reason="keras-hub not installed")
    import json as _json
    import subprocess as _sp
    import sys as _sys

    code = (
        "import json, numpy as np\n"
        "from ropeconf.adapters.keras_hub import KerasHubJax\n"
        "from ropeconf.reference import RopeSpec\n"
        "a = KerasHubJax(); assert a.availability() is None, a.availability()\n"
        "x = np.random.default_rng(0).standard_normal((1, 3, 5, 16)).astype(np.float32)\n"
        "sp = RopeSpec(head_dim=16)\n"
        "res = []\n"
        "for pos in (np.arange(5)[None], np.array([[7, 3, 900, 2, 65000]])):\n"
        "    padded = a.run(x, pos, sp, dtype='float32')\n"
        "    xp, pp = a._pad(x, pos, sp)\n"
        "    assert xp.shape == (2, 4, 512, 16) and (pp[:1, :5] == pos).all()\n"
        "    # same layer on the unpadded input, bypassing the padding\n"
        "    a2 = KerasHubJax(); a2._pad = lambda x, p, s: (x, p)\n"
        "    res.append(bool(np.array_equal(padded, a2.run(x, pos, sp, dtype='float32'))))\n"
        "print(json.dumps(res))\n")
    r = _sp.run([_sys.executable, "-c", code], env={**__import__("os").environ, "KERAS_BACKEND": "jax"},
                capture_output=True, text=True, timeout=300)
    if "No module named 'jax'" in r.stderr:
        pytest.skip("jax not installed")
    assert r.returncode == 0, r.stderr[-2000:]
    assert _json.loads(r.stdout.strip().splitlines()[-1]) == [True, True]


@pytest.mark.parametrize("backend", list(BACKENDS))
def test_reused_layer_conforms_on_stateful_sequences(results, backend):
    """instance(): one layer per dtype, reused; decode, ragged rows, dtype switches and two live specs all
    conform (the layer holds no cache; the reference judges every call)."""
    out, _ = _get(results, backend)
    assert out["instance_reuses_layer"]
    assert len(out["stateful"]) == 15
    for name, rs in out["stateful"].items():
        assert rs and all(o == "conforms" for o, _, _ in rs), (name, rs)
