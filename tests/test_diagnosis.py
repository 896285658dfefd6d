"""Diagnosis (why a case diverges) and identify (what an implementation computes), docs/diagnosis.md.

Each planted bug is written independently in tests/toy_pkg/toy_rope/planted.py (a conventional
float32 RoPE with one convention error); the diagnosis must name that convention first, confirmed
on fresh calls.  Real registered findings are re-diagnosed through the real libraries.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from toy_rope.planted import planted

from ropeconf.conformance.adapter import FunctionAdapter, load_adapter
from ropeconf.conformance.diagnosis import HYPOTHESES, diagnose
from ropeconf.conformance.judge import judge_case
from ropeconf.reference import RopeSpec

SF = [1.0 + 0.02 * i for i in range(16)]
LF = [1.0 + 0.2 * i for i in range(16)]
SPECS = {
    "default": RopeSpec(head_dim=32, rope_theta=10000.0),
    "theta": RopeSpec(head_dim=32, rope_theta=500000.0),
    "partial": RopeSpec(head_dim=40, rotary_dim=32),
    "inter": RopeSpec(head_dim=32, layout="interleaved"),
    "linear": RopeSpec(head_dim=32, rope_type="linear", factor=4.0),
    "dynamic": RopeSpec(head_dim=32, rope_type="dynamic", factor=4.0, original_max_position_embeddings=64),
    "yarn": RopeSpec(head_dim=32, rope_type="yarn", factor=8.0, original_max_position_embeddings=512),
    "yarn-betas": RopeSpec(head_dim=32, rope_type="yarn", factor=8.0, original_max_position_embeddings=512,
                           beta_fast=16.0, beta_slow=2.0),
    "yarn-notrunc": RopeSpec(head_dim=32, rope_type="yarn", factor=8.0, original_max_position_embeddings=512,
                             truncate=False),
    "llama3": RopeSpec(head_dim=64, rope_type="llama3", factor=8.0, original_max_position_embeddings=512,
                       low_freq_factor=1.0, high_freq_factor=4.0),
    "longrope": RopeSpec(head_dim=32, rope_type="longrope", factor=16.0, original_max_position_embeddings=64,
                         short_factor=SF, long_factor=LF),
    "xpos": RopeSpec(head_dim=32, xpos=True),
}
POS = np.array([[3, 17, 40, 123, 512, 1000]])
LONG = np.array([[60, 61, 62, 63, 64, 65, 100, 300]])     # past the toy L0 = 64

# bug in planted.py -> (spec, positions, role, the hypothesis that must come first)
CASES = {
    "pairing": ("default", POS, "query", "pairing"),
    "output_order": ("inter", POS, "query", "output-order"),
    "positions_plus1": ("default", POS, "query", "positions+1"),
    "sin_flipped": ("default", POS, "query", "sin-sign"),
    "theta_default": ("theta", POS, "query", "theta-default"),
    "exponent_head_dim": ("partial", POS, "query", "exponent-head-dim"),
    "partial_last_dims": ("partial", POS, "query", "partial-last-dims"),
    "tail_zeroed": ("partial", POS, "query", "tail-zeroed"),
    "positions_bf16": ("default", np.array([[300, 301, 555, 1025, 4097]]), "query", "positions-bfloat16"),
    "positions_f16": ("default", np.array([[3000, 5001, 9999, 30001]]), "query", "positions-float16"),
    "cos_sin_bf16": ("default", POS, "query", "cos-sin-bfloat16"),
    "attention_missing": ("yarn", POS, "query", "attention-missing"),
    "attention_squared": ("yarn", POS, "query", "attention-squared"),
    "attention_sin_only": ("yarn", POS, "query", "attention-sin-only"),
    "linear_sqrt": ("linear", POS, "query", "linear-sqrt"),
    "ramp_inverted": ("yarn", POS, "query", "yarn-ramp-inverted"),
    "betas_swapped": ("yarn-betas", POS, "query", "yarn-betas-swapped"),
    "truncate_ignored": ("yarn-notrunc", POS, "query", "yarn-truncate"),
    "mscale_007": ("yarn", POS, "query", "yarn-mscale-0.07"),
    "dynamic_never_rescaled": ("dynamic", LONG, "query", "dynamic-never-rescaled"),
    "dynamic_len_plus": ("dynamic", LONG, "query", "dynamic-length+1"),
    "dynamic_as_ntk": ("dynamic", LONG, "query", "dynamic-as-ntk"),
    "dynamic_as_uniform": ("dynamic", LONG, "query", "dynamic-as-uniform"),
    "longrope_at_equal": ("longrope", np.array([[0, 5, 20, 63]]), "query", "longrope-switch-at-equal"),
    "llama3_reversed": ("llama3", POS, "query", "llama3-reversed"),
    "xpos_query_scale_for_keys": ("xpos", POS, "key", "xpos-query-scale-for-keys"),
    "xpos_centre_0": ("xpos", np.array([[0, 40, 80, 400]]), "query", "xpos-centre-0"),
}


@pytest.mark.parametrize("bug", sorted(CASES))
def test_each_planted_convention_is_diagnosed_first(bug):
    spec_key, pos, role, want = CASES[bug]
    spec = SPECS[spec_key]
    adapter = FunctionAdapter(planted((bug,)), f"planted-{bug}")
    r = judge_case(adapter, spec, pos, dtype="float32", role=role, heads=1)
    assert r.outcome == "diverges", (bug, r.message)
    correct = judge_case(FunctionAdapter(planted(()), "correct"), spec, pos, dtype="float32", role=role, heads=1)
    assert correct.outcome == "conforms", (bug, correct.message)   # the bug, not the toy, diverges
    d = diagnose(adapter, spec, pos, "float32", role=role)
    names = [e["hypothesis"] for e in d["explained_by"]]
    assert names and names[0] == want, (bug, d)
    assert d["explained_by"][0]["confirmed"].startswith("2/2")


def test_every_catalogued_hypothesis_except_the_generic_ones_has_a_planted_bug():
    tested = {c[3] for c in CASES.values()}
    generic = {n for n in HYPOTHESES if n.endswith("-ignored")} | {
        "positions-1", "cos-sin-float32", "angles-float32", "dynamic-length-1", "longrope-switch-per-position"}
    assert set(HYPOTHESES) - generic <= tested, set(HYPOTHESES) - generic - tested


def test_a_precision_convention_is_a_hint_not_a_bug():
    """float32 angles under float64 input: explained as a precision convention, with what to declare."""
    spec = SPECS["default"]
    pos = np.array([[1000, 20000, 300000, 1000000]])
    adapter = FunctionAdapter(planted((), dtypes=("float64",)), "float32-angles")
    r = judge_case(adapter, spec, pos, dtype="float64", heads=1)
    assert r.outcome == "diverges"
    d = diagnose(adapter, spec, pos, "float64")
    first = d["explained_by"][0]
    assert first["hypothesis"] == "angles-float32" and "angle_dtype='float32'" in first["hints"][0]
    declared = FunctionAdapter(planted((), dtypes=("float64",), angle_dtype="float32"), "declared")
    assert judge_case(declared, spec, pos, dtype="float64", heads=1).outcome == "conforms"


def test_rounded_tables_do_not_explain_a_few_unrotated_pairs():
    """Two lowest-frequency pairs left unrotated (ggml's IMROPE text tokens): small enough to hide under a
    bfloat16-table bound, but rounded tables would move every pair; the diagnosis must not name them."""
    base = planted(())

    def unrotated(x, positions, spec, role="query"):
        y = np.array(base(x, positions, spec, role))
        h = spec["rotary_dim"] // 2
        for j in (h - 2, h - 1):
            y[..., j], y[..., h + j] = x[..., j], x[..., h + j]
        return y

    unrotated.ropeconf_capabilities = base.ropeconf_capabilities
    spec, pos = RopeSpec(head_dim=128, rope_theta=1e6), np.array([[3, 17, 40, 123, 512, 1000, 4000]])
    adapter = FunctionAdapter(unrotated, "unrotated")
    assert judge_case(adapter, spec, pos, dtype="float32", heads=1).outcome == "diverges"
    d = diagnose(adapter, spec, pos, "float32")
    assert not any(e["hypothesis"].startswith("cos-sin-") for e in d["explained_by"]), d
    # and the planted bfloat16 tables still are (test_each_planted_convention_is_diagnosed_first)


def test_rounded_tables_do_not_explain_an_angle_error_spread_over_many_pairs():
    """ggml's float32 running-product angles (theta_j = p * theta_scale^j, theta *= theta_scale): an error
    over most pairs at long positions, as wide as a bfloat16-table bound, but a pure rotation of each pair
    (norms kept), where rounded tables move the norm as much as the direction."""
    def running_product(x, positions, spec, role="query"):
        r, h = spec["rotary_dim"], spec["rotary_dim"] // 2
        scale = np.float32(spec["rope_theta"]) ** np.float32(-2.0 / r)
        theta = np.empty(np.shape(positions) + (h,), np.float32)
        t = np.asarray(positions).astype(np.float32)
        for j in range(h):
            theta[..., j] = t
            t = (t * scale).astype(np.float32)
        x = np.asarray(x, np.float32)
        c, sn = np.cos(theta)[:, None], np.sin(theta)[:, None]
        x1, x2 = x[..., :h], x[..., h:r]
        return np.concatenate([x1 * c - x2 * sn, x2 * c + x1 * sn, x[..., r:]], axis=-1).astype(np.float32)

    running_product.ropeconf_capabilities = {"rope_types": ["default"], "layouts": ["half"],
                                             "dtypes": ["float32"], "partial": True}
    spec = RopeSpec(head_dim=64, rope_theta=1e4 * 4 ** (64 / 62))     # the NTK golden case's base
    pos = np.array([[500970, 386773, 904390, 57653, 271676, 268031, 401020, 448469],
                    [951364, 836284, 987027, 158875, 21472, 650453, 601382, 1019240]])
    adapter = FunctionAdapter(running_product, "running-product")
    r = judge_case(adapter, spec, pos, dtype="float32", heads=4, seed=0)
    assert r.outcome == "diverges" and 1 < r.max_ratio < 5, r.message
    d = diagnose(adapter, spec, pos, "float32")
    assert not any(e["hypothesis"].startswith("cos-sin-") for e in d["explained_by"]), d


def test_no_catalogued_convention_gives_the_error_structure():
    def scaled(x, positions, spec, role="query"):
        y = planted(())(x, positions, spec, role)
        return (y.astype(np.float64) * (1 + 1e-3 * np.arange(y.shape[-1]))).astype(x.dtype)

    scaled.ropeconf_capabilities = planted(()).ropeconf_capabilities
    d = diagnose(FunctionAdapter(scaled, "scaled"), SPECS["default"], POS, "float32")
    assert d["explained_by"] == [] and d["structure"]["pairs"] and "closest" in d


def test_the_run_reports_the_diagnosis_in_terminal_json_and_html(tmp_path, toy_env):
    import subprocess
    import sys

    out, html = tmp_path / "r.json", tmp_path / "r.html"
    r = subprocess.run([sys.executable, "-m", "ropeconf.conformance.cli", "run", "--adapter",
                        "toy_rope:buggy_adapter", "--variants", "default", "--dtype", "float32", "--json", str(out),
                        "--report", str(html)], capture_output=True, text=True, env=toy_env, timeout=600)
    assert r.returncode == 1
    assert "explained by: positions rounded to bfloat16" in r.stdout
    cell = json.loads(out.read_text())["adapters"][0]["cells"][0]
    assert cell["diagnosis"]["explained_by"][0]["hypothesis"] == "positions-bfloat16"
    assert "positions rounded to bfloat16" in html.read_text()
    r2 = subprocess.run([sys.executable, "-m", "ropeconf.conformance.cli", "run", "--adapter",
                         "toy_rope:buggy_adapter", "--variants", "default", "--dtype", "float32", "--no-diagnose",
                         "--json", str(out)], capture_output=True, text=True, env=toy_env, timeout=600)
    assert r2.returncode == 1 and "explained by" not in r2.stdout
    assert json.loads(out.read_text())["adapters"][0]["cells"][0]["diagnosis"] is None


# ----------------------------------------------------------------------------- real findings re-diagnosed
def test_rotary_torch_bf16_positions_finding_is_diagnosed():
    pytest.importorskip("rotary_embedding_torch")
    a = load_adapter("rotary-torch")
    spec = RopeSpec(head_dim=32, layout="interleaved")
    pos = np.arange(300, 308)[None]
    d = diagnose(a, spec, pos, "bfloat16")
    assert d["explained_by"][0]["hypothesis"] == "positions-bfloat16", d


def test_keras_dynamic_finding_is_diagnosed_as_uniform_scaling(toy_env):
    """KerasHub's "dynamic" divides every frequency by s^(d/(d-2)) (docs/findings/keras_hub.md)."""
    pytest.importorskip("keras_hub")
    import subprocess
    import sys

    code = ("import json, numpy as np\n"
            "from ropeconf.conformance.adapter import load_adapter\n"
            "from ropeconf.conformance.diagnosis import diagnose\n"
            "from ropeconf.reference import RopeSpec\n"
            "s = RopeSpec(head_dim=32, rope_type='dynamic', factor=4.0, original_max_position_embeddings=64)\n"
            "d = diagnose(load_adapter('keras-torch'), s, np.arange(100, 108)[None], 'float32')\n"
            "print(json.dumps(d))\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600,
                       env={**toy_env, "KERAS_BACKEND": "torch"})
    d = json.loads(r.stdout.strip().splitlines()[-1])
    assert d["explained_by"][0]["hypothesis"] == "dynamic-as-uniform", d


# ----------------------------------------------------------------------------- identify
IDENTIFY = {
    "default": RopeSpec(head_dim=64, rope_theta=500000.0),
    "linear": RopeSpec(head_dim=64, rope_type="linear", factor=4.0),
    "llama3": RopeSpec(head_dim=128, rope_type="llama3", factor=8.0, original_max_position_embeddings=8192,
                       low_freq_factor=1.0, high_freq_factor=4.0, rope_theta=500000.0),
    "yarn": RopeSpec(head_dim=64, rope_type="yarn", factor=8.0, original_max_position_embeddings=4096),
    "longrope": RopeSpec(head_dim=64, rope_type="longrope", factor=16.0, original_max_position_embeddings=4096,
                         short_factor=[1.0 + 0.01 * i for i in range(32)],
                         long_factor=[1.0 + 0.1 * i for i in range(32)]),
}


def _close(a, b, rel=1e-5):
    return abs(a - b) <= rel * abs(b)


@pytest.mark.parametrize("name", sorted(IDENTIFY))
def test_identify_recovers_the_spec_of_hf(name):
    pytest.importorskip("transformers")
    from ropeconf.conformance.identify import identify

    want = IDENTIFY[name]
    got = identify(load_adapter("hf"), want, "float32")
    assert got["identified"] and got["best"]["rope_type"] == want.rope_type, got
    spec = RopeSpec.from_dict(got["best"]["spec"])
    assert spec.rotary_dim == want.rotary_dim and spec.layout == want.layout
    if want.rope_type != "longrope":          # LongRoPE's theta is not identifiable apart from its factors
        assert _close(spec.rope_theta, want.rope_theta)
    if want.rope_type in ("linear", "llama3", "yarn"):
        assert _close(spec.factor, want.factor)
    if want.rope_type == "llama3":            # identifiable up to a common scale: L0/low and L0/high
        assert _close(spec.original_max_position_embeddings / spec.low_freq_factor, 8192.0, 1e-3)
        assert _close(spec.original_max_position_embeddings / spec.high_freq_factor, 2048.0, 1e-3)
    if want.rope_type in ("yarn", "longrope"):
        assert spec.original_max_position_embeddings == want.original_max_position_embeddings
    if want.rope_type == "longrope":
        assert np.allclose(np.array(spec.long_factor) / np.array(spec.short_factor),
                           np.array(want.long_factor) / np.array(want.short_factor), rtol=1e-4)


def test_identify_another_library_and_a_random_rotation():
    pytest.importorskip("rotary_embedding_torch")
    from ropeconf.conformance.identify import identify

    got = identify(load_adapter("rotary-torch"), RopeSpec(head_dim=32, layout="interleaved", rope_theta=1000.0),
                   "float32", long_len=4096)
    assert got["identified"] and got["layout"] == "interleaved" and _close(
        RopeSpec.from_dict(got["best"]["spec"]).rope_theta, 1000.0)

    def random_rotation(x, positions, spec):
        rng = np.random.default_rng(0)
        h = x.shape[-1] // 2
        ang = rng.uniform(-np.pi, np.pi, size=(int(positions.max()) + 1, h))[positions][:, None]
        c, s = np.cos(ang).astype(x.dtype), np.sin(ang).astype(x.dtype)
        x1, x2 = x[..., :h], x[..., h:]
        return np.concatenate([x1 * c - x2 * s, x2 * c + x1 * s], -1).astype(x.dtype)

    random_rotation.ropeconf_capabilities = {"dtypes": ["float32"], "positions": "arbitrary"}
    got = identify(FunctionAdapter(random_rotation, "random"), None, "float32", long_len=4096)
    assert not got["identified"] and got["residual"] > 1e3


def test_identify_reads_xpos_and_the_key_role():
    """rotary-embedding-torch with use_xpos: the scale base is fitted from the magnitudes, the key gets 1/scale."""
    pytest.importorskip("rotary_embedding_torch")
    from ropeconf.conformance.identify import identify

    want = RopeSpec(head_dim=32, layout="interleaved", xpos=True, xpos_scale_base=256.0)
    got = identify(load_adapter("rotary-torch"), want, "float32", long_len=4096)
    spec = RopeSpec.from_dict(got["best"]["spec"])
    assert got["identified"] and spec.xpos and _close(spec.xpos_scale_base, 256.0) and spec.xpos_center is None, got
    assert "xPos: inverse scale" in got["roles"]


def test_identify_says_when_positions_are_rounded_to_bfloat16(toy_env):
    """The toy's planted bug (positions formed in bfloat16): identified as plain RoPE with rounded positions,
    not as a length-dependent schedule."""
    from toy_rope import buggy_adapter

    from ropeconf.conformance.identify import identify, render

    got = identify(FunctionAdapter(buggy_adapter, "buggy"), RopeSpec(head_dim=64), "float32")
    assert got["identified"] and got["best"]["rope_type"] == "default", got
    assert got["positions"] == "rounded to bfloat16 before the angle" and not got["length_switch"]
    assert RopeSpec.from_dict(got["best"]["spec"]).rope_theta == 10000.0   # snapped to the round value
    assert "positions: rounded to bfloat16" in render(got)


def test_identify_a_textbook_float64_rope_with_float64_angles():
    """The plain NumPy float64 formula (Su et al. 2021): identified as default, theta snapped to 10000
    (the raw geometric fit is 1e-15 off, which at position 2^16 is beyond the float64 tolerance)."""
    from ropeconf.conformance.identify import identify

    def textbook(x, positions, spec):
        d = spec["rotary_dim"]
        inv = 1.0 / spec["rope_theta"] ** (np.arange(0, d, 2, dtype=np.float64) / d)
        ang = positions.astype(np.float64)[..., None] * inv
        c, s = np.cos(ang)[:, None], np.sin(ang)[:, None]
        x1, x2 = x[..., :d // 2], x[..., d // 2:d]
        return np.concatenate([x1 * c - x2 * s, x2 * c + x1 * s, x[..., d:]], -1)

    textbook.ropeconf_capabilities = {"dtypes": ["float64"], "positions": "arbitrary"}
    got = identify(FunctionAdapter(textbook, "textbook"), RopeSpec(head_dim=64), "float64")
    assert got["identified"] and got["best"]["rope_type"] == "default", got
    assert RopeSpec.from_dict(got["best"]["spec"]).rope_theta == 10000.0 and got["angles"] == "float64"


# ----------------------------------------------------------------------------- registry diagnoses
def test_a_registry_diagnosis_must_name_a_catalogued_hypothesis(tmp_path):
    from ropeconf.conformance import registry

    entry = ('[[divergence]]\nid = "x"\nadapter = "toy"\nlibrary = "toy"\nversions = "*"\nmatch = {}\n'
             'reason = "r"\nupstream = "u"\ndiagnosis = "@@"\n')
    good, bad = tmp_path / "good.toml", tmp_path / "bad.toml"
    good.write_text(entry.replace("@@", "pairing+positions-1"))
    bad.write_text(entry.replace("@@", "pairng"))
    assert registry.load([good])[0].diagnosis == "pairing+positions-1"
    with pytest.raises(registry.RegistryError, match="pairng.*names no catalogued hypothesis"):
        registry.load([bad])


def test_every_registry_diagnosis_is_catalogued():
    from ropeconf.conformance import registry
    from ropeconf.conformance.diagnosis import unknown_names

    entries = registry.load()
    assert all(not unknown_names(e.diagnosis) for e in entries if e.diagnosis)


def test_a_run_warns_when_a_known_case_is_diagnosed_otherwise(tmp_path, toy_env):
    """The registry says what explains an entry; a run that diagnoses something else says so (the
    entry's diagnosis is checked on every run, not written once and trusted)."""
    import subprocess
    import sys

    entry = ('[[divergence]]\nid = "toy-bf16"\nadapter = "toy_rope:buggy_adapter"\nlibrary = "toy-rope"\n'
             'versions = "*"\nmatch = {{ variant = "default" }}\nreason = "positions in bfloat16"\nupstream = "-"\n'
             'diagnosis = "{}"\n')
    out = {}
    for label in ("positions-bfloat16", "sin-sign"):
        f = tmp_path / f"{label}.toml"
        f.write_text(entry.format(label))
        js = tmp_path / f"{label}.json"
        r = subprocess.run([sys.executable, "-m", "ropeconf.conformance.cli", "run", "--adapter",
                            "toy_rope:buggy_adapter", "--variants", "default", "--dtype", "float32", "--known",
                            str(f), "--json", str(js), "--no-stateful"], capture_output=True, text=True,
                           env=toy_env, timeout=600)
        assert r.returncode == 0, r.stdout + r.stderr
        out[label] = json.loads(js.read_text())["adapters"][0]
    assert not out["positions-bfloat16"].get("warnings"), out["positions-bfloat16"]
    assert any("gives diagnosis 'sin-sign' but this run diagnosed positions-bfloat16" in w
               for w in out["sin-sign"]["warnings"]), out["sin-sign"]


def test_the_docs_list_every_catalogued_hypothesis():
    from pathlib import Path

    doc = (Path(__file__).resolve().parent.parent / "docs" / "diagnosis.md").read_text()
    missing = [n for n in HYPOTHESES if f"| `{n}` |" not in doc]
    assert not missing, f"docs/diagnosis.md lacks catalogue rows for {missing}"


def test_a_registry_diagnosis_tied_with_the_first_explanation_is_no_warning():
    """A LongRoPE factor of 1 makes "attention factor missing" and "its configured value ignored (default
    used)" the same output: an entry naming either is consistent with that case; a worse one is not."""
    from ropeconf.conformance import registry
    from ropeconf.conformance.runner import Classifier

    e = registry.Divergence("x", ("a",), "l", "*", {}, "r", "u", diagnosis="attention_factor-ignored")
    c = Classifier([e], "a", "1")
    tie = {"case_id": "c", "explained_by": [{"hypothesis": "attention-missing", "ratio": 0.11500000001},
                                            {"hypothesis": "attention_factor-ignored", "ratio": 0.115}]}
    assert c.check_diagnosis("x", tie) == []
    worse = {"case_id": "c", "explained_by": [{"hypothesis": "attention-missing", "ratio": 0.115},
                                              {"hypothesis": "attention_factor-ignored", "ratio": 0.5}]}
    assert "gives diagnosis 'attention_factor-ignored'" in c.check_diagnosis("x", worse)[0]
