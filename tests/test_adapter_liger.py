"""Liger-Kernel adapters (adapters/liger.py).

The three kinds of tests (pure, stand-in plumbing, real GPU) are described in tests/gpu_helpers.py.
"""

from __future__ import annotations

import numpy as np
import pytest

from gpu_helpers import (ARBITRARY, CALLER_TABLE_ROPE_TYPES, GPU_DTYPES, PER_BATCH, SPECS, _assert_conforms_gpu,
                         _gpu_adapter, _install, _judge_cpu, _range, _streams, check_availability_reasons,
                         check_gpu_check_plan, check_no_gpu_only, check_no_gpu_refusal, check_registry, needs_gpu,
                         needs_torch, torch)
from ropeconf.adapters import liger as lg

LIGER_CLASSES = [lg.LigerRotary, lg.LigerRotaryF32Cache]


# =========================================================================== pure: tables
def test_liger_cos_sin_duplicates_halves_and_collapses_equal_batches():
    c = np.arange(2 * 3 * 4, dtype=np.float64).reshape(2, 3, 4)
    s = -c
    # HF's emb = cat(freqs, freqs): Liger loads only the first half of each row (ops/rope.py: cos_offsets < hd // 2)
    cc, ss = lg.liger_cos_sin(c, s, np.stack([np.arange(3), np.arange(3)]))
    assert cc.shape == (1, 3, 8) and np.array_equal(cc[..., :4], c[:1]) and np.array_equal(cc[..., 4:], c[:1])
    assert np.array_equal(ss[..., 4:], s[:1])
    cc, _ = lg.liger_cos_sin(c, s, np.stack([np.arange(3), np.arange(1, 4)]))
    assert cc.shape == (2, 3, 8)  # (bsz, seq, head_dim): Liger's per-batch form


# =========================================================================== declarations and reasons
def test_registry_names_and_classes():
    check_registry("liger", LIGER_CLASSES)


def test_capabilities_declared_honestly():
    caps = {c.name: c().capabilities for c in LIGER_CLASSES}
    assert set(caps["liger"].rope_types) == CALLER_TABLE_ROPE_TYPES
    assert not caps["liger"].partial
    assert caps["liger"].layouts == ("half",)
    assert caps["liger"].mrope and caps["liger"].axial


def test_availability_names_the_missing_gpu_and_library(monkeypatch):
    check_availability_reasons(monkeypatch, LIGER_CLASSES, lg.LigerRotary, "liger_kernel")


def test_availability_without_a_gpu_only(monkeypatch):
    check_no_gpu_only(monkeypatch, LIGER_CLASSES)


@pytest.mark.parametrize("cls,spec,positions,text", [
    (lg.LigerRotary, SPECS["interleaved"], _range(), "layout=interleaved"),
    (lg.LigerRotary, SPECS["partial"], _range(), "partial rotation"),
], ids=lambda v: v.__name__ if isinstance(v, type) else None)
def test_why_unsupported_spec_limits(cls, spec, positions, text):
    why = cls().why_unsupported(spec, "float32", "cuda", positions)
    assert why is not None and text in why, why


@pytest.mark.parametrize("cls", LIGER_CLASSES, ids=lambda c: c.__name__)
def test_no_gpu_means_cuda_unavailable_and_cpu_unsupported(cls, monkeypatch):
    check_no_gpu_refusal(monkeypatch, cls, SPECS["default"])


def test_gpu_check_script_plans_every_step_and_adapter():
    check_gpu_check_plan("liger")


# =========================================================================== plumbing with stand-in libraries
def fake_liger_rotary_pos_emb(q, k, cos, sin, position_ids=None, unsqueeze_dim=1):
    """Liger's contract (ops/rope.py): HF half layout over the whole head, first half of cos/sin, cos dtype."""
    h = q.shape[-1] // 2
    assert cos.shape[-1] == q.shape[-1] and torch.equal(cos[..., :h], cos[..., h:])
    c, s = cos[..., :h].unsqueeze(1), sin[..., :h].unsqueeze(1)

    def rot(t):
        t1, t2 = t[..., :h].to(c.dtype), t[..., h:].to(c.dtype)
        return torch.cat([t1 * c - t2 * s, t2 * c + t1 * s], -1).to(t.dtype)

    return rot(q), rot(k)


LIGER_CASES = [("default", _range()), ("default", ARBITRARY), ("yarn", PER_BATCH), ("longrope", _range()),
               ("llama3", _range(start=60)), ("xpos", _range(start=100)), ("mrope", _streams(_range())),
               ("mrope-interleaved", _streams(ARBITRARY))]


def _liger_cases():
    return [pytest.param(c, sn, p, id=f"{c.name}-{sn}-{i}") for c in LIGER_CLASSES
            for i, (sn, p) in enumerate(LIGER_CASES) if c.capabilities.xpos or not SPECS[sn].xpos]


@needs_torch
@pytest.mark.parametrize("cls,spec_name,pos", _liger_cases())
def test_liger_plumbing_with_stand_in(monkeypatch, cls, spec_name, pos):
    _install(monkeypatch, "liger_kernel.transformers.rope", liger_rotary_pos_emb=fake_liger_rotary_pos_emb)
    spec, a = SPECS[spec_name], cls()
    assert a.capabilities.why_unsupported(spec, "float32", "cuda", pos) is None
    for dtype in ("float32", "bfloat16"):
        assert _judge_cpu(a, spec, pos, dtype) <= 1.0, dtype


# =========================================================================== real GPU tests
@needs_gpu
@pytest.mark.parametrize("dtype", GPU_DTYPES)
@pytest.mark.parametrize("cls,spec_name,pos", _liger_cases())
def test_liger_conforms_gpu(cls, spec_name, pos, dtype):
    a = _gpu_adapter(cls)
    spec = SPECS[spec_name]
    assert a.why_unsupported(spec, dtype, "cuda", pos) is None, a.why_unsupported(spec, dtype, "cuda", pos)
    _assert_conforms_gpu(a, spec, pos, dtype)
