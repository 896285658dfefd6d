"""flash-attn adapters (adapters/flash_attn.py) and the offset table they share with TE (adapters/_gpu.py).

The three kinds of tests (pure, stand-in plumbing, real GPU) are described in tests/gpu_helpers.py.
"""

from __future__ import annotations

import numpy as np
import pytest

from gpu_helpers import (ARBITRARY, CALLER_TABLE_ROPE_TYPES, FA_POSITIONS, GPU_DTYPES, PER_BATCH, SPECS,
                         _assert_conforms_gpu, _gpu_adapter, _install, _join, _judge_cpu, _pairs, _range, _streams,
                         check_availability_reasons, check_gpu_check_plan, check_no_gpu_only, check_no_gpu_refusal,
                         check_registry, needs_gpu, needs_torch, torch)
from ropeconf.adapters import _gpu
from ropeconf.adapters import flash_attn as fa
from ropeconf.reference import RopeSpec

FA_CLASSES = [fa.FlashAttnRotary, fa.FlashAttnRotaryF32Cache, fa.FlashAttnRotaryVarlen, fa.FlashAttnRotaryInplace]


# =========================================================================== pure: tables and offsets
def test_offset_table_range_is_a_model_cache_with_scalar_offset_zero():
    rows, offs = _gpu.offset_table(_range(2, 16), n_pairs=32)
    assert offs == 0 and isinstance(offs, int)
    assert np.array_equal(rows, np.arange(16))


def test_offset_table_one_start_gives_the_full_table_and_that_start():
    rows, offs = _gpu.offset_table(_range(2, 8, start=100), n_pairs=32)
    assert offs == 100 and isinstance(offs, int)
    assert np.array_equal(rows, np.arange(108))  # what a model's cache holds: every position 0..max


@pytest.mark.parametrize("positions", [
    PER_BATCH,                                   # per-sequence starts, full table
    _range(2, 12, start=2 ** 20),                # long: compact table, one start -> scalar 0
    np.stack([np.arange(2 ** 20, 2 ** 20 + 6), np.arange(7, 13)]),  # long per sequence: compact blocks
    np.stack([np.arange(-4, 2), np.arange(-4, 2)]),                 # negative: compact
    _range(1, 1, start=3),
], ids=["per-batch", "long-same", "long-per-batch", "negative", "single"])
def test_offset_table_reads_back_every_position(positions):
    rows, offs = _gpu.offset_table(positions, n_pairs=32)
    batch, seq = positions.shape
    offs_b = np.full(batch, offs) if isinstance(offs, int) else offs
    # the library reads row s + offset_b (flash-attn kernel: rm_cs = rm + SEQLEN_OFFSETS[b];
    # TE kernel: s_id_for_freqs = s_id + start_positions[b])
    idx = offs_b[:, None] + np.arange(seq)
    assert idx.min() >= 0 and idx.max() < rows.size
    assert np.array_equal(rows[idx], positions)
    assert rows.size * 32 <= max(_gpu.FULL_TABLE_MAX_ELEMENTS, positions.size * 32)


def test_offset_table_rejects_positions_no_offset_expresses():
    assert _gpu.offset_table(ARBITRARY, 32) is None
    assert _gpu.per_batch_starts(_streams(_range())) is None
    assert _gpu.per_batch_starts(np.zeros((2, 0), np.int64)) is None


def test_flash_attn_arguments_primary_and_varlen():
    spec = SPECS["interleaved"]
    a = fa.flash_attn_arguments(spec, PER_BATCH)
    assert a["interleaved"] is True and "cu_seqlens" not in a
    assert np.array_equal(a["seqlen_offsets"], [5, 300])
    assert fa.flash_attn_arguments(SPECS["default"], _range())["interleaved"] is False
    v = fa.flash_attn_arguments(spec, PER_BATCH, varlen=True)
    # flash_attn/layers/rotary.py: x (total_seqlen, nheads, headdim) with cu_seqlens (batch + 1,) and max_seqlen
    assert v["cu_seqlens"].dtype == np.int32 and np.array_equal(v["cu_seqlens"], [0, 12, 24])
    assert v["max_seqlen"] == 12
    with pytest.raises(ValueError, match="contiguous"):
        fa.flash_attn_arguments(spec, ARBITRARY)


# =========================================================================== declarations and reasons
def test_registry_names_and_classes():
    check_registry("flash_attn", FA_CLASSES)


def test_capabilities_declared_honestly():
    caps = {c.name: c().capabilities for c in FA_CLASSES}
    prec = {c.name: c().precision for c in FA_CLASSES}
    assert set(caps["flash-attn"].rope_types) == CALLER_TABLE_ROPE_TYPES
    assert caps["flash-attn"].partial
    assert "interleaved" in caps["flash-attn"].layouts
    assert not caps["flash-attn"].mrope
    assert caps["flash-attn"].xpos and not caps["flash-attn-f32cache"].xpos
    assert prec["flash-attn"].angle_dtype == "float64" and prec["flash-attn-f32cache"].angle_dtype == "float32"


def test_availability_names_the_missing_gpu_and_library(monkeypatch):
    check_availability_reasons(monkeypatch, FA_CLASSES, fa.FlashAttnRotary, "flash_attn")


def test_availability_without_a_gpu_only(monkeypatch):
    check_no_gpu_only(monkeypatch, FA_CLASSES)


@pytest.mark.parametrize("cls,spec,positions,text", [
    (fa.FlashAttnRotary, SPECS["default"], ARBITRARY, "start_b + 0..seq-1"),
    (fa.FlashAttnRotary, RopeSpec(head_dim=288, rotary_dim=64), _range(), "headdim <= 256"),
    (fa.FlashAttnRotary, SPECS["mrope"], _streams(_range()), "mrope_section"),
    (fa.FlashAttnRotaryF32Cache, SPECS["xpos"], _range(), "xpos"),
], ids=lambda v: v.__name__ if isinstance(v, type) else None)
def test_why_unsupported_spec_limits(cls, spec, positions, text):
    why = cls().why_unsupported(spec, "float32", "cuda", positions)
    assert why is not None and text in why, why


@pytest.mark.parametrize("cls", FA_CLASSES, ids=lambda c: c.__name__)
def test_no_gpu_means_cuda_unavailable_and_cpu_unsupported(cls, monkeypatch):
    check_no_gpu_refusal(monkeypatch, cls, SPECS["default"])


def test_gpu_check_script_plans_every_step_and_adapter():
    check_gpu_check_plan("flash_attn")


# =========================================================================== plumbing with stand-in libraries
def fake_flash_attn_apply_rotary_emb(x, cos, sin, interleaved=False, inplace=False, seqlen_offsets=0,
                                     cu_seqlens=None, max_seqlen=None):
    """flash-attn's contract (ops/triton/rotary.py): asserts, row s + offset_b, float32 math, tail kept."""
    assert x.dtype == cos.dtype == sin.dtype and x.shape[-1] <= 256
    r = 2 * cos.shape[-1]
    seqs = ([(b, slice(None)) for b in range(x.shape[0])] if cu_seqlens is None else
            [(b, slice(int(cu_seqlens[b]), int(cu_seqlens[b + 1]))) for b in range(len(cu_seqlens) - 1)])
    seqlen = x.shape[1] if cu_seqlens is None else max_seqlen
    assert cos.shape[0] >= seqlen
    if isinstance(seqlen_offsets, int):
        assert seqlen_offsets + seqlen <= cos.shape[0]
    out = x if inplace else x.clone()
    for b, sl in seqs:
        xs = x[b] if cu_seqlens is None else x[sl]
        off = seqlen_offsets if isinstance(seqlen_offsets, int) else int(seqlen_offsets[b])
        idx = torch.arange(xs.shape[0]) + off
        assert int(idx.max()) < cos.shape[0]
        c, s = cos[idx].float()[:, None], sin[idx].float()[:, None]
        x1, x2 = _pairs(xs.float(), r, interleaved)
        o = _join(x1 * c - x2 * s, x1 * s + x2 * c, interleaved).to(x.dtype)
        if cu_seqlens is None:
            out[b, :, :, :r] = o
        else:
            out[sl, :, :r] = o
    return out


def _fa_cases(spec_names, pos_names):
    """(class, spec, positions) triples the adapter declares supported (float32 tables have no xPos) and that
    are representable (xPos magnitudes at position 2**19 overflow float32)."""
    return [pytest.param(c, sn, pn, id=f"{c.name}-{sn}-{pn}") for c in FA_CLASSES for sn in spec_names
            for pn in pos_names
            if not (SPECS[sn].xpos and (not c.capabilities.xpos or pn.startswith("long")))]


@needs_torch
@pytest.mark.parametrize("cls,spec_name,pos_name", _fa_cases(["default", "interleaved", "partial", "yarn", "xpos"],
                                                             list(FA_POSITIONS)))
def test_flash_attn_plumbing_with_stand_in(monkeypatch, cls, spec_name, pos_name):
    _install(monkeypatch, "flash_attn.layers.rotary", apply_rotary_emb=fake_flash_attn_apply_rotary_emb)
    spec, pos = SPECS[spec_name], FA_POSITIONS[pos_name]
    a = cls()
    assert a.capabilities.why_unsupported(spec, "float32", "cuda", pos) is None
    for dtype in ("float32", "bfloat16"):
        assert _judge_cpu(a, spec, pos, dtype) <= 1.0, dtype


# =========================================================================== real GPU tests
@needs_gpu
@pytest.mark.parametrize("dtype", GPU_DTYPES)
@pytest.mark.parametrize("cls,spec_name,pos_name", _fa_cases(["default", "interleaved", "partial", "yarn", "llama3",
                                                              "xpos"], list(FA_POSITIONS)))
def test_flash_attn_conforms_gpu(cls, spec_name, pos_name, dtype):
    a = _gpu_adapter(cls)
    spec, pos = SPECS[spec_name], FA_POSITIONS[pos_name]
    assert a.why_unsupported(spec, dtype, "cuda", pos) is None, a.why_unsupported(spec, dtype, "cuda", pos)
    _assert_conforms_gpu(a, spec, pos, dtype)
