"""GPU-only adapters (adapters/gpu_kernels.py): flash-attn, Liger-Kernel, vLLM, TransformerEngine.

Three kinds of tests:

* pure mapping functions and declarations (run everywhere; no GPU, no GPU library):
  the spec -> library-argument mappings, checked against what the upstream sources read
  (cited per test), the availability / unsupported reasons;
* plumbing with stand-in libraries (run where torch imports, on the CPU): tiny torch
  implementations of each library's documented contract (written from the sources cited
  in gpu_kernels.py, not from our reference) are put in ``sys.modules`` and the adapter's
  own ``_call`` runs against them; the result is judged by the tolerance model.  This
  checks the adapter's translation (layouts, offsets, tables, reshapes), not the library;
* real GPU tests (skipped with "needs a CUDA GPU ..." without one, or with the library's
  import error when it is missing): every adapter judged with ``judge_case`` against the
  float64 reference on device="cuda".  scripts/gpu-check.sh runs them on a GPU machine.
"""

from __future__ import annotations

import os
import subprocess
import sys
import types
from pathlib import Path

import numpy as np
import pytest

from ropeconf.adapters import gpu_kernels as gk
from ropeconf.adapters._torch import cuda_available
from ropeconf.conformance.adapter import load_adapter
from ropeconf.conformance.judge import compare, judge_case, make_input, precision_for
from ropeconf.reference import RopeSpec, apply, inv_freq

from ropeconf.adapters import BUILTIN as _BUILTIN  # noqa: E402

GPU_BUILTIN = {k: v for k, v in _BUILTIN.items() if v.startswith("ropeconf.adapters.gpu_kernels:")}

ROOT = Path(__file__).resolve().parents[1]
ALL_CLASSES = [gk.FlashAttnRotary, gk.FlashAttnRotaryF32Cache, gk.FlashAttnRotaryVarlen, gk.FlashAttnRotaryInplace,
               gk.LigerRotary, gk.LigerRotaryF32Cache, gk.VllmRotaryNative, gk.VllmRotaryCuda,
               gk.VllmDeepseekYarnNative, gk.VllmDeepseekYarnCuda, gk.TransformerEngineRotary,
               gk.TransformerEngineRotaryF32Cache, gk.TransformerEngineRotaryBSHD, gk.TransformerEngineRotaryTHD]

_N = 32
_SF = [1.0 + 0.05 * i / _N for i in range(_N)]
_LF = [1.0 + 20.0 * i / _N for i in range(_N)]
SPECS = {
    "default": RopeSpec(head_dim=64),
    "interleaved": RopeSpec(head_dim=64, layout="interleaved"),
    "partial": RopeSpec(head_dim=80, rotary_dim=32),
    "linear": RopeSpec(head_dim=64, rope_type="linear", factor=4.0),
    "ntk": RopeSpec(head_dim=64, rope_type="ntk", factor=4.0),
    "dynamic": RopeSpec(head_dim=64, rope_type="dynamic", factor=4.0, original_max_position_embeddings=2048),
    "yarn": RopeSpec(head_dim=64, rope_type="yarn", factor=8.0, original_max_position_embeddings=4096),
    "yarn-deepseek": RopeSpec(head_dim=64, rope_type="yarn", factor=40.0, original_max_position_embeddings=4096,
                              mscale=1.0, mscale_all_dim=0.707),
    "yarn-notrunc": RopeSpec(head_dim=64, rope_type="yarn", factor=32.0, original_max_position_embeddings=4096,
                             truncate=False, attention_factor=1.25),
    # L0 = 8, factor 16: vLLM (max_model_len = 128 > L0: long factors) and the reference (positions reach
    # past L0: long factors for the call) agree
    "longrope": RopeSpec(head_dim=64, rope_type="longrope", factor=16.0, original_max_position_embeddings=8,
                         short_factor=_SF, long_factor=_LF),
    "llama3": RopeSpec(head_dim=64, rope_type="llama3", factor=8.0, original_max_position_embeddings=64),
    "xpos": RopeSpec(head_dim=64, xpos=True),
    "mrope": RopeSpec(head_dim=64, rope_theta=1e6, mrope_section=[8, 12, 12]),
    "mrope-interleaved": RopeSpec(head_dim=64, rope_theta=1e6, mrope_section=[12, 10, 10], mrope_interleaved=True),
}


def _range(batch=2, seq=16, start=0):
    return np.broadcast_to(np.arange(start, start + seq, dtype=np.int64), (batch, seq)).copy()


def _streams(p):
    return np.stack([p, p // 2, p % 5], axis=-1)


PER_BATCH = np.stack([np.arange(5, 17), np.arange(300, 312)]).astype(np.int64)
ARBITRARY = np.array([[0, 7, 3, 3, 12, 40], [5, 1, 2, 99, 4, 6]], dtype=np.int64)


# =========================================================================== pure: tables and offsets
def test_offset_table_range_is_a_model_cache_with_scalar_offset_zero():
    rows, offs = gk.offset_table(_range(2, 16), n_pairs=32)
    assert offs == 0 and isinstance(offs, int)
    assert np.array_equal(rows, np.arange(16))


def test_offset_table_one_start_gives_the_full_table_and_that_start():
    rows, offs = gk.offset_table(_range(2, 8, start=100), n_pairs=32)
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
    rows, offs = gk.offset_table(positions, n_pairs=32)
    batch, seq = positions.shape
    offs_b = np.full(batch, offs) if isinstance(offs, int) else offs
    # the library reads row s + offset_b (flash-attn kernel: rm_cs = rm + SEQLEN_OFFSETS[b];
    # TE kernel: s_id_for_freqs = s_id + start_positions[b])
    idx = offs_b[:, None] + np.arange(seq)
    assert idx.min() >= 0 and idx.max() < rows.size
    assert np.array_equal(rows[idx], positions)
    assert rows.size * 32 <= max(gk.FULL_TABLE_MAX_ELEMENTS, positions.size * 32)


def test_offset_table_rejects_positions_no_offset_expresses():
    assert gk.offset_table(ARBITRARY, 32) is None
    assert gk.per_batch_starts(_streams(_range())) is None
    assert gk.per_batch_starts(np.zeros((2, 0), np.int64)) is None


def test_flash_attn_arguments_primary_and_varlen():
    spec = SPECS["interleaved"]
    a = gk.flash_attn_arguments(spec, PER_BATCH)
    assert a["interleaved"] is True and "cu_seqlens" not in a
    assert np.array_equal(a["seqlen_offsets"], [5, 300])
    assert gk.flash_attn_arguments(SPECS["default"], _range())["interleaved"] is False
    v = gk.flash_attn_arguments(spec, PER_BATCH, varlen=True)
    # flash_attn/layers/rotary.py: x (total_seqlen, nheads, headdim) with cu_seqlens (batch + 1,) and max_seqlen
    assert v["cu_seqlens"].dtype == np.int32 and np.array_equal(v["cu_seqlens"], [0, 12, 24])
    assert v["max_seqlen"] == 12
    with pytest.raises(ValueError, match="contiguous"):
        gk.flash_attn_arguments(spec, ARBITRARY)


def test_liger_cos_sin_duplicates_halves_and_collapses_equal_batches():
    c = np.arange(2 * 3 * 4, dtype=np.float64).reshape(2, 3, 4)
    s = -c
    # HF's emb = cat(freqs, freqs): Liger loads only the first half of each row (ops/rope.py: cos_offsets < hd // 2)
    cc, ss = gk.liger_cos_sin(c, s, np.stack([np.arange(3), np.arange(3)]))
    assert cc.shape == (1, 3, 8) and np.array_equal(cc[..., :4], c[:1]) and np.array_equal(cc[..., 4:], c[:1])
    assert np.array_equal(ss[..., 4:], s[:1])
    cc, _ = gk.liger_cos_sin(c, s, np.stack([np.arange(3), np.arange(1, 4)]))
    assert cc.shape == (2, 3, 8)  # (bsz, seq, head_dim): Liger's per-batch form


def test_te_freqs_layout_per_element():
    a = np.array([[0.1, 0.2, 0.3]])
    half = gk.te_freqs(a, "half")
    inter = gk.te_freqs(a, "interleaved")
    assert half.shape == (1, 1, 1, 6) and half.dtype == np.float32
    # rope.py RotaryPositionEmbedding: cat((freqs, freqs)) / stack((freqs, freqs)) per element
    assert np.allclose(half.ravel(), [0.1, 0.2, 0.3, 0.1, 0.2, 0.3])
    assert np.allclose(inter.ravel(), [0.1, 0.1, 0.2, 0.2, 0.3, 0.3])


@pytest.mark.parametrize("fmt,shape", [("sbhd", (5, 2, 3, 4)), ("bshd", (2, 5, 3, 4)), ("thd", (10, 3, 4))])
def test_te_formats_round_trip(fmt, shape):
    x = np.arange(2 * 3 * 5 * 4).reshape(2, 3, 5, 4)  # (batch, heads, seq, dim)
    y = gk.te_to_format(x, fmt)
    assert y.shape == shape
    assert np.array_equal(gk.te_from_format(y, fmt, x.shape), x)
    if fmt != "thd":  # token (b=1, s=2), head 0 lands where TE expects it
        assert np.array_equal(y[(2, 1) if fmt == "sbhd" else (1, 2)][0], x[1, 0, 2])
    else:
        assert np.array_equal(y[1 * 5 + 2, 0], x[1, 0, 2])


def test_te_arguments():
    a = gk.te_arguments(SPECS["default"], _range())
    assert a["start_positions"] is None and a["fused"] is True and a["interleaved"] is False
    b = gk.te_arguments(SPECS["interleaved"], _range(start=7), "thd")
    # TE has no scalar offset: one start is a (batch,) int32 tensor of it
    assert b["start_positions"].dtype == np.int32 and np.array_equal(b["start_positions"], [7, 7])
    assert np.array_equal(b["cu_seqlens"], [0, 16, 32]) and b["interleaved"] is True
    with pytest.raises(ValueError):
        gk.te_arguments(SPECS["default"], _range(), "hsbd")


def test_te_angles_ref_and_f32():
    spec = SPECS["default"]
    rows = np.arange(0, 2 ** 20, 4099, dtype=np.int64)
    ref = gk.te_angles(spec, rows, None, "ref")
    f32 = gk.te_angles(spec, rows, None, "f32")
    w = inv_freq(spec)[0]
    exact = rows[:, None].astype(np.float64) * w
    assert ref.dtype == f32.dtype == np.float32
    assert np.max(np.abs(ref - exact) / np.maximum(np.abs(exact), 1e-300)) <= 2.0 ** -24
    expected32 = rows.astype(np.float32)[:, None] * w.astype(np.float32)
    assert np.array_equal(f32, expected32)
    assert np.max(np.abs(f32 - exact)) > np.max(np.abs(ref - exact))  # the float32 product is the worse one


# =========================================================================== pure: vLLM mapping
# Keys vLLM's get_rope indexes with [] for each rope_type (rotary_embedding/__init__.py @07b12f1b and the
# older rope_scaling form): a missing one is a KeyError there.
VLLM_REQUIRED = {
    "default": [], "linear": ["factor"], "ntk": ["factor"], "dynamic": ["factor"],
    "yarn": ["factor", "original_max_position_embeddings"],
    "longrope": ["short_factor", "long_factor", "original_max_position_embeddings"],
    "llama3": ["factor", "low_freq_factor", "high_freq_factor", "original_max_position_embeddings"],
}


@pytest.mark.parametrize("name", ["default", "linear", "ntk", "dynamic", "yarn", "longrope", "llama3"])
def test_vllm_rope_parameters_has_what_get_rope_reads(name):
    spec = SPECS[name]
    p = gk.vllm_rope_parameters(spec)
    assert p["rope_type"] == spec.rope_type and p["rope_theta"] == spec.rope_theta
    for key in VLLM_REQUIRED[spec.rope_type]:
        assert key in p, key
    assert "partial_rotary_factor" not in p and "mrope_section" not in p
    assert all(not isinstance(v, (np.floating, np.integer, tuple)) for v in p.values())  # plain JSON-like values


def test_vllm_rope_parameters_values():
    y = gk.vllm_rope_parameters(SPECS["yarn-notrunc"])
    # HF names, as the model config carries them; truncate only when False (HF's default is True)
    assert y == {"rope_type": "yarn", "rope_theta": 10000.0, "factor": 32.0, "original_max_position_embeddings": 4096,
                 "beta_fast": 32.0, "beta_slow": 1.0, "attention_factor": 1.25, "truncate": False}
    d = gk.vllm_rope_parameters(SPECS["yarn-deepseek"], yarn_type="deepseek_yarn")
    # deepseek_scaling_rope.py reads mscale / mscale_all_dim; vLLM's DeepSeek models rename the type
    assert d["rope_type"] == "deepseek_yarn" and d["mscale"] == 1.0 and d["mscale_all_dim"] == 0.707
    m = gk.vllm_rope_parameters(SPECS["mrope-interleaved"])
    assert m["mrope_section"] == [12, 10, 10] and m["mrope_interleaved"] is True  # mrope.py keys
    assert "mrope_interleaved" not in gk.vllm_rope_parameters(SPECS["mrope"])
    lr = gk.vllm_rope_parameters(SPECS["longrope"])
    assert lr["short_factor"] == _SF and lr["long_factor"] == _LF and lr["factor"] == 16.0
    with pytest.raises(ValueError, match="yarn_type"):
        gk.vllm_rope_parameters(SPECS["yarn"], yarn_type="bogus")


SIG_NEW = ("head_size", "max_position", "is_neox_style", "rope_parameters", "dtype", "dual_chunk_attention_config")
SIG_MID = ("head_size", "rotary_dim", "max_position", "is_neox_style", "rope_parameters", "dtype",
           "partial_rotary_factor", "dual_chunk_attention_config")
SIG_OLD = ("head_size", "rotary_dim", "max_position", "base", "is_neox_style", "rope_scaling", "dtype",
           "partial_rotary_factor", "dual_chunk_attention_config")


def _get_rope_rotary_dim(kw: dict) -> int:
    """The rotary dim each get_rope generation derives from its arguments (sources in gpu_kernels.py)."""
    if "rotary_dim" in kw:
        rd = kw["rotary_dim"]
        prf = kw.get("partial_rotary_factor", 1.0)
        prf_dict = (kw.get("rope_parameters") or {}).get("partial_rotary_factor", 1.0)
        return int(rd * prf * prf_dict) if prf < 1.0 or prf_dict < 1.0 else rd
    return int(kw["head_size"] * kw["rope_parameters"].get("partial_rotary_factor", 1.0))


@pytest.mark.parametrize("sig", [SIG_NEW, SIG_MID, SIG_OLD], ids=["new", "mid", "old"])
@pytest.mark.parametrize("head_dim,rotary_dim", [(64, 64), (80, 32), (96, 64), (70, 64), (49 * 2, 2 * 2)])
def test_vllm_get_rope_kwargs_rotary_dim_applied_once(sig, head_dim, rotary_dim):
    spec = RopeSpec(head_dim=head_dim, rotary_dim=rotary_dim, layout="interleaved")
    kw = gk.vllm_get_rope_kwargs(spec, sig, max_position=4096, dtype="bf16")
    assert set(kw) <= set(sig) and kw["head_size"] == head_dim and kw["max_position"] == 4096
    assert kw["is_neox_style"] is False and kw["dtype"] == "bf16"
    assert _get_rope_rotary_dim(kw) == rotary_dim


def test_vllm_get_rope_kwargs_old_signature_splits_theta_and_scaling():
    kw = gk.vllm_get_rope_kwargs(RopeSpec(head_dim=64, rope_theta=5e5), SIG_OLD, max_position=16)
    assert kw["base"] == 5e5 and kw["rope_scaling"] is None and kw["partial_rotary_factor"] == 1.0
    kw = gk.vllm_get_rope_kwargs(SPECS["mrope"], SIG_OLD, max_position=16)
    assert kw["rope_scaling"] == {"rope_type": "default", "mrope_section": [8, 12, 12]}  # M-RoPE needs the dict
    kw = gk.vllm_get_rope_kwargs(SPECS["llama3"], SIG_NEW, max_position=16)
    assert kw["rope_parameters"]["rope_theta"] == 10000.0 and "base" not in kw
    with pytest.raises(ValueError, match="signature"):
        gk.vllm_get_rope_kwargs(SPECS["default"], ("x", "y"), max_position=16)


def test_vllm_max_position_and_cache_rows():
    # dynamic: vLLM's max_position is L0 (dynamic_ntk_scaling_rope.py: max_len = max_position * factor)
    assert gk.vllm_max_position(SPECS["dynamic"], _range()) == 2048
    assert gk.vllm_cache_rows(SPECS["dynamic"], 2048) == 8192
    # longrope: scale = max_position / L0 (phi3_long_rope_scaled_rope.py), so max_position = factor * L0
    assert gk.vllm_max_position(SPECS["longrope"], _range()) == 128
    odd = RopeSpec(head_dim=64, rope_type="longrope", factor=1.5, original_max_position_embeddings=3,
                   short_factor=_SF, long_factor=_LF)
    assert gk.vllm_max_position(odd, _range()) is None  # 4.5 is not an integer length
    assert gk.vllm_max_position(odd.replace(max_position_embeddings=100), _range()) == 100
    # yarn: the cache has ceil(L0 * factor) rows (yarn_scaling_rope.py / deepseek_scaling_rope.py)
    assert gk.vllm_cache_rows(SPECS["yarn"], gk.vllm_max_position(SPECS["yarn"], _range())) == 32768
    # size-only uses: a power of two covering the positions; M-RoPE caches 4 * max_position rows (mrope.py)
    assert gk.vllm_max_position(SPECS["default"], _range(start=1000)) == 1024
    assert gk.vllm_max_position(SPECS["mrope"], _streams(_range(start=1000))) == 256
    assert gk.vllm_cache_rows(SPECS["mrope"], 256) == 1024
    small = RopeSpec(head_dim=64, rope_type="linear", factor=0.5)
    mp = gk.vllm_max_position(small, _range(start=100))
    assert gk.vllm_cache_rows(small, mp) > 115  # linear_scaling_rope.py: max_position * factor rows


def test_vllm_query_layout():
    # DeepseekScalingRotaryEmbedding.forward_native slices query[..., :rotary_dim]: it needs (tokens, heads, dim)
    assert gk.vllm_query_layout("DeepseekScalingRotaryEmbedding") == "heads"
    # Phi3LongRoPE views query as (*shape[:-1], -1, head_size); mrope.py's triton_mrope unpacks q.shape as 2-D
    assert gk.vllm_query_layout("Phi3LongRoPEScaledRotaryEmbedding") == "flat"
    assert gk.vllm_query_layout("MRotaryEmbedding") == "flat"


# =========================================================================== declarations and reasons
def test_registry_names_and_classes():
    assert set(GPU_BUILTIN) == {a().name for a in ALL_CLASSES} == {load_adapter(n).name for n in GPU_BUILTIN}
    for name, path in GPU_BUILTIN.items():
        a = load_adapter(name)
        assert a.name == name and load_adapter(path).name == path and a.capabilities.devices == ("cuda",)
        assert set(a.capabilities.dtypes) == {"float32", "float16", "bfloat16"}


def test_capabilities_declared_honestly():
    caps = {c.name: c().capabilities for c in ALL_CLASSES}
    prec = {c.name: c().precision for c in ALL_CLASSES}
    # apply-only libraries with caller tables: every rope_type through reference tables
    for n in ("flash-attn", "liger", "te"):
        assert set(caps[n].rope_types) == {"default", "linear", "ntk", "dynamic", "yarn", "longrope", "llama3"}
    assert caps["flash-attn"].partial and caps["te"].partial and not caps["liger"].partial
    assert caps["liger"].layouts == ("half",) and "interleaved" in caps["flash-attn"].layouts
    assert caps["liger"].mrope and caps["liger"].axial and not caps["flash-attn"].mrope and not caps["te"].mrope
    assert caps["flash-attn"].xpos and not caps["flash-attn-f32cache"].xpos and not caps["te"].xpos
    assert prec["flash-attn"].angle_dtype == "float64" and prec["flash-attn-f32cache"].angle_dtype == "float32"
    assert prec["te"].angle_dtype == "float32" and prec["te"].compute_dtype == "float32"
    assert prec["vllm-native"].angle_dtype == "float32" and caps["vllm-native"].mrope
    assert caps["vllm-cuda-deepseek-yarn"].rope_types == ("yarn",) and not caps["vllm-cuda-deepseek-yarn"].partial


def test_availability_names_the_missing_gpu_and_library(monkeypatch):
    monkeypatch.setattr(gk, "cuda_available", lambda: False)
    for cls in ALL_CLASSES:
        why = cls().availability()
        assert why is not None and why.startswith(gk.NO_GPU), (cls, why)
    # with a GPU but without the library: the import error alone
    monkeypatch.setattr(gk, "cuda_available", lambda: True)
    real_import = gk.importlib.import_module

    def fake_import(name, *a):
        if name.split(".")[0] in ("flash_attn", "liger_kernel", "vllm", "transformer_engine"):
            raise ModuleNotFoundError(f"No module named {name.split('.')[0]!r}")
        if name == "torch":  # torch present (also where this test runs without it)
            return types.ModuleType("torch")
        return real_import(name, *a)

    monkeypatch.setattr(gk.importlib, "import_module", fake_import)
    for cls, mod in [(gk.FlashAttnRotary, "flash_attn"), (gk.LigerRotary, "liger_kernel"),
                     (gk.VllmRotaryCuda, "vllm"), (gk.TransformerEngineRotaryTHD, "transformer_engine")]:
        why = cls().availability()
        assert gk.NO_GPU not in why and mod in why and "ModuleNotFoundError" in why, why


def test_availability_without_a_gpu_only(monkeypatch):
    monkeypatch.setattr(gk, "cuda_available", lambda: False)
    monkeypatch.setattr(gk, "_import_reasons", lambda mods: [])
    monkeypatch.setattr(gk, "_te_apply", lambda: (lambda *a, **k: None))
    for cls in ALL_CLASSES:
        assert cls().availability() == gk.NO_GPU


@pytest.mark.parametrize("cls,spec,positions,text", [
    (gk.LigerRotary, SPECS["interleaved"], _range(), "layout=interleaved"),
    (gk.LigerRotary, SPECS["partial"], _range(), "partial rotation"),
    (gk.FlashAttnRotary, SPECS["default"], ARBITRARY, "start_b + 0..seq-1"),
    (gk.FlashAttnRotary, RopeSpec(head_dim=288, rotary_dim=64), _range(), "headdim <= 256"),
    (gk.FlashAttnRotary, SPECS["mrope"], _streams(_range()), "mrope_section"),
    (gk.FlashAttnRotaryF32Cache, SPECS["xpos"], _range(), "xpos"),
    (gk.TransformerEngineRotary, SPECS["yarn"], _range(), "attention factor"),
    (gk.TransformerEngineRotary, SPECS["default"], ARBITRARY, "start_b + 0..seq-1"),
    (gk.TransformerEngineRotary, SPECS["xpos"], _range(), "xpos"),
    (gk.VllmRotaryNative, SPECS["longrope"].replace(layout="interleaved"), _range(), "neox_style only"),
    (gk.VllmRotaryNative, SPECS["dynamic"], _range(start=9000), "beyond vLLM's cos/sin cache"),
    (gk.VllmRotaryNative, SPECS["longrope"], _range(start=200), "beyond vLLM's cos/sin cache"),
    (gk.VllmRotaryNative, SPECS["default"], _range(start=-3), "negative positions"),
    (gk.VllmRotaryNative, RopeSpec(head_dim=64, rope_type="llama3", factor=8.0, original_max_position_embeddings=64,
                                   mrope_section=[8, 12, 12]), _streams(_range()), "M-RoPE for default and yarn"),
    (gk.VllmRotaryNative, RopeSpec(head_dim=64, mrope_section=[16, 16]), np.stack([_range()] * 2, -1), "3 sections"),
    (gk.VllmRotaryNative, RopeSpec(head_dim=64, rope_type="longrope", factor=1.5, original_max_position_embeddings=3,
                                   short_factor=_SF, long_factor=_LF), _range(1, 2), "not an integer"),
    (gk.VllmRotaryNative, SPECS["xpos"], _range(), "xpos"),
    (gk.VllmDeepseekYarnNative, SPECS["default"], _range(), "rope_type=default"),
    (gk.VllmDeepseekYarnCuda, SPECS["yarn"].replace(head_dim=96, rotary_dim=64), _range(), "partial"),
], ids=lambda v: v.__name__ if isinstance(v, type) else None)
def test_why_unsupported_spec_limits(cls, spec, positions, text):
    why = cls().why_unsupported(spec, "float32", "cuda", positions)
    assert why is not None and text in why, why


@pytest.mark.parametrize("cls", ALL_CLASSES, ids=lambda c: c.__name__)
def test_no_gpu_means_cuda_unavailable_and_cpu_unsupported(cls, monkeypatch):
    monkeypatch.setattr(gk, "cuda_available", lambda: False)
    a = cls()
    spec = SPECS["yarn"] if cls in (gk.VllmDeepseekYarnNative, gk.VllmDeepseekYarnCuda) else SPECS["default"]
    import ropeconf.conformance.adapter as adapter_mod

    monkeypatch.setattr(adapter_mod, "cuda_unavailable", lambda: "no CUDA device: torch.cuda.is_available() is False")
    assert "device=cpu not supported" in a.why_unsupported(spec, "float32", "cpu", _range())
    assert a.why_unsupported(spec, "float32", "cuda", _range()) is None  # declared; the machine lacks it
    assert "torch.cuda.is_available() is False" in a.device_unavailable("cuda")
    assert "dtype=float64 not supported" in a.why_unsupported(spec, "float64", "cuda", _range())
    x = make_input(spec, 2, 1, 16, "float32", 0)
    with pytest.raises(ValueError, match="torch.cuda.is_available"):  # refuses before touching a GPU library
        a.run(x, _range(), spec, dtype="float32", device="cuda")


def test_vllm_cuda_probe_only_with_a_usable_library(monkeypatch):
    a = gk.VllmRotaryCuda()
    monkeypatch.setattr(gk, "cuda_available", lambda: True)
    monkeypatch.setattr(type(a), "availability", lambda self: "import vllm failed")
    monkeypatch.setattr(gk._VllmBase, "_probe", lambda *args: pytest.fail("probe without vLLM"))
    assert a.why_unsupported(SPECS["default"], "float32", "cuda", _range()) is None


def test_gpu_check_script_plans_every_step_and_adapter():
    script = ROOT / "scripts" / "gpu-check.sh"
    assert os.access(script, os.X_OK)
    assert subprocess.run(["bash", "-n", str(script)]).returncode == 0
    env = {**os.environ, "ROPE_GPU_CHECK_DRY_RUN": "1", "ROPE_VENV": str(Path(sys.executable).parents[1])}
    out = subprocess.run(["bash", str(script)], capture_output=True, text=True, env=env, timeout=120)
    assert out.returncode == 0, out.stderr
    text = out.stdout
    for needle in ("setup-venv.sh", "download.pytorch.org/whl/", "cupy-cuda1", "flash-attn --no-build-isolation",
                   "liger-kernel", " vllm ", "transformer_engine[pytorch]", "gpu-parity",
                   "tests/test_adapter_gpu_kernels.py tests/test_reference_properties.py "
                   "-k cuda\\ or\\ cupy\\ or\\ gpu",
                   "--device cuda", "--json out/gpu.json --report out/gpu.html"):
        assert needle in text, needle
    run_line = [ln for ln in text.splitlines() if " run --device cuda " in ln][0]
    from ropeconf.adapters import BUILTIN

    for name, path in GPU_BUILTIN.items():
        assert (f" {name} " in run_line) if name in BUILTIN else (f" {path} " in run_line), name
    for name in ("hf", "rotary-torch", "torchtune", "torch-onnx"):
        assert f" {name} " in run_line


# =========================================================================== plumbing with stand-in libraries
try:
    import torch
except Exception:  # the pure tests above run without torch
    torch = None
needs_torch = pytest.mark.skipif(torch is None, reason="torch not installed (the stand-in plumbing tests need it)")


def _install(monkeypatch, name: str, **attrs):
    """Put a stand-in module and its parents in sys.modules."""
    parts = name.split(".")
    for i in range(1, len(parts) + 1):
        mod_name = ".".join(parts[:i])
        mod = types.ModuleType(mod_name)
        monkeypatch.setitem(sys.modules, mod_name, mod)
        if i > 1:
            setattr(sys.modules[".".join(parts[:i - 1])], parts[i - 1], mod)
    for k, v in attrs.items():
        setattr(sys.modules[name], k, v)
    return sys.modules[name]


def _pairs(x, r, interleaved):
    return (x[..., 0:r:2], x[..., 1:r:2]) if interleaved else (x[..., : r // 2], x[..., r // 2: r])


def _join(o1, o2, interleaved):
    return torch.stack([o1, o2], -1).flatten(-2) if interleaved else torch.cat([o1, o2], -1)


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


def fake_liger_rotary_pos_emb(q, k, cos, sin, position_ids=None, unsqueeze_dim=1):
    """Liger's contract (ops/rope.py): HF half layout over the whole head, first half of cos/sin, cos dtype."""
    h = q.shape[-1] // 2
    assert cos.shape[-1] == q.shape[-1] and torch.equal(cos[..., :h], cos[..., h:])
    c, s = cos[..., :h].unsqueeze(1), sin[..., :h].unsqueeze(1)

    def rot(t):
        t1, t2 = t[..., :h].to(c.dtype), t[..., h:].to(c.dtype)
        return torch.cat([t1 * c - t2 * s, t2 * c + t1 * s], -1).to(t.dtype)

    return rot(q), rot(k)


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


def _fake_vllm(monkeypatch, *, cuda_on_customop_only=False, cuda_kernel=False):
    """vLLM's get_rope (newest signature) building base.py's RotaryEmbedding (default rope_type only)."""

    class CustomOp(torch.nn.Module):
        def dispatch_forward(self):
            return self.forward_native

        def forward_cuda(self, *args, **kwargs):
            raise NotImplementedError

    class RotaryEmbedding(CustomOp):
        def __init__(self, head_size, rotary_dim, max_position_embeddings, base, is_neox_style, dtype):
            super().__init__()
            self.head_size, self.rotary_dim, self.is_neox_style = head_size, rotary_dim, is_neox_style
            inv = 1.0 / (base ** (torch.arange(0, rotary_dim, 2, dtype=torch.float) / rotary_dim))
            t = torch.arange(max_position_embeddings, dtype=torch.float)
            freqs = torch.einsum("i,j -> ij", t, inv)
            self.register_buffer("cos_sin_cache", torch.cat((freqs.cos(), freqs.sin()), -1).to(dtype), persistent=False)

        def forward_native(self, positions, query, key=None):
            positions = positions.flatten()
            n = positions.shape[0]
            cos, sin = self.cos_sin_cache.index_select(0, positions).chunk(2, dim=-1)
            shape = query.shape
            q = query.view(n, -1, self.head_size)
            r = self.rotary_dim
            x1, x2 = _pairs(q[..., :r], r, not self.is_neox_style)
            c, s = cos.unsqueeze(-2).to(q.dtype), sin.unsqueeze(-2).to(q.dtype)
            rot = _join(x1 * c - x2 * s, x2 * c + x1 * s, not self.is_neox_style)
            return torch.cat((rot, q[..., r:]), -1).reshape(shape), key

    if cuda_kernel:
        def forward_cuda(self, positions, query, key=None):  # stands for ops.rotary_embedding: no native call
            return RotaryEmbedding.forward_native(self, positions, query, key)

        RotaryEmbedding.forward_cuda = forward_cuda
    elif not cuda_on_customop_only:
        def forward_cuda(self, positions, query, key=None):  # DeepseekScaling's pattern: a silent fallback
            return self.forward_native(positions, query, key)

        RotaryEmbedding.forward_cuda = forward_cuda
    rope_dict: dict = {}

    def get_rope(head_size, max_position, is_neox_style=True, rope_parameters=None, dtype=None,
                 dual_chunk_attention_config=None):
        p = rope_parameters or {}
        assert p.get("rope_type", "default") == "default" and "mrope_section" not in p
        rope = RotaryEmbedding(head_size, int(head_size * p.get("partial_rotary_factor", 1.0)), max_position,
                               p.get("rope_theta", 10000), is_neox_style, dtype)
        rope_dict[len(rope_dict)] = rope
        return rope

    return _install(monkeypatch, "vllm.model_executor.layers.rotary_embedding", get_rope=get_rope,
                    _ROPE_DICT=rope_dict)


def _judge_cpu(adapter, spec, positions, dtype="float32", heads=3, role="query"):
    """The adapter's own _call on the CPU (stand-in library), judged by the tolerance model."""
    from ropeconf.adapters._torch import to_numpy

    positions = np.asarray(positions, dtype=np.int64)
    x = make_input(spec, positions.shape[0], heads, positions.shape[1], dtype, 1)
    with torch.no_grad():
        y = to_numpy(adapter._call(x, positions, spec, dtype, "cpu", role))
    expected = np.asarray(apply(spec, np.asarray(x).astype(np.float64), positions, role=role))
    ratio, *_ = compare(spec, y, expected, positions, precision_for(adapter, dtype))
    return ratio


FA_POSITIONS = {"range": _range(), "offset": _range(start=37), "per-batch": PER_BATCH,
                "long": _range(2, 8, start=2 ** 20 - 8), "long-per-batch": np.stack([np.arange(9, 17),
                                                                                     np.arange(2 ** 19, 2 ** 19 + 8)])}


FA_CLASSES = [gk.FlashAttnRotary, gk.FlashAttnRotaryF32Cache, gk.FlashAttnRotaryVarlen, gk.FlashAttnRotaryInplace]


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


LIGER_CASES = [("default", _range()), ("default", ARBITRARY), ("yarn", PER_BATCH), ("longrope", _range()),
               ("llama3", _range(start=60)), ("xpos", _range(start=100)), ("mrope", _streams(_range())),
               ("mrope-interleaved", _streams(ARBITRARY))]


def _liger_cases():
    return [pytest.param(c, sn, p, id=f"{c.name}-{sn}-{i}") for c in (gk.LigerRotary, gk.LigerRotaryF32Cache)
            for i, (sn, p) in enumerate(LIGER_CASES) if c.capabilities.xpos or not SPECS[sn].xpos]


@needs_torch
@pytest.mark.parametrize("cls,spec_name,pos", _liger_cases())
def test_liger_plumbing_with_stand_in(monkeypatch, cls, spec_name, pos):
    _install(monkeypatch, "liger_kernel.transformers.rope", liger_rotary_pos_emb=fake_liger_rotary_pos_emb)
    spec, a = SPECS[spec_name], cls()
    assert a.capabilities.why_unsupported(spec, "float32", "cuda", pos) is None
    for dtype in ("float32", "bfloat16"):
        assert _judge_cpu(a, spec, pos, dtype) <= 1.0, dtype


@needs_torch
@pytest.mark.parametrize("cls", [gk.TransformerEngineRotary, gk.TransformerEngineRotaryF32Cache,
                                 gk.TransformerEngineRotaryBSHD, gk.TransformerEngineRotaryTHD], ids=lambda c: c.name)
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
@pytest.mark.parametrize("spec_name", ["default", "interleaved", "partial"])
@pytest.mark.parametrize("pos", [_range(), ARBITRARY], ids=["range", "arbitrary"])
def test_vllm_native_plumbing_with_stand_in(monkeypatch, spec_name, pos):
    vre = _fake_vllm(monkeypatch)
    spec, a = SPECS[spec_name], gk.VllmRotaryNative()
    for dtype in ("float32", "bfloat16"):
        assert _judge_cpu(a, spec, pos, dtype) <= 1.0, dtype
    assert vre._ROPE_DICT == {} or len(vre._ROPE_DICT) == 1  # cleared before every build: one module at most


@needs_torch
def test_vllm_cuda_path_refuses_a_silent_native_fallback(monkeypatch):
    _fake_vllm(monkeypatch)
    a = gk.VllmRotaryCuda()
    spec = SPECS["default"]
    rope = a._build(spec, "float32", _range(), device="cpu")
    method, what = a._method(rope)
    assert what == "forward_cuda"
    x = make_input(spec, 2, 1, 16, "float32", 0)
    with pytest.raises(gk._NativeFallback, match="fell back to forward_native"):
        a._apply(rope, x, _range(), spec, "float32", "cpu")
    assert "forward_native" not in vars(rope)  # the guard leaves the module as it was
    # the native adapter runs the same module
    assert gk.VllmRotaryNative()._method(rope)[1] == "forward_native"


@needs_torch
@pytest.mark.parametrize("kernel", [False, True], ids=["falls-back", "kernel"])
def test_vllm_cuda_probe_reports_a_fallback_as_unsupported(monkeypatch, kernel):
    _fake_vllm(monkeypatch, cuda_kernel=kernel)
    monkeypatch.setattr(gk, "cuda_available", lambda: True)
    a = gk.VllmRotaryCuda()
    a.probe_on = "cpu"
    monkeypatch.setattr(type(a), "availability", lambda self: None)
    monkeypatch.setattr(gk._VllmBase, "_probe_cache", {})
    why = a.why_unsupported(SPECS["partial"], "bfloat16", "cuda", ARBITRARY)
    if kernel:
        assert why is None
        assert _judge_cpu(a, SPECS["partial"], ARBITRARY, "bfloat16") <= 1.0
    else:
        assert "no CUDA kernel for this configuration" in why and "forward_native" in why, why


@needs_torch
def test_te_older_signature_limits(monkeypatch):
    def old_apply(t, freqs, tensor_format="sbhd", fused=False, cu_seqlens=None):  # TE before interleaved/offsets
        return t

    _install(monkeypatch, "transformer_engine.pytorch.attention.rope", apply_rotary_pos_emb=old_apply)
    monkeypatch.setattr(gk, "cuda_available", lambda: True)
    a = gk.TransformerEngineRotary()
    assert "no interleaved" in a.why_unsupported(SPECS["interleaved"], "float32", "cuda", _range())
    assert "no start_positions" in a.why_unsupported(SPECS["default"], "float32", "cuda", PER_BATCH)
    assert a.why_unsupported(SPECS["default"], "float32", "cuda", _range()) is None


@needs_torch
def test_vllm_cuda_path_needs_a_kernel_method(monkeypatch):
    _fake_vllm(monkeypatch, cuda_on_customop_only=True)
    a = gk.VllmRotaryCuda()
    rope = a._build(SPECS["default"], "float32", _range(), device="cpu")
    method, why = a._method(rope)
    assert method is None and "no CUDA path" in why  # CustomOp's own forward_cuda is not a kernel


# =========================================================================== real GPU tests
needs_gpu = pytest.mark.skipif(not cuda_available(), reason="needs a CUDA GPU (torch.cuda.is_available() is False)")


def _gpu_adapter(cls):
    a = cls()
    why = a.availability()
    if why:
        pytest.skip(f"{a.name} unavailable: {why}")
    return a


def _assert_conforms_gpu(a, spec, positions, dtype):
    res = judge_case(a, spec, positions, dtype=dtype, device="cuda", heads=3, seed=7)
    assert res.outcome == "conforms", f"{a.name} {dtype}: {res.outcome}: {res.message}"
    return res


GPU_DTYPES = ["float32", "bfloat16"]


@needs_gpu
@pytest.mark.parametrize("dtype", GPU_DTYPES)
@pytest.mark.parametrize("cls,spec_name,pos_name", _fa_cases(["default", "interleaved", "partial", "yarn", "llama3",
                                                              "xpos"], list(FA_POSITIONS)))
def test_flash_attn_conforms_gpu(cls, spec_name, pos_name, dtype):
    a = _gpu_adapter(cls)
    spec, pos = SPECS[spec_name], FA_POSITIONS[pos_name]
    assert a.why_unsupported(spec, dtype, "cuda", pos) is None, a.why_unsupported(spec, dtype, "cuda", pos)
    _assert_conforms_gpu(a, spec, pos, dtype)


@needs_gpu
@pytest.mark.parametrize("dtype", GPU_DTYPES)
@pytest.mark.parametrize("cls,spec_name,pos", _liger_cases())
def test_liger_conforms_gpu(cls, spec_name, pos, dtype):
    a = _gpu_adapter(cls)
    spec = SPECS[spec_name]
    assert a.why_unsupported(spec, dtype, "cuda", pos) is None, a.why_unsupported(spec, dtype, "cuda", pos)
    _assert_conforms_gpu(a, spec, pos, dtype)


@needs_gpu
@pytest.mark.parametrize("dtype", GPU_DTYPES)
@pytest.mark.parametrize("cls", [gk.TransformerEngineRotary, gk.TransformerEngineRotaryF32Cache,
                                 gk.TransformerEngineRotaryBSHD, gk.TransformerEngineRotaryTHD], ids=lambda c: c.name)
@pytest.mark.parametrize("spec_name", ["default", "interleaved", "partial", "linear", "llama3"])
@pytest.mark.parametrize("pos_name", ["range", "offset", "per-batch"])
def test_transformer_engine_conforms_gpu(cls, spec_name, pos_name, dtype):
    # A float32 divergence here at short positions would mean TE's sincosf is not within 2 ulp
    # (for example a fast-math build): a finding about TE, not a test bug.
    a = _gpu_adapter(cls)
    spec, pos = SPECS[spec_name], FA_POSITIONS[pos_name]
    assert a.why_unsupported(spec, dtype, "cuda", pos) is None, a.why_unsupported(spec, dtype, "cuda", pos)
    _assert_conforms_gpu(a, spec, pos, dtype)


VLLM_CONFORMING = [("default", _range()), ("default", ARBITRARY), ("interleaved", _range(start=5)),
                   ("partial", ARBITRARY), ("linear", _range()), ("llama3", _range(start=60)), ("yarn", ARBITRARY),
                   ("longrope", _range()), ("mrope", _streams(_range())), ("mrope-interleaved", _streams(ARBITRARY))]
# the vLLM class get_rope should build for each (rotary_embedding/__init__.py)
VLLM_CLASS = {"default": "RotaryEmbedding", "interleaved": "RotaryEmbedding", "partial": "RotaryEmbedding",
              "linear": "LinearScalingRotaryEmbedding", "llama3": "Llama3RotaryEmbedding",
              "yarn": "YaRNScalingRotaryEmbedding", "longrope": "Phi3LongRoPEScaledRotaryEmbedding",
              "mrope": "MRotaryEmbedding", "mrope-interleaved": "MRotaryEmbedding"}


@needs_gpu
@pytest.mark.parametrize("dtype", GPU_DTYPES)
@pytest.mark.parametrize("cls", [gk.VllmRotaryNative, gk.VllmRotaryCuda], ids=lambda c: c.name)
@pytest.mark.parametrize("spec_name,pos", VLLM_CONFORMING, ids=lambda v: v if isinstance(v, str) else None)
def test_vllm_conforms_gpu(cls, spec_name, pos, dtype):
    a = _gpu_adapter(cls)
    spec = SPECS[spec_name]
    rope = a._build(spec, dtype, pos)
    assert type(rope).__name__ == VLLM_CLASS[spec_name]
    why = a.why_unsupported(spec, dtype, "cuda", pos)
    if why and cls is gk.VllmRotaryCuda and ("no CUDA" in why or "forward_native" in why):
        pytest.skip(why)  # e.g. Phi3LongRoPE has one torch forward: reported unsupported, never run as a kernel
    assert why is None, why
    _assert_conforms_gpu(a, spec, pos, dtype)


@needs_gpu
def test_vllm_cuda_has_a_kernel_for_plain_rope_gpu():
    a = _gpu_adapter(gk.VllmRotaryCuda)
    assert a.why_unsupported(SPECS["default"], "bfloat16", "cuda", _range()) is None
    rope = a._build(SPECS["default"], "bfloat16", _range())
    assert a._method(rope)[1] in ("forward_cuda", "forward_platform")


@needs_gpu
def test_vllm_cuda_deepseek_float32_is_not_run_as_a_kernel_gpu():
    # deepseek_scaling_rope.py: FlashInfer only for float16/bfloat16, else forward_cuda -> forward_native
    a = _gpu_adapter(gk.VllmDeepseekYarnCuda)
    why = a.why_unsupported(SPECS["yarn-deepseek"], "float32", "cuda", _range())
    assert why is not None and ("forward_native" in why or "no CUDA path" in why), why


@needs_gpu
@pytest.mark.parametrize("dtype", GPU_DTYPES)
def test_vllm_deepseek_yarn_native_conforms_gpu(dtype):
    a = _gpu_adapter(gk.VllmDeepseekYarnNative)
    rope = a._build(SPECS["yarn-deepseek"], dtype, _range())
    assert type(rope).__name__ == "DeepseekScalingRotaryEmbedding"
    _assert_conforms_gpu(a, SPECS["yarn-deepseek"], ARBITRARY, dtype)


@needs_gpu
def test_vllm_ntk_is_a_different_formula_gpu():
    # ntk_scaling_rope.py: base * s and omega / s^(2/r) (kexue.fm 9706), not the NTK-aware b * s^(r/(r-2))
    # of the reference: at position 10 the angles differ by ~4 % of 10 rad, far outside any tolerance.
    a = _gpu_adapter(gk.VllmRotaryNative)
    res = judge_case(a, SPECS["ntk"], _range(), dtype="float32", device="cuda")
    assert res.outcome == "diverges", res.message
    assert res.max_ratio > 100
