"""Hugging Face transformers adapter (adapters/hf.py): mapping, declared limits, findings.

Runs only where torch and transformers import (the project's .venv).  The findings asserted at the
end are the ones docs/findings/hf.md and conformance/known/hf.toml record.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

pytest.importorskip("torch", reason="torch not installed (the hf adapter needs the peer venv)")
pytest.importorskip("transformers", reason="transformers not installed (pip install 'transformers>=5')")

from ropeconf.adapters._torch import cuda_available  # noqa: E402
from ropeconf.adapters.hf import HFTransformers  # noqa: E402
from ropeconf.conformance import registry  # noqa: E402
from ropeconf.conformance.judge import judge, judge_case, make_input  # noqa: E402
from ropeconf.conformance.tolerance import angle_magnitude, pair_norm  # noqa: E402
from ropeconf.reference import RopeSpec, angles, apply  # noqa: E402
from ropeconf.reference.variants import VARIANTS  # noqa: E402

U32 = 2.0 ** -24

# Per-element bound for float64 input at short positions (0..15 and a few scattered ones):
#     |out - ref| <= |pair| * u32 * (C_ANGLE * |phi| + C_CONST),   C_ANGLE = 16, C_CONST = 8,
# |pair| = norm of the expected output pair, phi = the exact angle of that pair.  Why: HF forms the angles in
# float32 for every dtype (position_ids.float() * inv_freq).  (a) inv_freq is float32: pow of a rounded
# exponent, a division and the scaling blend; the worst relative error over the whole variant grid is
# 14.9 u32 (llama3, theta 5e5, rotary_dim 48: see the finding below), 4.4 u32 for the specs used here;
# (b) the product p * omega: 1 u32 relative; so |d phi| <= 16 u32 |phi|.  (c) cos/sin in float32 and
# (d) the attention factor rounded to float32 and multiplied in float32: <= 2 u32 each; the rotation and
# the cast are float64 (negligible).  C_CONST = 8 leaves a factor 2 over (c) + (d).  Measured: <= 15 u32.
C_ANGLE, C_CONST = 16.0, 8.0


def _bound(spec, ref, pos):
    phi = angle_magnitude(np.asarray(angles(spec, pos)), spec.rotary_dim, spec.head_dim, spec.layout)
    return pair_norm(ref, spec.rotary_dim, spec.layout) * U32 * (C_ANGLE * phi[:, None] + C_CONST)


def _run(spec, pos, dtype="float64", heads=2, seed=0, x=None):
    a = HFTransformers()
    if x is None:
        x = make_input(spec, pos.shape[0], heads, pos.shape[1], dtype, seed)
    y = np.asarray(a.run(x, pos, spec, dtype=dtype), dtype=np.float64)
    ref = np.asarray(apply(spec, np.asarray(x).astype(np.float64), pos))
    return x, y, ref


def _short(batch=2, seq=16, streams=None):
    p = np.broadcast_to(np.arange(seq, dtype=np.int64), (batch, seq)).copy()
    if streams:
        p = np.stack([p, p // 2, p % 5][:streams], axis=-1)
    return p


_N = 32  # pairs of a head_dim 64 spec
_SF = [1.0 + 0.05 * i / _N for i in range(_N)]
_LF = [1.0 + 20.0 * i / _N for i in range(_N)]

SUPPORTED = {
    "default": RopeSpec(head_dim=64),
    "theta500k": RopeSpec(head_dim=64, rope_theta=500000.0),
    "linear": RopeSpec(head_dim=64, rope_type="linear", factor=4.0),
    # L0 = 8 so that max(positions)+1 = 16 engages the dynamic base inside positions 0..15
    "dynamic": RopeSpec(head_dim=64, rope_type="dynamic", factor=4.0, original_max_position_embeddings=8),
    "yarn": RopeSpec(head_dim=64, rope_type="yarn", factor=8.0, original_max_position_embeddings=4096),
    "yarn-notrunc": RopeSpec(head_dim=64, rope_type="yarn", factor=32.0, rope_theta=150000.0,
                             original_max_position_embeddings=4096, truncate=False),
    "yarn-deepseek": RopeSpec(head_dim=64, rope_type="yarn", factor=40.0, original_max_position_embeddings=4096,
                              mscale=1.0, mscale_all_dim=0.707, beta_fast=32.0, beta_slow=1.0),
    "yarn-attention": RopeSpec(head_dim=64, rope_type="yarn", factor=4.0, original_max_position_embeddings=2048,
                               attention_factor=1.25),
    # explicit factor (8) wins over max_position_embeddings / L0 (32): HF >= PR #40320, as the reference
    "yarn-explicit-factor": RopeSpec(head_dim=64, rope_type="yarn", factor=8.0, original_max_position_embeddings=4096,
                                     max_position_embeddings=131072),
    # L0 = 8: positions 0..15 use the long factors (whole-call switch, max(positions)+1 = 16 > 8)
    "longrope-long": RopeSpec(head_dim=64, rope_type="longrope", factor=16.0, original_max_position_embeddings=8,
                              short_factor=_SF, long_factor=_LF),
    "longrope-short": RopeSpec(head_dim=64, rope_type="longrope", factor=16.0, original_max_position_embeddings=16,
                               short_factor=_SF, long_factor=_LF),
    # no factor: HF and the reference take max_position_embeddings / L0
    "longrope-nofactor": RopeSpec(head_dim=64, rope_type="longrope", original_max_position_embeddings=8,
                                  max_position_embeddings=256, short_factor=_SF, long_factor=_LF),
    "llama3": RopeSpec(head_dim=64, rope_type="llama3", factor=8.0, original_max_position_embeddings=64,
                       low_freq_factor=1.0, high_freq_factor=4.0),
    "partial-neox": RopeSpec(head_dim=64, partial_rotary_factor=0.25),
    "partial-odd-tail": RopeSpec(head_dim=70, rotary_dim=64),
    "partial-yarn": RopeSpec(head_dim=80, partial_rotary_factor=0.4, rope_type="yarn", factor=4.0,
                             original_max_position_embeddings=2048),
    "partial-dynamic": RopeSpec(head_dim=96, rotary_dim=64, rope_type="dynamic", factor=2.0,
                                original_max_position_embeddings=8),
    "mrope": RopeSpec(head_dim=64, rope_theta=1e6, mrope_section=[8, 12, 12]),
    "mrope-interleaved": RopeSpec(head_dim=64, rope_theta=1e6, mrope_section=[12, 10, 10], mrope_interleaved=True),
    "mrope-interleaved-partial": RopeSpec(head_dim=96, rotary_dim=64, rope_theta=1e6, mrope_section=[12, 10, 10],
                                          mrope_interleaved=True),
}


def test_declares_name_distribution_and_capabilities():
    a = HFTransformers()
    assert (a.name, a.distribution, a.requires) == ("hf", "transformers", ("torch", "transformers"))
    assert a.availability() is None
    caps = a.capabilities
    assert set(caps.rope_types) == {"default", "linear", "dynamic", "yarn", "longrope", "llama3"}
    assert caps.layouts == ("half",) and caps.partial and caps.positions == "arbitrary"
    assert a.precision.angle_dtype == "float32"  # HF forms angles in float32 even for float64 activations
    assert {"float64", "float32", "float16", "bfloat16"} <= set(caps.dtypes)


@pytest.mark.parametrize("name", sorted(SUPPORTED))
def test_supported_specs_match_reference_float64_short(name):
    spec = SUPPORTED[name]
    pos = _short(streams=3 if spec.mrope_section else None)
    assert HFTransformers().why_unsupported(spec, "float64", "cpu", pos) is None
    _, y, ref = _run(spec, pos)
    err = np.abs(y - ref)
    bound = _bound(spec, ref, pos)
    assert np.all(err <= bound), f"{name}: worst {np.max(err / bound):.2f} x bound"
    # and well inside it: measured <= 15 u32 * |pair|
    assert np.max(err / pair_norm(ref, spec.rotary_dim, spec.layout)) < 32 * U32


@pytest.mark.parametrize("dtype", ["float32", "float16", "bfloat16"])
@pytest.mark.parametrize("name", ["default", "yarn", "longrope-long", "partial-neox"])
def test_lower_precision_conforms_under_tolerance_model(name, dtype):
    spec = SUPPORTED[name]
    pos = np.stack([np.arange(8) + 2 ** 20 - 8, np.arange(8) * 37]).astype(np.int64)
    r = judge_case(HFTransformers(), spec, pos, dtype=dtype, heads=2)
    assert r.outcome == "conforms", r.message


@pytest.mark.parametrize("spec, what", [
    (RopeSpec(head_dim=64, rope_type="ntk", factor=4.0), "rope_type=ntk"),
    (RopeSpec(head_dim=64, layout="interleaved"), "layout=interleaved"),
    (RopeSpec(head_dim=64, xpos=True), "xpos"),
    (RopeSpec(head_dim=64, freqs_for="pixel"), "freqs_for=pixel"),
    (RopeSpec(head_dim=64, freqs_for="constant", num_freqs=32), "freqs_for=constant"),
    (RopeSpec(head_dim=64, freqs_for="custom", inv_freq=[1.0] * 32), "freqs_for=custom"),
    (RopeSpec(head_dim=64, axial_axes=2), "axial"),
    (RopeSpec(head_dim=64, rope_type="longrope", factor=4.0, original_max_position_embeddings=8,
              short_factor=_SF, long_factor=_LF, longrope_switch="position"), "longrope_switch"),
    (RopeSpec(head_dim=64, mrope_section=[16, 16]), "3 sections"),
    (RopeSpec(head_dim=96, rotary_dim=64, mrope_section=[8, 12, 12]), "chunked mrope_section with partial"),
])
def test_unsupported_specs_are_declared(spec, what):
    a = HFTransformers()
    why = a.why_unsupported(spec, "float32", "cpu")
    assert why and what in why
    pos = _short(streams=spec.n_streams if spec.n_streams > 1 else None)
    with pytest.raises(ValueError, match="hf adapter"):
        a.run(make_input(spec, 2, 1, 16, "float32", 0), pos, spec, dtype="float32")


def test_unsupported_positions_and_device():
    a = HFTransformers()
    spec = RopeSpec(head_dim=64)
    assert "non-integer" in a.why_unsupported(spec, "float32", "cpu", np.array([[0.0, 1.5]]))
    dyn = SUPPORTED["dynamic"]
    assert "empty" in a.why_unsupported(dyn, "float32", "cpu", np.zeros((1, 0), dtype=np.int64))
    if not cuda_available():  # CUDA is declared; a machine without it makes those cells unavailable
        assert a.why_unsupported(spec, "float32", "cuda") is None
        assert "torch.cuda.is_available() is False" in a.device_unavailable("cuda")


def test_mapping_sensitive_half_layout_arbitrary_positions():
    """Non-symmetric x, positions > 0, non-contiguous and different per batch row."""
    spec = RopeSpec(head_dim=16)
    pos = np.array([[3, 17, 5, 40, 1000, 7], [100, 2, 2, 9, 77, 4096]], dtype=np.int64)
    x = (np.arange(2 * 3 * 6 * 16, dtype=np.float64).reshape(2, 3, 6, 16) % 11 - 4.5) / 3.0
    x[..., 8:] *= -1.7  # the two halves differ: a pairing or sign mix-up cannot cancel out
    _, y, ref = _run(spec, pos, x=x)
    assert np.all(np.abs(y - ref) <= _bound(spec, ref, pos))
    # the checks above can fail: the interleaved pairing, swapped rows or a per-row offset give other outputs
    wrong_layout = np.asarray(apply(spec.replace(layout="interleaved"), x, pos))
    swapped_rows = np.asarray(apply(spec, x, pos[::-1]))
    contiguous = np.asarray(apply(spec, x, pos[:, :1] + np.arange(6)))
    for other in (wrong_layout, swapped_rows, contiguous):
        assert np.max(np.abs(y - other)) > 1e-2


def test_partial_rotation_passes_the_tail_bit_exactly():
    spec = SUPPORTED["partial-odd-tail"]
    pos = np.array([[5, 1, 9, 300]], dtype=np.int64)
    for dtype in ("float32", "bfloat16"):
        x = make_input(spec, 1, 2, 4, dtype, 3)
        y = np.asarray(HFTransformers().run(x, pos, spec, dtype=dtype))
        assert np.array_equal(y[..., 64:], np.asarray(x).astype(np.float64)[..., 64:])


def test_fresh_module_per_call_no_state_leak():
    """HF's dynamic NTK and LongRoPE updates are stateful; the adapter rebuilds the module per call."""
    a = HFTransformers()
    for spec in (SUPPORTED["dynamic"], SUPPORTED["longrope-long"]):
        long_pos = np.array([[0, 5, 200]], dtype=np.int64)
        short_pos = np.array([[0, 3, 5]], dtype=np.int64)  # max + 1 = 6 <= L0 = 8: plain / short factors
        x = make_input(spec, 1, 1, 3, "float64", 1)
        first_short = a.run(x, short_pos, spec, dtype="float64")
        a.run(x, long_pos, spec, dtype="float64")
        again_short = a.run(x, short_pos, spec, dtype="float64")
        assert np.array_equal(first_short, again_short)
        ref = np.asarray(apply(spec, x, short_pos))
        assert np.all(np.abs(again_short - ref) <= _bound(spec, ref, short_pos))


def test_dynamic_reads_l0_from_max_position_embeddings():
    """The mapping: HF's dynamic NTK uses config.max_position_embeddings as L0."""
    a = HFTransformers()
    spec = SUPPORTED["dynamic"]
    config, _, _ = a.build(spec)
    assert config.max_position_embeddings == spec.original_max_position_embeddings
    assert config.rope_parameters["factor"] == spec.factor


# ---------------------------------------------------------------------------------------------- findings
def _entries():
    return registry.load([registry.KNOWN_DIR / "hf.toml"])


def test_llama3_float32_omega_conditioning_is_within_the_model():
    """HF's float32 Llama 3 smoothing amplifies the float32 exponent rounding of omega (kappa ~ 3).

    The tolerance model derives that amplification (tolerance.angle_error_factor), so this
    conventional-float32 behaviour conforms; a real formula difference would not.
    """
    spec = VARIANTS["llama3"].spec(head_dim=48, rotary_dim=48)
    pos = (2 ** 16 - 16 + np.arange(16))[None].astype(np.int64)
    r = judge_case(HFTransformers(), spec, pos, dtype="float64", heads=2)
    assert r.outcome == "conforms" and r.max_ratio > 0.3, r.max_ratio  # a visible, modelled share
    # a factor off by 6 % at the same positions is caught: the wider llama3 band is not blind
    r_def = judge(HFTransformers(), spec, make_input(spec, 1, 2, 16, "float64", 0), pos, dtype="float64",
                  expected=np.asarray(apply(spec.replace(factor=8.5), make_input(spec, 1, 2, 16, "float64", 0)
                                            .astype(float), pos)))
    assert r_def.outcome == "diverges"


def test_finding_yarn_correction_range_double_rounding():
    """conformance/known/hf.toml hf-yarn-correction-range-double-rounding."""
    spec = RopeSpec(head_dim=128, rope_type="yarn", rope_theta=461754.91841972177, factor=4.0,
                    original_max_position_embeddings=32768)
    pos = np.arange(8)[None].astype(np.int64)
    x = make_input(spec, 1, 2, 8, "float32", 0)
    r = judge(HFTransformers(), spec, x, pos, dtype="float32")
    assert r.outcome == "diverges" and r.max_ratio > 50
    # the neighbouring double theta conforms: the decision sits on a 1e-17 boundary
    close = spec.replace(rope_theta=461754.9184197218)
    assert judge(HFTransformers(), close, x, pos, dtype="float32").outcome == "conforms"
