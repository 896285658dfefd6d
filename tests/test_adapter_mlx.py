"""Apple MLX adapters (adapters/mlx.py: mlx-fast, mlx-lm): mapping, decoding instances, findings.

Runs only where MLX imports (``tox -e mlx``: requirements/mlx.txt; ``mlx[cpu]`` on Linux); the main .venv
has no MLX, so this module skips there.  The findings asserted at the end are the ones
docs/findings/mlx.md and conformance/known/mlx.toml record; each is reproduced through the suite's own
classification (the registry entry id is asserted).
"""

from __future__ import annotations

import dataclasses
import sys

import ml_dtypes
import numpy as np
import pytest

mx = pytest.importorskip("mlx.core", reason="MLX is not installed (tox -e mlx installs mlx[cpu], requirements/mlx.txt)")

from ropeconf.adapters.mlx import (MAX_POSITION, MlxFastRope, MlxLmRope, call_with_positions,  # noqa: E402
                                   mlx_lm_config, offset_plan, to_mx, to_numpy)
from ropeconf.conformance import registry  # noqa: E402
from ropeconf.conformance.adapter import Numerics, Unsupported  # noqa: E402
from ropeconf.conformance.config import RunConfig  # noqa: E402
from ropeconf.conformance.judge import judge, judge_case, make_input  # noqa: E402
from ropeconf.conformance.runner import Classifier, run_adapter  # noqa: E402
from ropeconf.conformance.sources import run_scenario  # noqa: E402
from ropeconf.reference import RopeSpec, apply, inv_freq  # noqa: E402
from ropeconf.reference.variants import VARIANTS  # noqa: E402

DTYPES = ("float64", "float32", "float16", "bfloat16")


@pytest.fixture(scope="module")
def mlx_lm():
    return pytest.importorskip("mlx_lm.models.rope_utils", reason="mlx-lm is not installed (requirements/mlx.txt)")


def _rows(starts, seq):
    return (np.asarray(starts)[:, None] + np.arange(seq)).astype(np.int64)


# ----------------------------------------------------------------------------- declarations, availability
def test_declarations():
    for a in (MlxFastRope(), MlxLmRope()):
        assert a.availability() is None
        assert a.capabilities.dtypes == DTYPES and a.capabilities.devices == ("cpu",)
        assert a.capabilities.layouts == ("half", "interleaved") and a.capabilities.partial
        assert a.capabilities.max_position == MAX_POSITION == 2 ** 24
        assert a.precision == Numerics(angle_dtype="float32")
    assert MlxFastRope().version() == mx.__version__ == "0.32.4"
    assert MlxLmRope().version() == "0.32.2"
    assert MlxFastRope().capabilities.rope_types == ("default", "linear")
    assert MlxFastRope().capabilities.freqs_for == ("lang", "custom")
    assert set(MlxLmRope().capabilities.rope_types) == {"default", "linear", "dynamic", "llama3", "yarn", "longrope"}


def test_unavailable_without_mlx(monkeypatch):
    """Without MLX the adapters are unavailable with the import error (the module itself imports fine)."""
    monkeypatch.setitem(sys.modules, "mlx.core", None)
    for a in (MlxFastRope(), MlxLmRope()):
        why = a.availability()
        assert why is not None and why.startswith("import mlx.core failed: ModuleNotFoundError"), why


@pytest.mark.parametrize("spec, pos, why", [
    (RopeSpec(head_dim=64), np.array([[MAX_POSITION + 1]]), "above max_position"),
    (RopeSpec(head_dim=64), np.array([[-1, 0]]), "negative positions"),
    (RopeSpec(head_dim=64, rope_type="ntk", factor=4.0), np.array([[0]]), "rope_type=ntk"),
    (VARIANTS["pixel"].spec(head_dim=64), np.array([[0]]), "freqs_for=pixel"),
    (VARIANTS["xpos"].spec(head_dim=64), np.array([[0]]), "xpos"),
])
def test_declared_limits(spec, pos, why):
    for a in (MlxFastRope(), MlxLmRope()):
        assert why in a.why_unsupported(spec, "float32", "cpu", pos)


def test_declared_limits_mlx_lm(mlx_lm):
    a = MlxLmRope()
    lr = VARIANTS["longrope"].spec(head_dim=64, layout="interleaved")
    assert "traditional=False" in a.why_unsupported(lr, "float32", "cpu")
    dyn = VARIANTS["dynamic"].spec(head_dim=64)
    assert a.why_unsupported(dyn, "float32", "cpu", _rows([3000, 3000], 4)) is None      # one start: int offset
    assert "one int offset" in a.why_unsupported(dyn, "float32", "cpu", _rows([3000, 5000], 4))
    assert "custom" in a.why_unsupported(VARIANTS["custom"].spec(head_dim=64), "float32", "cpu")


# ----------------------------------------------------------------------------- conversions and positions
@pytest.mark.parametrize("dtype", DTYPES)
def test_conversions_are_exact(dtype):
    rng = np.random.default_rng(0)
    if dtype == "bfloat16":  # every finite bfloat16 bit pattern
        bits = np.arange(0, 2 ** 16, dtype=np.uint16)
        x = bits.view(ml_dtypes.bfloat16)
        x = x[np.isfinite(x.astype(np.float32))]
    else:
        span = 4 if dtype == "float16" else 30
        x = (rng.standard_normal(4096) * 10.0 ** rng.integers(-span, span, 4096)).astype(dtype)
    y = to_numpy(to_mx(x, dtype), dtype)
    assert y.dtype == x.dtype and np.array_equal(y.view(np.uint8), x.view(np.uint8))


def test_float64_stays_float64():
    """mx.array of a float64 NumPy array is float32 unless the dtype is given: the adapter always gives it."""
    x = np.array([1.0 + 2.0 ** -40])
    assert mx.array(x).dtype == mx.float32
    assert to_mx(x, "float64").dtype == mx.float64 and to_numpy(to_mx(x, "float64"), "float64")[0] == x[0]


def test_offset_plan():
    assert offset_plan(_rows([5, 5], 3)) == ("scalar", 5)
    kind, starts = offset_plan(_rows([5, 900], 3))
    assert kind == "rows" and starts.dtype == np.int32 and starts.tolist() == [5, 900]
    assert offset_plan(np.array([[3, 1, 2]]))[0] == "tokens"
    assert offset_plan(np.zeros((1, 0), dtype=np.int64)) == ("scalar", 0)


@pytest.mark.parametrize("layout", ["half", "interleaved"])
def test_token_and_row_calls_equal_one_call_bitwise(layout):
    """The positions are exact integers in float32 however they reach the library (offset + arange), so a
    call per token column and per-row offsets give the bits of one call with an int offset."""
    spec = RopeSpec(head_dim=64, layout=layout, rope_theta=500000.0)
    fn = MlxFastRope().rope_fn(spec)
    x = make_input(spec, 2, 3, 6, "float32", 1)
    pos = _rows([1000, 1000], 6)
    whole = to_numpy(call_with_positions(fn, to_mx(x, "float32"), pos), "float32")
    by_token = [to_numpy(fn(to_mx(x[:, :, t:t + 1], "float32"), mx.array(pos[:, t].astype(np.int32))), "float32")
                for t in range(6)]
    assert np.array_equal(whole, np.concatenate(by_token, axis=2))
    ragged = _rows([1000, 77777], 6)
    rows = to_numpy(call_with_positions(fn, to_mx(x, "float32"), ragged), "float32")
    for b, s in enumerate((1000, 77777)):
        alone = to_numpy(fn(to_mx(x[b:b + 1], "float32"), s), "float32")
        assert np.array_equal(rows[b:b + 1], alone)
    shuffled = np.array([[1005, 3, 1000, 70000, 2 ** 20 - 1, 17]] * 2)
    out = to_numpy(call_with_positions(fn, to_mx(x, "float32"), shuffled), "float32")
    for t in range(6):
        col = to_numpy(fn(to_mx(x[:, :, t:t + 1], "float32"), int(shuffled[0, t])), "float32")
        assert np.array_equal(out[:, :, t:t + 1], col)


# ----------------------------------------------------------------------------- mx.fast.rope mapping
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("layout", ["half", "interleaved"])
@pytest.mark.parametrize("head_dim, rotary_dim", [(64, 64), (96, 64), (128, 128), (10, 8)])
def test_fast_conforms(dtype, layout, head_dim, rotary_dim):
    a = MlxFastRope()
    for spec in (RopeSpec(head_dim=head_dim, rotary_dim=rotary_dim, layout=layout),
                 RopeSpec(head_dim=head_dim, rotary_dim=rotary_dim, layout=layout, rope_type="linear", factor=4.0),
                 VARIANTS["custom"].spec(head_dim=head_dim, rotary_dim=rotary_dim, layout=layout)):
        for pos in (_rows([0, 0], 16), _rows([5000, 5000], 8), _rows([3, 123456], 4),
                    np.array([[7, 100, 3, 2 ** 20 - 1], [2 ** 19, 0, 64, 65]])):
            r = judge_case(a, spec, pos, dtype=dtype, heads=2)
            assert r.outcome == "conforms", (spec.to_dict(), pos.tolist(), r.message)


def test_layout_pairs():
    """traditional=True rotates (2i, 2i+1), traditional=False (i, i + r/2); features past rotary_dim pass."""
    spec_h, spec_i = RopeSpec(head_dim=10, rotary_dim=8), RopeSpec(head_dim=10, rotary_dim=8, layout="interleaved")
    x = np.zeros((1, 1, 1, 10), dtype=np.float32)
    x[..., 0], x[..., 9] = 1.0, 5.0
    p = np.array([[3]])
    yh = np.asarray(MlxFastRope().run(x, p, spec_h, dtype="float32"))[0, 0, 0]
    yi = np.asarray(MlxFastRope().run(x, p, spec_i, dtype="float32"))[0, 0, 0]
    assert np.nonzero(yh[:8])[0].tolist() == [0, 4] and np.nonzero(yi[:8])[0].tolist() == [0, 1]
    assert yh[4] == pytest.approx(np.sin(3.0), abs=1e-6) and yi[1] == pytest.approx(np.sin(3.0), abs=1e-6)
    assert yh[9] == yi[9] == 5.0


def test_custom_freqs_are_periods():
    """freqs= takes periods (inv_freqs = reciprocal(freqs)): the adapter passes 1/inv_freq; passing the inverse
    frequencies themselves, the name's natural reading, is wrong by O(1) with no error."""
    spec = VARIANTS["custom"].spec(head_dim=64)
    pos = _rows([0], 16)
    assert judge_case(MlxFastRope(), spec, pos, dtype="float32").outcome == "conforms"
    x = make_input(spec, 1, 2, 16, "float32", 0)
    wrong = mx.fast.rope(to_mx(x, "float32"), 64, traditional=False, base=None, scale=1.0, offset=0,
                         freqs=mx.array(np.asarray(spec.inv_freq, dtype=np.float32)))
    ref = np.asarray(apply(spec, x.astype(np.float64), pos))
    assert np.max(np.abs(to_numpy(wrong, "float32") - ref)) > 1.0


def test_float64_angles_are_float32():
    """For float64 input the angle is float32 (fast.cpp): judged as a float64-angle implementation it diverges,
    with the declared angle_dtype='float32' it conforms."""
    class Float64Angles(MlxFastRope):
        precision = Numerics()

    spec, pos = RopeSpec(head_dim=64), _rows([100000], 8)
    assert judge_case(MlxFastRope(), spec, pos, dtype="float64").outcome == "conforms"
    r = judge_case(Float64Angles(), spec, pos, dtype="float64")
    assert r.outcome == "diverges" and r.max_ratio > 1e6


# ----------------------------------------------------------------------------- mlx-lm mapping
def test_mlx_lm_config_keys(mlx_lm):
    lin = mlx_lm_config(VARIANTS["linear"].spec(head_dim=64))
    assert lin == {"rope_theta": 10000.0, "rope_scaling": {"rope_type": "linear", "factor": 4.0},
                   "max_position_embeddings": None}
    assert mlx_lm_config(RopeSpec(head_dim=64))["rope_scaling"] is None
    dyn = mlx_lm_config(VARIANTS["dynamic"].spec(head_dim=64))
    assert dyn["rope_scaling"] == {"rope_type": "dynamic", "factor": 4.0} and dyn["max_position_embeddings"] == 2048
    y = mlx_lm_config(VARIANTS["yarn-notrunc"].spec(head_dim=64, attention_factor=1.5))["rope_scaling"]
    assert y["truncate"] is False and y["attention_factor"] == 1.5 and y["original_max_position_embeddings"] == 4096
    lr = mlx_lm_config(VARIANTS["longrope"].spec(head_dim=64))
    assert lr["max_position_embeddings"] == 32 * 4096 and len(lr["rope_scaling"]["long_factor"]) == 32
    lr2 = mlx_lm_config(VARIANTS["longrope"].spec(head_dim=64, max_position_embeddings=65536))
    assert lr2["max_position_embeddings"] == 65536


def test_mlx_lm_builds_the_library_classes(mlx_lm):
    import mlx.nn as nn

    want = {"default": nn.RoPE, "linear": nn.RoPE, "dynamic": mlx_lm.DynamicNTKScalingRoPE,
            "llama3": mlx_lm.Llama3RoPE, "yarn": mlx_lm.YarnRoPE, "yarn-deepseek": mlx_lm.YarnRoPE,
            "longrope": mlx_lm.SuScaledRoPE}
    for v, cls in want.items():
        assert type(MlxLmRope().module(VARIANTS[v].spec(head_dim=64))) is cls, v
    assert MlxLmRope().module(VARIANTS["linear"].spec(head_dim=64)).scale == 0.25
    dyn = MlxLmRope().module(VARIANTS["dynamic"].spec(head_dim=64))
    assert (dyn.max_position_embeddings, dyn.factor, dyn.base) == (2048, 4.0, 10000.0)


def _periods_ratio(spec):
    """mlx-lm's float32 frequencies (1 / its periods) over the reference's, per pair."""
    seq_len = spec.original_max_position_embeddings + 1 if spec.rope_type == "longrope" else None  # the long set
    return (1.0 / np.array(MlxLmRope().module(spec)._freqs, dtype=np.float64)) / inv_freq(spec, seq_len)[0]


@pytest.mark.parametrize("variant, changes", [
    ("llama3", {"factor": 4.0}), ("llama3", {"low_freq_factor": 2.0}), ("llama3", {"high_freq_factor": 8.0}),
    ("llama3", {"original_max_position_embeddings": 4096}), ("llama3", {"rope_theta": 1e6}),
    ("yarn", {"factor": 16.0}), ("yarn", {"beta_fast": 16.0}), ("yarn", {"beta_slow": 2.0}),
    ("yarn", {"original_max_position_embeddings": 2048}),
    ("longrope", {"long_factor": [1.0 + 0.1 * i for i in range(32)]}),
])
def test_every_parameter_reaches_the_frequencies(mlx_lm, variant, changes):
    spec = VARIANTS[variant].spec(head_dim=64)
    changed = spec.replace(**changes)
    assert np.max(np.abs(_periods_ratio(spec) - 1)) < 1e-5            # float32 periods of the same schedule
    assert np.max(np.abs(_periods_ratio(changed) - 1)) < 1e-5
    assert not np.allclose(np.array(MlxLmRope().module(spec)._freqs), np.array(MlxLmRope().module(changed)._freqs))


def test_yarn_attention_factor_reaches_the_module(mlx_lm):
    for v in ("yarn", "yarn-deepseek"):
        spec = VARIANTS[v].spec(head_dim=64)
        assert MlxLmRope().module(spec).mscale == pytest.approx(float(inv_freq(spec)[1]), rel=1e-12)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("layout", ["half", "interleaved"])
def test_mlx_lm_conforms_where_it_agrees(mlx_lm, dtype, layout):
    a = MlxLmRope()
    specs = [VARIANTS[v].spec(head_dim=96, rotary_dim=64, layout=layout) for v in
             ("default", "linear", "llama3", "yarn", "yarn-deepseek")]
    specs.append(VARIANTS["dynamic"].spec(head_dim=64, layout=layout))
    if layout == "half":
        specs.append(VARIANTS["longrope"].spec(head_dim=64))
    for spec in specs:
        L0 = spec.original_max_position_embeddings or 0
        positions = [_rows([L0 + 5, L0 + 5], 8), _rows([300000, 300000], 4)]
        if spec.rope_type != "longrope":                 # below L0 LongRoPE diverges (registered)
            positions.append(_rows([0, 0], 16))
        if spec.rope_type != "dynamic":
            positions.append(np.array([[9, L0 + 3, 2 ** 20 - 1], [1, 2, L0 + 77]]))
        for pos in positions:
            r = judge_case(a, spec, pos, dtype=dtype, heads=2)
            assert r.outcome == "conforms", (spec.to_dict(), pos.tolist(), r.message)


def test_mlx_lm_default_and_linear_are_mx_fast_rope(mlx_lm):
    for v in ("default", "linear", "theta500k"):
        spec = VARIANTS[v].spec(head_dim=64)
        x, pos = make_input(spec, 2, 2, 8, "float32", 3), _rows([2 ** 20 - 8, 2 ** 20 - 8], 8)
        assert np.array_equal(MlxLmRope().run(x, pos, spec, dtype="float32"),
                              MlxFastRope().run(x, pos, spec, dtype="float32"))


# ----------------------------------------------------------------------------- instances (offset-driven decode)
def _decode(adapter, spec, dtype, start, prefill, steps, batch=2, heads=2):
    inst = adapter.instance(spec, dtype)
    outs, xs = [], []
    chunks = [np.arange(start, start + prefill)] + [np.array([start + prefill + k]) for k in range(steps)]
    for k, ch in enumerate(chunks):
        pos = np.broadcast_to(ch, (batch, len(ch))).astype(np.int64)
        x = make_input(spec, batch, heads, len(ch), dtype, 10 + k)
        y = inst.run(x, pos)
        assert np.asarray(y).dtype == x.dtype
        ref = np.asarray(apply(spec, x.astype(np.float64), pos))
        r = judge(adapter, spec, x, pos, dtype=dtype, expected=ref)  # the same call judged alone
        assert r.outcome == "conforms", r.message
        outs.append(np.asarray(y))
        xs.append(x)
    assert inst.offset.tolist() == [start + prefill + steps] * batch   # what cache.offset would hold
    return np.concatenate(xs, axis=2), np.concatenate(outs, axis=2), np.arange(start, start + prefill + steps)


@pytest.mark.parametrize("dtype", DTYPES)
def test_instance_decode_equals_one_call(dtype):
    """Prefill then single-token steps on one reused mx.fast.rope: the bits of one call over the sequence."""
    spec = RopeSpec(head_dim=64, layout="interleaved")
    x, y, pos = _decode(MlxFastRope(), spec, dtype, start=2 ** 20 - 40, prefill=24, steps=16)
    whole = MlxFastRope().run(x, np.broadcast_to(pos, (2, len(pos))).copy(), spec, dtype=dtype)
    assert np.array_equal(np.asarray(whole).view(np.uint8), y.view(np.uint8))


@pytest.mark.parametrize("variant", ["llama3", "yarn", "yarn-deepseek", "longrope"])
def test_instance_decode_mlx_lm(mlx_lm, variant):
    spec = VARIANTS[variant].spec(head_dim=64)
    _decode(MlxLmRope(), spec, "float32", start=spec.original_max_position_embeddings + 1, prefill=5, steps=4)


def test_instance_decode_dynamic_grows_the_base(mlx_lm):
    """DynamicNTKScalingRoPE recomputes its base from x.shape[-2] + offset on every call: decoding past L0 with
    one instance follows the reference's length rule step by step."""
    spec = VARIANTS["dynamic"].spec(head_dim=64)
    _decode(MlxLmRope(), spec, "float32", start=2040, prefill=4, steps=8)         # crosses L0 = 2048
    _decode(MlxLmRope(), spec, "float32", start=100000, prefill=3, steps=3)


def test_instance_ragged_rows_and_dtype_switch(mlx_lm):
    spec = VARIANTS["llama3"].spec(head_dim=64)
    inst = MlxLmRope().instance(spec, "float32")
    for k, dt in enumerate(("float32", "bfloat16", "float16", "float32")):
        pos = _rows([100 + k, 7000 + k], 1) if k else _rows([100, 7000], 1)
        x = make_input(spec, 2, 1, 1, dt, k)
        y = inst.run(x, pos)
        assert np.array_equal(np.asarray(y).view(np.uint8),
                              np.asarray(MlxLmRope().run(x, pos, spec, dtype=dt)).view(np.uint8))


def test_instance_refuses_what_the_declaration_refuses(mlx_lm):
    inst = MlxLmRope().instance(VARIANTS["dynamic"].spec(head_dim=64), "float32")
    with pytest.raises(Unsupported):
        inst.run(make_input(RopeSpec(head_dim=64), 2, 1, 1, "float32", 0), _rows([10, 20], 1))


@pytest.mark.parametrize("kind", ["decode", "ragged", "grow_then_short", "dtype_switch", "two_specs"])
def test_stateful_scenarios_conform(mlx_lm, kind):
    """The suite's stateful source on both adapters' instances (llama3: length independent; dynamic for the
    length-dependent kinds)."""
    base = VARIANTS["dynamic" if kind == "grow_then_short" else "llama3"].spec(head_dim=64)
    L0 = base.original_max_position_embeddings
    calls = {
        "decode": [(_rows([L0 - 2], 3), "float32"), (_rows([L0 + 1], 1), "float32"), (_rows([L0 + 2], 1), "float32")],
        "ragged": [(_rows([100, 7000], 3), "float32"), (_rows([103, 7003], 1), "float32")],
        "grow_then_short": [(_rows([2 * L0 - 3], 4), "float32"), (_rows([L0 // 2], 2), "float32"),
                            (_rows([5], 1), "float32")],
        "dtype_switch": [(_rows([100], 4), "bfloat16"), (_rows([100], 4), "float32"), (_rows([100], 4), "bfloat16")],
        "two_specs": [(_rows([50], 3), "float32"), (_rows([50], 3), "float32"), (_rows([50], 3), "float32")],
    }[kind]
    second = base.replace(rope_theta=base.rope_theta * 50)
    scenario = {"kind": kind, "instances": [base, second],
                "calls": [{"instance": (k % 2 if kind == "two_specs" else 0), "positions": p, "dtype": dt,
                           "role": "query", "seed": k + 1, "heads": 2} for k, (p, dt) in enumerate(calls)]}
    rs = run_scenario(MlxLmRope(), scenario, "cpu", variant=base.rope_type)
    assert [r.outcome for r in rs] == ["conforms"] * len(calls), [r.message for r in rs]


# ----------------------------------------------------------------------------- findings through the suite
def _classified(adapter, spec, pos, dtype="float32", variant="", heads=2, seed=0):
    """Judge one case and classify it the way the suite's cells do (registry known / not)."""
    x = make_input(spec, pos.shape[0], heads, pos.shape[1], dtype, seed)
    r = judge(adapter, spec, x, pos, dtype=dtype, variant=variant, source="property", seed=seed)
    return Classifier(registry.load(), adapter.name, adapter.version())(r)


def _cell(adapter, variant, dtype, entry, skip=("properties", "metamorphic", "stateful")):
    """One suite cell (golden cases only by default); ``entry`` must be the cell's known divergence."""
    rep = run_adapter(adapter, RunConfig(variants=(variant,), dtypes=(dtype,), skip=skip, diagnose=False))
    assert not [w for w in rep.get("warnings") or [] if entry in w], rep.get("warnings")
    cell = rep["cells"][0]
    assert cell["outcome"] == "known" and cell["minimal"]["known_id"] == entry, cell
    return rep, cell


def test_known_entries_load_and_name_these_adapters():
    entries = [e for e in registry.load() if e.source == "mlx.toml"]
    assert len(entries) == 11
    for e in entries:
        names = {"mlx-fast", "ropeconf.adapters.mlx:MlxFastRope"} if e.id.startswith("mlx-fast") else \
            {"mlx-lm", "ropeconf.adapters.mlx:MlxLmRope"}
        assert set(e.adapter) == names, e.id
        version = (MlxFastRope() if e.id.startswith("mlx-fast") else MlxLmRope()).version()
        assert registry.version_in(version, e.versions), e.id


@pytest.mark.parametrize("adapter, entry", [(MlxFastRope, "mlx-fast-exp-schedule-precision"),
                                            (MlxLmRope, "mlx-lm-exp-schedule-precision")])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_finding_exp_schedule_precision_is_known(adapter, entry, dtype):
    """theta 5e5 golden cases at long positions: just above the bound, the registered precision finding."""
    if adapter is MlxLmRope:
        pytest.importorskip("mlx_lm.models.rope_utils")
    rep, cell = _cell(adapter(), "theta500k", dtype, entry)
    assert 1.0 < cell["max_ratio"] < 1.05
    known = [c for c in rep["cases"] if c["outcome"] == "known"]
    assert known and all(c["known_id"] == entry and c["worst"]["pair"] == 26 for c in known)
    assert all(c["outcome"] == "conforms" for c in rep["cases"] if c["case_id"].endswith("short"))


@pytest.mark.parametrize("adapter, entry", [(MlxFastRope, "mlx-fast-exp-schedule-precision"),
                                            (MlxLmRope, "mlx-lm-exp-schedule-precision")])
def test_finding_exp_schedule_precision_drawn_spec_is_known_within_its_ceiling(adapter, entry):
    """A spec the dev profile drew (theta 2840.78, r 96, float32: the schedule of pair 42 alone is over its
    budget) crosses the bound at a short position too; the precision entry covers it (ratio <= its 2.5
    ceiling, no max_position scope) and a formula error of the same spec (theta 2841.78) stays diverging."""
    if adapter is MlxLmRope:
        pytest.importorskip("mlx_lm.models.rope_utils")
    spec = RopeSpec(head_dim=96, rope_theta=2840.7759074292576)
    r = _classified(adapter(), spec, np.array([[7165]]), "float32", variant="default", heads=1)
    assert (r.outcome, r.known_id) == ("known", entry) and 1.0 < r.max_ratio < 1.2, r.message
    e = next(e for e in registry.load() if e.id == entry)
    assert e.kind == "precision" and e.max_ratio == 2.5

    class WrongTheta(adapter):  # the library called with theta + 1: a formula error of the same spec
        def call(self, x, positions, spec, **kw):
            return super().call(x, positions, dataclasses.replace(spec, rope_theta=spec.rope_theta + 1.0), **kw)

    r = _classified(WrongTheta(), spec, np.array([[7165]]), "float32", variant="default", heads=1)
    assert r.outcome == "diverges" and r.max_ratio > 2.5 and f"above the ceiling 2.5x of precision entry {entry}" \
        in r.message, r.message


def test_finding_exp_schedule_is_the_exp_not_the_formula():
    """The MLX schedule's relative error at pair 26 (theta 5e5, r 64) is 18.8 u32 against a budget of
    8 + |ln omega0| = 18.66; the same exponents through NumPy's float32 exp are within it; MLX's exp on them
    is 6 ulp off (8.1 at pair 29)."""
    u = 2.0 ** -24
    half = 32
    c = np.float32(np.float32(np.log(np.float32(5e5))) / np.float32(half))
    e = (np.arange(0, -half, -1, dtype=np.float32) * c).astype(np.float32)
    w_mlx = np.array(mx.exp(mx.array(e)), dtype=np.float64)
    w_np = np.exp(e).astype(np.float64)
    exact = 5e5 ** (-np.arange(half) / half)
    budget = 8 + np.abs(np.log(exact))
    assert np.abs(w_mlx[26] / exact[26] - 1) / u / budget[26] > 1.0
    assert np.max(np.abs(w_np / exact - 1) / u / budget) < 1.0
    ref = np.exp(e.astype(np.float64))                                     # exp of the same float32 exponents
    ulp = np.spacing(ref.astype(np.float32)).astype(np.float64)
    mlx_ulp, np_ulp = np.abs(w_mlx - ref) / ulp, np.abs(w_np - ref) / ulp
    assert mlx_ulp.max() > 8.0 and int(np.argmax(mlx_ulp)) == 29 and mlx_ulp[26] > 6.0
    assert np_ulp.max() < 1.0
    # the library computes exactly this schedule (fast.cpp default_inv_freqs): the angle at p = 2^20 - 1
    spec, p = RopeSpec(head_dim=64, rope_theta=5e5), 2 ** 20 - 1
    x = np.zeros((1, 1, 1, 64), dtype=np.float32)
    x[..., :32] = 1.0
    y = np.asarray(MlxFastRope().run(x, np.array([[p]]), spec, dtype="float32"), dtype=np.float64)[0, 0, 0]
    phi = (np.float32(p) * w_mlx.astype(np.float32)).astype(np.float32)
    assert np.allclose(y[32:], np.sin(phi.astype(np.float64)), atol=4e-7)


def test_finding_dynamic_exp_schedule_precision_is_known(mlx_lm):
    """Dynamic NTK passes its scaled base to mx.fast.rope(base=...): the same exp path.  At L = 2^20 (golden
    long case) pair 20 of r 64 uses 0.97 of its budget in the schedule alone; float64 (float32 angles, no
    float32 output rounding in the bound) crosses it, float32 stays below."""
    rep, cell = _cell(MlxLmRope(), "dynamic", "float64", "mlx-lm-dynamic-exp-schedule-precision")
    assert 1.0 < cell["max_ratio"] < 1.05
    known = [c for c in rep["cases"] if c["outcome"] == "known"]
    assert [c["case_id"] for c in known] == ["dynamic__half__d96r64__long"] and known[0]["worst"]["pair"] == 20
    L, s, L0, d = 2 ** 20, 4.0, 2048, 64
    base = 1e4 * (s * L / L0 - (s - 1)) ** (d / (d - 2))                 # rope_utils.py:261-263
    c = np.float32(np.float32(np.log(np.float32(base))) / np.float32(d // 2))
    e = (np.arange(0, -(d // 2), -1, dtype=np.float32) * c).astype(np.float32)
    w_mlx = np.array(mx.exp(mx.array(e)), dtype=np.float64)
    exact = base ** (-np.arange(d // 2) / (d // 2))
    rel = (w_mlx / exact - 1) / 2.0 ** -24
    budget = 8 + np.abs(np.log(exact))       # 8 + |ln omega0| plus the NTK term |ln omega| - |ln omega0|
    assert 0.95 < rel[20] / budget[20] < 1.0
    w_np = np.exp(e).astype(np.float64)       # the same exponents through an accurate float32 exp
    assert np.max(np.abs(w_np / exact - 1) / 2.0 ** -24 / budget) < 0.8
    f32 = run_adapter(MlxLmRope(), RunConfig(variants=("dynamic",), dtypes=("float32",),
                                             skip=("properties", "metamorphic", "stateful"), diagnose=False))
    assert f32["cells"][0]["outcome"] == "conforms"


def test_finding_yarn_truncate_ignored_is_known(mlx_lm):
    rep, cell = _cell(MlxLmRope(), "yarn-notrunc", "float32", "mlx-lm-yarn-truncate-ignored")
    assert cell["max_ratio"] > 1e4
    # what mlx-lm computes is the truncate=True schedule
    spec = VARIANTS["yarn-notrunc"].spec(head_dim=64)
    assert np.max(np.abs(_periods_ratio(spec.replace(truncate=True)) - 1)) < 1e-5
    assert np.max(np.abs(_periods_ratio(spec) - 1)) > 0.4
    pos = _rows([5000], 8)
    assert judge_case(MlxLmRope(), spec.replace(truncate=True), pos).outcome == "conforms"


@pytest.mark.parametrize("variant", ["longrope", "longrope-position"])
def test_finding_longrope_always_long_is_known(mlx_lm, variant):
    rep, cell = _cell(MlxLmRope(), variant, "float32", "mlx-lm-longrope-always-long-factors")
    by_id = {c["case_id"]: c["outcome"] for c in rep["cases"]}
    assert by_id[f"{variant}__half__d64r64__short"] == "known" and by_id[f"{variant}__half__d64r64__long"] == "conforms"
    # the frequencies are the long set whatever the length
    spec = VARIANTS[variant].spec(head_dim=64)
    long_w = inv_freq(spec, spec.original_max_position_embeddings + 1)[0]
    mlx_w = 1.0 / np.array(MlxLmRope().module(spec)._freqs, dtype=np.float64)
    assert np.max(np.abs(mlx_w / long_w - 1)) < 1e-6


@pytest.mark.parametrize("variant, entry", [("yarn", "mlx-lm-yarn-attention-factor-ignored"),
                                            ("longrope", "mlx-lm-longrope-attention-factor-ignored")])
def test_finding_attention_factor_ignored_is_known(mlx_lm, variant, entry):
    spec = VARIANTS[variant].spec(head_dim=64, attention_factor=1.0)
    pos = _rows([spec.original_max_position_embeddings + 10], 8)   # past L0: LongRoPE's long set agrees
    r = _classified(MlxLmRope(), spec, pos, variant=variant)
    assert r.outcome == "known" and r.known_id == entry and r.max_ratio > 1e4, r.message
    # the factor mlx-lm applies is its derived one, not the configured 1.0
    derived = float(inv_freq(VARIANTS[variant].spec(head_dim=64), spec.original_max_position_embeddings + 1)[1])
    x = make_input(spec, 1, 1, 8, "float64", 0)
    y = np.asarray(MlxLmRope().run(x, pos[:1], spec, dtype="float64"))
    assert np.linalg.norm(y) / np.linalg.norm(x) == pytest.approx(derived, rel=1e-5) and abs(derived - 1.0) > 0.1


def test_finding_longrope_attention_from_max_position_is_known(mlx_lm):
    spec = VARIANTS["longrope"].spec(head_dim=64, max_position_embeddings=65536)   # mpe / L0 = 16, factor 32
    pos = _rows([5000], 8)
    r = _classified(MlxLmRope(), spec, pos)
    assert r.outcome == "known" and r.known_id == "mlx-lm-longrope-attention-from-max-position", r.message
    assert MlxLmRope().module(spec)._scale == pytest.approx(np.sqrt(1 + np.log(16) / np.log(4096)))
    # max_position_embeddings = factor * L0 (what the adapter passes when the spec has none) conforms
    assert judge_case(MlxLmRope(), spec.replace(max_position_embeddings=32 * 4096), pos).outcome == "conforms"
    # without factor both derive it from max_position_embeddings / L0 and agree
    nof = RopeSpec.from_dict({**spec.to_dict(), "factor": None})
    assert judge_case(MlxLmRope(), nof, pos).outcome == "conforms"


@pytest.mark.parametrize("params, entry, derived", [
    ({"mscale": 0.707}, "mlx-lm-yarn-mscale-without-mscale-all-dim", 0.1 * 0.707 * np.log(8) + 1),
    ({"mscale_all_dim": 1.0}, "mlx-lm-yarn-mscale-all-dim-without-mscale", 1.0),
])
def test_finding_yarn_one_sided_mscale_is_known(mlx_lm, params, entry, derived):
    spec = VARIANTS["yarn"].spec(head_dim=64, **params)
    r = _classified(MlxLmRope(), spec, _rows([0], 8))
    assert r.outcome == "known" and r.known_id == entry and r.max_ratio > 1e3, r.message
    assert MlxLmRope().module(spec).mscale == pytest.approx(derived)
    assert float(inv_freq(spec)[1]) == pytest.approx(0.1 * np.log(8) + 1)
    # both set and nonzero (DeepSeek): the same ratio on both sides
    both = VARIANTS["yarn"].spec(head_dim=64, mscale=0.707, mscale_all_dim=1.0)
    assert judge_case(MlxLmRope(), both, _rows([0], 8)).outcome == "conforms"


def test_finding_llama3_strict_low_band_edge_is_known(mlx_lm):
    d, theta, L0, s, i = 64, 5e5, 8192, 8.0, 10
    wl = np.array(2 * mx.pi * theta ** (mx.arange(0, d, 2) / d))          # Llama3RoPE's float32 wavelengths
    lo = L0 / float(wl[i])
    assert lo == 21.591456253516494 and np.float32(L0 / lo) == wl[i]       # the registered spec
    spec = RopeSpec(head_dim=d, rope_type="llama3", rope_theta=theta, factor=s, original_max_position_embeddings=L0,
                    low_freq_factor=lo, high_freq_factor=4 * lo)
    ratio = _periods_ratio(spec)
    assert ratio[i] == pytest.approx(s, rel=1e-6)                           # omega kept: 8x the reference's
    assert np.max(np.abs(np.delete(ratio, i) - 1)) < 1e-5
    r = _classified(MlxLmRope(), spec, _rows([100000], 4))
    assert r.outcome == "known" and r.known_id == "mlx-lm-llama3-strict-low-band-edge" and r.max_ratio > 1e3
    # with the edge a few float32 ulps above that wavelength the pair is smoothed (sigma ~ 0) and it conforms
    lo2 = L0 / (float(wl[i]) * (1 + 2.0 ** -20))
    off = spec.replace(low_freq_factor=lo2, high_freq_factor=4 * lo2)
    assert judge_case(MlxLmRope(), off, _rows([100000], 4)).outcome == "conforms"


def test_constructed_entries_are_outside_the_grid():
    """variant = "": no suite cell reaches these entries (so a run has no unused-entry warning for them)."""
    from ropeconf.conformance.runner import cells_of

    cells = cells_of(RunConfig(dtypes=DTYPES))
    for e in registry.load():
        if e.source == "mlx.toml":
            assert e.covers(cells) == (e.match.get("variant") != ""), e.id


def test_dynamic_l0_is_max_position_embeddings_as_in_hf(mlx_lm):
    """Verified, not a divergence: DynamicNTKScalingRoPE takes L0 from max_position_embeddings (never from
    rope_scaling['original_max_position_embeddings']), as transformers 5.24 does; the adapter passes L0 there."""
    spec = VARIANTS["dynamic"].spec(head_dim=64)
    cfg = mlx_lm_config(spec)
    rope = mlx_lm.initialize_rope(64, 10000.0, False, {**cfg["rope_scaling"], "original_max_position_embeddings": 7},
                                  cfg["max_position_embeddings"])
    assert rope.max_position_embeddings == 2048
    pos = _rows([4000], 8)
    assert judge_case(MlxLmRope(), spec, pos).outcome == "conforms"
