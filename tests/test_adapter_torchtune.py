"""torchtune adapters (adapters/torchtune.py): mapping, declared limits, findings.

Runs only where torch and torchtune (with torchao 0.17, datasets, omegaconf, tiktoken) import: the
project's .venv.  torchtune is imported once, at collection (about 8 s); every cache built here is small
(rotary_dim 8 for the one test at 2**20), so the file runs in well under 30 s.  The findings asserted at
the end are the ones docs/findings/torchtune.md and conformance/known/torchtune.toml record.
"""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("torch", reason="torch not installed (the torchtune adapters need the peer venv)")
pytest.importorskip("torchtune", reason="torchtune not importable (pip install torchtune==0.6.1 torchao==0.17.0 "
                                        "datasets omegaconf tiktoken)")

import torch  # noqa: E402

from ropeconf.adapters.torchtune import MAX_POSITION, TorchtuneLlama3, TorchtuneRoPE, _import  # noqa: E402
from ropeconf.conformance import registry  # noqa: E402
from ropeconf.conformance.adapter import load_adapter  # noqa: E402
from ropeconf.conformance.judge import judge, judge_case, make_input  # noqa: E402
from ropeconf.conformance.sources import spec_fields  # noqa: E402
from ropeconf.conformance.tolerance import pair_norm  # noqa: E402
from ropeconf.reference import RopeSpec, apply, inv_freq  # noqa: E402

U32 = 2.0 ** -24

# Bound for float32 at positions 0..15: |out - ref| <= 64 u32 |pair| per element (|pair| = norm of the
# expected output pair).  Why: torchtune forms omega in float32 (pow of a rounded exponent, a division,
# for Llama 3 the float32 band blend: <= 5.4 u32 relative for the dyadic rotary_dims used here, and the
# pairs that reach it have omega < 4e-3, so phi < 0.06), then p * omega (0.5 u32): for |phi| <= 15 the
# angle is off by <= (1.4 + 0.5) * 15 u32 ~ 29 u32; cos/sin in float32 <= 2 u32; the rotation (two products
# and a sum in float32) <= 3 sqrt(2) u32; the output rounding 1 u32: about 36 u32 in all, and 64 leaves
# a margin of ~2.  Measured over 45 specs (rotary_dim 8..256, theta 1e4..1e6, three Llama 3 parameter
# sets): max 21.8 u32.  A wrong pairing, sign or frequency is off by O(|pair|), > 1e5 times this bound.
C_SHORT = 64.0

LLAMA3_SETS = [  # (factor, original_max_position_embeddings, low_freq_factor, high_freq_factor)
    (8.0, 8192, 1.0, 4.0),      # Llama 3.1
    (32.0, 8192, 1.0, 4.0),     # Llama 3.2 1B/3B
    (16.0, 4096, 2.0, 8.0),
    (4.0, 2048, 0.5, 3.0),
]


def _short(batch=2, seq=16):
    return np.broadcast_to(np.arange(seq, dtype=np.int64), (batch, seq)).copy()


def _llama3(head_dim=64, theta=500000.0, factor=8.0, L0=8192, lo=1.0, hi=4.0):
    return RopeSpec(head_dim=head_dim, layout="interleaved", rope_theta=theta, rope_type="llama3",
                    factor=factor, original_max_position_embeddings=L0, low_freq_factor=lo, high_freq_factor=hi)


def _err_units(adapter, spec, pos, dtype="float32", heads=2, seed=0):
    """max |out - ref| / (u32 |pair|) for a seeded input."""
    x = make_input(spec, pos.shape[0], heads, pos.shape[1], dtype, seed)
    y = np.asarray(adapter.run(x, pos, spec, dtype=dtype), dtype=np.float64)
    ref = np.asarray(apply(spec, np.asarray(x).astype(np.float64), pos))
    assert y.shape == ref.shape
    return float((np.abs(y - ref) / (U32 * pair_norm(ref, spec.rotary_dim, spec.layout))).max())


@pytest.fixture(scope="module")
def tt():
    return load_adapter("torchtune")


@pytest.fixture(scope="module")
def tt3():
    return load_adapter("torchtune-llama3")


# ----------------------------------------------------------------------------- registry and declarations
def test_registered_and_available(tt, tt3):
    assert isinstance(tt, TorchtuneRoPE) and isinstance(tt3, TorchtuneLlama3)
    assert (tt.name, tt3.name) == ("torchtune", "torchtune-llama3")
    assert tt.availability() is None and tt3.availability() is None
    assert tt.version() == tt3.version() != "not installed"
    for a in (tt, tt3):
        c = a.capabilities
        assert c.layouts == ("interleaved",) and not c.partial and not c.xpos and not c.axial and not c.mrope
        assert c.freqs_for == ("lang",) and c.positions == "arbitrary" and c.max_position == MAX_POSITION
        assert set(c.dtypes) == {"float32", "float16", "bfloat16"} and a.precision.angle_dtype == "float32"
    assert tt.capabilities.rope_types == ("default",) and tt3.capabilities.rope_types == ("llama3",)


@pytest.mark.parametrize("which, spec, dtype, device, pos, expect", [
    ("tt", RopeSpec(head_dim=64, layout="half"), "float32", "cpu", None, "layout=half"),
    ("tt", RopeSpec(head_dim=96, rotary_dim=64, layout="interleaved"), "float32", "cpu", None, "partial"),
    ("tt", RopeSpec(head_dim=64, layout="interleaved"), "float64", "cpu", None, "float64"),
    ("tt", _llama3(), "float32", "cpu", None, "rope_type=llama3"),
    ("tt3", RopeSpec(head_dim=64, layout="interleaved"), "float32", "cpu", None, "rope_type=default"),
    ("tt3", _llama3(), "float64", "cpu", None, "float64"),
    ("tt", RopeSpec(head_dim=64, layout="interleaved", rope_type="linear", factor=2.0), "float32", "cpu", None,
     "rope_type=linear"),
    ("tt", RopeSpec(head_dim=64, layout="interleaved", xpos=True), "float32", "cpu", None, "xpos"),
    ("tt", RopeSpec(head_dim=64, layout="interleaved", freqs_for="pixel"), "float32", "cpu", None, "freqs_for"),
    ("tt", RopeSpec(head_dim=64, layout="interleaved"), "float32", "cpu", np.array([[0, -1]]), "negative"),
    ("tt", RopeSpec(head_dim=64, layout="interleaved"), "float32", "cpu", np.array([[0, MAX_POSITION + 1]]),
     "max_position"),
])
def test_unsupported_declarations(tt, tt3, which, spec, dtype, device, pos, expect):
    a = {"tt": tt, "tt3": tt3}[which]
    why = a.why_unsupported(spec, dtype, device, pos)
    assert why is not None and expect in why, why
    r = judge_case(a, spec, pos if pos is not None else _short(1, 4), dtype=dtype)
    assert r.outcome == "unsupported"


def test_supported_up_to_max_position(tt):
    spec = RopeSpec(head_dim=8, layout="interleaved")
    assert tt.why_unsupported(spec, "bfloat16", "cpu", np.array([[0, MAX_POSITION]])) is None
    if "cuda" not in tt.capabilities.devices:
        assert "device=cuda" in tt.why_unsupported(spec, "float32", "cuda", None)


# ----------------------------------------------------------------------------- short positions, float32
@pytest.mark.parametrize("head_dim", [8, 48, 64, 128])
@pytest.mark.parametrize("theta", [10000.0, 500000.0])
def test_default_float32_short(tt, head_dim, theta):
    spec = RopeSpec(head_dim=head_dim, layout="interleaved", rope_theta=theta)
    assert _err_units(tt, spec, _short()) <= C_SHORT


@pytest.mark.parametrize("params", LLAMA3_SETS)
@pytest.mark.parametrize("head_dim", [64, 128])
def test_llama3_float32_short(tt3, params, head_dim):
    factor, L0, lo, hi = params
    spec = _llama3(head_dim=head_dim, factor=factor, L0=L0, lo=lo, hi=hi)
    assert _err_units(tt3, spec, _short()) <= C_SHORT


@pytest.mark.parametrize("params", LLAMA3_SETS)
def test_llama3_mapping_frequencies(tt3, params):
    """Each of the four parameters reaches Llama3ScaledRoPE: its float32 theta is the exact llama3 omega
    (<= 8 u32 relative: float32 pow of a dyadic exponent, a division and the blend; measured <= 5.4 u32),
    and dropping any one of them (the constructor default instead) would move some pair by > 1e-3."""
    factor, L0, lo, hi = params
    spec = _llama3(factor=factor, L0=L0, lo=lo, hi=hi)
    theta = tt3.module(spec, 0).theta.double().numpy()
    exact = inv_freq(spec)[0]
    assert np.max(np.abs(theta / exact - 1)) <= 8 * U32
    Llama3ScaledRoPE = _import("torchtune.models.llama3_1").Llama3ScaledRoPE
    given = dict(scale_factor=factor, low_freq_factor=lo, high_freq_factor=hi, old_context_len=L0)
    defaults = dict(scale_factor=8, low_freq_factor=1, high_freq_factor=4, old_context_len=8192)
    for k in given:
        if given[k] == defaults[k]:
            continue
        other = Llama3ScaledRoPE(dim=64, max_seq_len=1, base=500000.0, **{**given, k: defaults[k]}).theta
        assert np.max(np.abs(other.double().numpy() / exact - 1)) > 1e-3, k


def test_llama3_is_not_default(tt, tt3):
    """Sensitivity: the llama3 output is not plain RoPE's (the scaled pairs move by >> the bound)."""
    spec = _llama3()
    pos = _short(1, 16)
    x = make_input(spec, 1, 1, 16, "float32", 0)
    y3 = np.asarray(tt3.run(x, pos, spec, dtype="float32"))
    plain = RopeSpec(head_dim=64, layout="interleaved", rope_theta=500000.0)
    y0 = np.asarray(tt.run(x, pos, plain, dtype="float32"))
    assert np.max(np.abs(y3 - y0)) > 100 * C_SHORT * U32 * np.max(np.abs(x))


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_half_precision_short_conforms(tt, tt3, dtype):
    assert judge_case(tt, RopeSpec(head_dim=64, layout="interleaved"), _short(), dtype=dtype).outcome == "conforms"
    assert judge_case(tt3, _llama3(), _short(), dtype=dtype).outcome == "conforms"


# ----------------------------------------------------------------------------- positions
def test_per_row_arbitrary_positions(tt, tt3):
    """input_pos (batch, seq) indexes the cache row by row: unsorted, repeated, per-row positions up to
    MAX_POSITION conform, and each row equals that row called alone (bit for bit)."""
    pos = np.array([[5, 0, 3, 900, 17, 5], [MAX_POSITION, 7, 7, 1, 64, 123456]], dtype=np.int64)
    for a, spec in ((tt, RopeSpec(head_dim=8, layout="interleaved")),
                    (tt3, _llama3(head_dim=8, theta=10000.0, L0=64))):
        x = make_input(spec, 2, 3, pos.shape[1], "float32", 1)
        r = judge(a, spec, x, pos, dtype="float32")
        assert r.outcome == "conforms", r.message
        both = np.asarray(a.run(x, pos, spec, dtype="float32"))
        for b in range(2):
            alone = np.asarray(a.run(x[b:b + 1], pos[b:b + 1], spec, dtype="float32"))
            assert np.array_equal(both[b:b + 1], alone)


def test_cache_rows_do_not_depend_on_max_seq_len(tt, tt3):
    """Why reusing one module per spec is faithful: row p of the cache is the same bits whatever
    max_seq_len the module was built with."""
    R = _import("torchtune.modules").RotaryPositionalEmbeddings
    L = _import("torchtune.models.llama3_1").Llama3ScaledRoPE
    kw3 = dict(scale_factor=8.0, low_freq_factor=1.0, high_freq_factor=4.0, old_context_len=8192)
    for cls, kw in ((R, {}), (L, kw3)):
        big = cls(dim=64, max_seq_len=4099, base=500000.0, **kw).cache
        for n in (1, 7, 64, 100, 4097):
            assert torch.equal(cls(dim=64, max_seq_len=n, base=500000.0, **kw).cache, big[:n])


def test_module_cache_reuse():
    a = TorchtuneRoPE()
    spec = RopeSpec(head_dim=8, layout="interleaved")
    m1 = a.module(spec, 10)
    assert m1.max_seq_len == 64 and a.module(spec, 63) is m1
    m2 = a.module(spec, 64)
    assert m2 is not m1 and m2.max_seq_len == 128 and a.module(spec, 5) is m2
    assert a.module(spec, 1000).max_seq_len == 1024
    assert a.module(spec, MAX_POSITION).max_seq_len == MAX_POSITION + 1   # capped, not 2**21
    assert len(a._modules) == 1


def test_long_positions_within_tolerance(tt, tt3):
    """At 2**20 the float32 angle error dominates; it stays within the suite's tolerance model."""
    pos = np.arange(MAX_POSITION - 11, MAX_POSITION + 1, dtype=np.int64)[None]
    assert judge_case(tt, RopeSpec(head_dim=8, layout="interleaved"), pos).outcome == "conforms"
    assert judge_case(tt3, _llama3(head_dim=8, theta=10000.0, L0=64), pos, dtype="bfloat16").outcome == "conforms"


# ----------------------------------------------------------------------------- findings
def test_float64_is_computed_in_float32(tt):
    """Why float64 is declared unsupported: forward does x.float() ... type_as(x), so a float64 input
    gives exactly the float32 result of the float32-rounded input."""
    spec = RopeSpec(head_dim=64, layout="interleaved")
    pos = _short(1, 8)
    x64 = make_input(spec, 1, 2, 8, "float64", 3)
    y64 = np.asarray(tt.call(x64, pos, spec, dtype="float64"))  # call(): past the declaration, on purpose
    y32 = np.asarray(tt.run(x64.astype(np.float32), pos, spec, dtype="float32"))
    assert np.array_equal(y64, y32)
    ref = np.asarray(apply(spec, x64, pos))
    assert np.max(np.abs(y64 - ref)) > 1e6 * 2.0 ** -53 * np.max(np.abs(ref))


def _known(spec, dtype):
    return registry.find(registry.load(), "torchtune-llama3", "0.6.1", spec_fields(spec.to_dict(), "llama3", dtype, "cpu"))


def test_finding_llama3_conditioning(tt3):
    """Llama 3.1 parameters, rotary_dim 48: the float32 blend amplifies the float32 omega error (pair 13
    ends 14.9 u32 off, 3x its error before the blend).  The tolerance model's angle term carries the
    band's condition number (tolerance.angle_error_factor), so this conventional float32 behaviour
    conforms; without that factor this case was 1.7x the bound."""
    spec = _llama3(head_dim=48)
    theta = tt3.module(spec, 0).theta.double().numpy()
    rel = np.abs(theta / inv_freq(spec)[0] - 1) / U32
    assert int(np.argmax(rel)) == 13 and 14 < rel.max() < 16
    r = judge_case(tt3, spec, np.array([[65536, 65537]]), dtype="float32", seed=0, heads=4)
    assert r.outcome == "conforms", r.message


def test_finding_step_band_float32_decision(tt3):
    lo = 2.778547885008898                   # L0 / lambda_15 for r=64, base 5e5
    spec = _llama3(lo=lo, hi=lo)
    r = judge_case(tt3, spec, _short(1, 8), dtype="float32", heads=1)
    assert r.outcome == "diverges" and r.max_ratio > 1e3 and r.worst["pair"] == 15
    assert _known(spec, "float32").id == "torchtune-llama3-step-band-float32-decision"


def test_finding_step_band_assert(tt3):
    lo = 9.508156549038578                   # L0 / lambda_12 for r=64, base 5e5
    spec = _llama3(lo=lo, hi=lo)
    r = judge_case(tt3, spec, _short(1, 4), dtype="bfloat16", heads=1)
    assert r.outcome == "error" and r.message.startswith("AssertionError")
    assert _known(spec, "bfloat16").id == "torchtune-llama3-step-band-assert"


# ----------------------------------------------------------------------------- stateful: the user's max_seq_len
from ropeconf.conformance.outcome import Outcome  # noqa: E402
from ropeconf.conformance.runner import Classifier  # noqa: E402
from ropeconf.conformance.sources import run_scenario  # noqa: E402

TT_SPECS = {"torchtune": {"head_dim": 64, "layout": "interleaved"},
            "torchtune-llama3": {"head_dim": 64, "layout": "interleaved", "rope_type": "llama3",
                                 "rope_theta": 500000.0, "factor": 8.0, "original_max_position_embeddings": 8192,
                                 "low_freq_factor": 1.0, "high_freq_factor": 4.0}}


def _scenario(kind, instances, calls):
    return {"kind": kind, "instances": instances,
            "calls": [{"instance": c[0], "positions": c[1], "dtype": c[2], "role": "query", "seed": k + 1,
                       "heads": 2} for k, c in enumerate(calls)]}


def _play(adapter, scenario, dtype=None):
    cl = Classifier(registry.load(), adapter.name, adapter.version())
    return run_scenario(adapter, scenario, "cpu", classify=cl, dtype=dtype)


def test_instance_uses_the_users_fixed_max_seq_len(tt, tt3):
    for ad in (tt, tt3):
        spec = RopeSpec(**TT_SPECS[ad.name])
        inst = ad.instance(spec, "float32")
        assert inst.module.max_seq_len == 4096                      # the constructor's default, read from it
        mod = inst.module
        x = make_input(spec, 1, 2, 4, "float32", 0)
        inst.run(x, np.arange(4)[None])
        inst.run(x[:, :, :1], np.array([[4095]]))
        assert inst.module is mod and mod.max_seq_len == 4096        # never rebuilt or grown


@pytest.mark.parametrize("which", sorted(TT_SPECS))
def test_reused_module_conforms_below_max_seq_len(tt, tt3, which):
    ad = tt if which == "torchtune" else tt3
    s = TT_SPECS[which]
    sequences = [
        ("decode", [s], [(0, [list(range(4088, 4092))], "float32"), (0, [[4092]], "float32"),
                         (0, [[4093]], "bfloat16"), (0, [[4095]], "float32")]),
        ("ragged", [s], [(0, [list(range(p, p + 4)) for p in (0, 100, 4000)], "float32"),
                         (0, [[4], [104], [4004]], "float32")]),
        ("dtype_switch", [s], [(0, [list(range(3000, 3008))], "bfloat16"), (0, [list(range(3000, 3008))], "float32"),
                               (0, [list(range(3000, 3008))], "float16")]),
        ("two_specs", [s, {**s, "rope_theta": 20000.0}], [(0, [list(range(8))], "float32"),
                                                          (1, [list(range(8))], "float32"),
                                                          (0, [list(range(8))], "float32")]),
    ]
    for kind, instances, calls in sequences:
        results = _play(ad, _scenario(kind, instances, calls))
        assert len(results) == len(calls)
        for r in results:
            assert Outcome.of(r.outcome) is Outcome.CONFORMS, (kind, r.message)


@pytest.mark.parametrize("which", sorted(TT_SPECS))
def test_finding_max_seq_len_raises_instead_of_recomputing(tt, tt3, which):
    """The docstring promises a recompute past max_seq_len; forward indexes the cache and raises."""
    ad = tt if which == "torchtune" else tt3
    cls = type(ad.instance(RopeSpec(**TT_SPECS[which]), "float32").module)
    assert "will be recomputed" in " ".join(cls.__doc__.split())  # the promise, in the installed docstring
    sc = _scenario("decode", [TT_SPECS[which]], [(0, [list(range(4090, 4096))], "float32"), (0, [[4096]], "float32")])
    raw = run_scenario(ad, sc, "cpu")
    assert Outcome.of(raw[0].outcome) is Outcome.CONFORMS
    assert Outcome.of(raw[1].outcome) is Outcome.ERROR and "IndexError" in raw[1].message, raw[1].message
    r = _play(ad, sc)[-1]                               # the suite reports it: registered, never hidden
    assert Outcome.of(r.outcome) is Outcome.KNOWN and r.known_id == "torchtune-max-seq-len-indexerror"
    # the stateless adapter (its own growing cache) computes that position, and it conforms
    spec = RopeSpec(**TT_SPECS[which])
    ok = judge(ad, spec, make_input(spec, 1, 2, 1, "float32", 2), np.array([[4096]]), dtype="float32")
    assert Outcome.of(ok.outcome) is Outcome.CONFORMS, ok.message
