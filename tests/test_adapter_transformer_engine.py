"""TransformerEngine adapters (adapters/transformer_engine.py).

The three kinds of tests (pure, stand-in plumbing, real GPU) are described in tests/gpu_helpers.py.
"""

from __future__ import annotations

import numpy as np
import pytest

from gpu_helpers import (ARBITRARY, CALLER_TABLE_ROPE_TYPES, FA_POSITIONS, GPU_DTYPES, PER_BATCH, SPECS,
                         _assert_conforms_gpu, _gpu_adapter, _install, _judge_cpu, _range, check_availability_reasons,
                         check_gpu_check_plan, check_no_gpu_only, check_no_gpu_refusal, check_registry, needs_gpu,
                         needs_torch, torch)
from ropeconf.adapters import _gpu
from ropeconf.adapters import transformer_engine as te
from ropeconf.reference import inv_freq

TE_CLASSES = [te.TransformerEngineRotary, te.TransformerEngineRotaryF32Cache, te.TransformerEngineRotaryBSHD,
              te.TransformerEngineRotaryTHD]


# =========================================================================== pure: freqs, formats, offsets
def test_te_freqs_layout_per_element():
    a = np.array([[0.1, 0.2, 0.3]])
    half = te.te_freqs(a, "half")
    inter = te.te_freqs(a, "interleaved")
    assert half.shape == (1, 1, 1, 6) and half.dtype == np.float32
    # rope.py RotaryPositionEmbedding: cat((freqs, freqs)) / stack((freqs, freqs)) per element
    assert np.allclose(half.ravel(), [0.1, 0.2, 0.3, 0.1, 0.2, 0.3])
    assert np.allclose(inter.ravel(), [0.1, 0.1, 0.2, 0.2, 0.3, 0.3])


@pytest.mark.parametrize("fmt,shape", [("sbhd", (5, 2, 3, 4)), ("bshd", (2, 5, 3, 4)), ("thd", (10, 3, 4))])
def test_te_formats_round_trip(fmt, shape):
    x = np.arange(2 * 3 * 5 * 4).reshape(2, 3, 5, 4)  # (batch, heads, seq, dim)
    y = te.te_to_format(x, fmt)
    assert y.shape == shape
    assert np.array_equal(te.te_from_format(y, fmt, x.shape), x)
    if fmt != "thd":  # token (b=1, s=2), head 0 lands where TE expects it
        assert np.array_equal(y[(2, 1) if fmt == "sbhd" else (1, 2)][0], x[1, 0, 2])
    else:
        assert np.array_equal(y[1 * 5 + 2, 0], x[1, 0, 2])


def test_te_arguments():
    a = te.te_arguments(SPECS["default"], _range())
    assert a["start_positions"] is None and a["fused"] is True and a["interleaved"] is False
    b = te.te_arguments(SPECS["interleaved"], _range(start=7), "thd")
    # TE has no scalar offset: one start is a (batch,) int32 tensor of it
    assert b["start_positions"].dtype == np.int32 and np.array_equal(b["start_positions"], [7, 7])
    assert np.array_equal(b["cu_seqlens"], [0, 16, 32]) and b["interleaved"] is True
    with pytest.raises(ValueError):
        te.te_arguments(SPECS["default"], _range(), "hsbd")


def test_te_angles_ref_and_f32():
    spec = SPECS["default"]
    rows = np.arange(0, 2 ** 20, 4099, dtype=np.int64)
    ref = te.te_angles(spec, rows, None, "ref")
    f32 = te.te_angles(spec, rows, None, "f32")
    w = inv_freq(spec)[0]
    exact = rows[:, None].astype(np.float64) * w
    assert ref.dtype == f32.dtype == np.float32
    assert np.max(np.abs(ref - exact) / np.maximum(np.abs(exact), 1e-300)) <= 2.0 ** -24
    expected32 = rows.astype(np.float32)[:, None] * w.astype(np.float32)
    assert np.array_equal(f32, expected32)
    assert np.max(np.abs(f32 - exact)) > np.max(np.abs(ref - exact))  # the float32 product is the worse one


# =========================================================================== declarations and reasons
def test_registry_names_and_classes():
    check_registry("transformer_engine", TE_CLASSES)


def test_capabilities_declared_honestly():
    caps = {c.name: c().capabilities for c in TE_CLASSES}
    prec = {c.name: c().precision for c in TE_CLASSES}
    assert set(caps["te"].rope_types) == CALLER_TABLE_ROPE_TYPES
    assert caps["te"].partial
    assert not caps["te"].mrope
    assert not caps["te"].xpos
    assert prec["te"].angle_dtype == "float32" and prec["te"].compute_dtype == "float32"


def test_availability_names_the_missing_gpu_and_library(monkeypatch):
    check_availability_reasons(monkeypatch, TE_CLASSES, te.TransformerEngineRotaryTHD, "transformer_engine")


def test_availability_without_a_gpu_only(monkeypatch):
    monkeypatch.setattr(te, "_import_reasons", lambda mods: [])
    monkeypatch.setattr(te, "_te_apply", lambda: (lambda *a, **k: None))
    check_no_gpu_only(monkeypatch, TE_CLASSES)


@pytest.mark.parametrize("cls,spec,positions,text", [
    (te.TransformerEngineRotary, SPECS["yarn"], _range(), "attention factor"),
    (te.TransformerEngineRotary, SPECS["default"], ARBITRARY, "start_b + 0..seq-1"),
    (te.TransformerEngineRotary, SPECS["xpos"], _range(), "xpos"),
], ids=lambda v: v.__name__ if isinstance(v, type) else None)
def test_why_unsupported_spec_limits(cls, spec, positions, text):
    why = cls().why_unsupported(spec, "float32", "cuda", positions)
    assert why is not None and text in why, why


@pytest.mark.parametrize("cls", TE_CLASSES, ids=lambda c: c.__name__)
def test_no_gpu_means_cuda_unavailable_and_cpu_unsupported(cls, monkeypatch):
    check_no_gpu_refusal(monkeypatch, cls, SPECS["default"])


def test_gpu_check_script_plans_every_step_and_adapter():
    check_gpu_check_plan("transformer_engine")


# =========================================================================== plumbing with stand-in libraries
def fake_te_apply_rotary_pos_emb(t, freqs, tensor_format="sbhd", start_positions=None, interleaved=False,
                                 fused=False, cu_seqlens=None, cp_size=1, cp_rank=0):
    """TE's fused contract (fused_rope.cu): sincosf(freqs[s + start_b, d]) per element, float32, tail copied."""
    assert freqs.dtype == torch.float32 and freqs.dim() == 4 and fused
    d2 = freqs.shape[-1]
    out = t.clone()
    if tensor_format == "thd":
        views = [(slice(int(cu_seqlens[b]), int(cu_seqlens[b + 1])),) for b in range(len(cu_seqlens) - 1)]
    elif tensor_format == "sbhd":
        views = [(slice(None), b) for b in range(t.shape[1])]
    else:
        views = [(b,) for b in range(t.shape[0])]
    for b, v in enumerate(views):
        xs = t[v].float()  # (s, h, d)
        start = 0 if start_positions is None else int(start_positions[b])
        f = freqs[torch.arange(xs.shape[0]) + start, 0, 0, :][:, None, :]
        x = xs[..., :d2]
        if interleaved:
            rot = torch.stack([-x[..., 1::2], x[..., 0::2]], -1).flatten(-2)
        else:
            rot = torch.cat([-x[..., d2 // 2:], x[..., : d2 // 2]], -1)
        out[v + (Ellipsis, slice(0, d2))] = (x * torch.cos(f) + rot * torch.sin(f)).to(t.dtype)
    return out


@needs_torch
@pytest.mark.parametrize("cls", TE_CLASSES, ids=lambda c: c.name)
@pytest.mark.parametrize("spec_name", ["default", "interleaved", "partial", "llama3", "dynamic"])
@pytest.mark.parametrize("pos_name", ["range", "offset", "per-batch", "long-per-batch"])
def test_te_plumbing_with_stand_in(monkeypatch, cls, spec_name, pos_name):
    _install(monkeypatch, "transformer_engine.pytorch.attention.rope",
             apply_rotary_pos_emb=fake_te_apply_rotary_pos_emb)
    spec, pos = SPECS[spec_name], FA_POSITIONS[pos_name]
    a = cls()
    assert a.capabilities.why_unsupported(spec, "float32", "cuda", pos) is None
    for dtype in ("float32", "bfloat16"):
        assert _judge_cpu(a, spec, pos, dtype) <= 1.0, dtype


@needs_torch
def test_te_older_signature_limits(monkeypatch):
    def old_apply(t, freqs, tensor_format="sbhd", fused=False, cu_seqlens=None):  # TE before interleaved/offsets
        return t

    _install(monkeypatch, "transformer_engine.pytorch.attention.rope", apply_rotary_pos_emb=old_apply)
    monkeypatch.setattr(_gpu, "cuda_available", lambda: True)
    a = te.TransformerEngineRotary()
    assert "no interleaved" in a.why_unsupported(SPECS["interleaved"], "float32", "cuda", _range())
    assert "no start_positions" in a.why_unsupported(SPECS["default"], "float32", "cuda", PER_BATCH)
    assert a.why_unsupported(SPECS["default"], "float32", "cuda", _range()) is None


# =========================================================================== real GPU tests
@needs_gpu
@pytest.mark.parametrize("dtype", GPU_DTYPES)
@pytest.mark.parametrize("cls", TE_CLASSES, ids=lambda c: c.name)
@pytest.mark.parametrize("spec_name", ["default", "interleaved", "partial", "linear", "llama3"])
@pytest.mark.parametrize("pos_name", ["range", "offset", "per-batch"])
def test_transformer_engine_conforms_gpu(cls, spec_name, pos_name, dtype):
    # A float32 divergence here at short positions would mean TE's sincosf is not within 2 ulp
    # (for example a fast-math build): a finding about TE, not a test bug.
    a = _gpu_adapter(cls)
    spec, pos = SPECS[spec_name], FA_POSITIONS[pos_name]
    assert a.why_unsupported(spec, dtype, "cuda", pos) is None, a.why_unsupported(spec, dtype, "cuda", pos)
    _assert_conforms_gpu(a, spec, pos, dtype)
