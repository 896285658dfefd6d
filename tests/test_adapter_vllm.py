"""vLLM adapters (adapters/vllm.py).

The three kinds of tests (pure, stand-in plumbing, real GPU) are described in tests/gpu_helpers.py.
"""

from __future__ import annotations

import numpy as np
import pytest

from gpu_helpers import (ARBITRARY, GPU_DTYPES, SPECS, _LF, _SF, _assert_conforms_gpu, _gpu_adapter, _install,
                         _join, _judge_cpu, _pairs, _range, _streams, check_availability_reasons, check_gpu_check_plan,
                         check_no_gpu_only, check_no_gpu_refusal, check_registry, needs_gpu, needs_torch, torch)
from ropeconf.adapters import _gpu
from ropeconf.adapters import vllm as vl
from ropeconf.conformance.judge import judge_case, make_input
from ropeconf.reference import RopeSpec

VLLM_CLASSES = [vl.VllmRotaryNative, vl.VllmRotaryCuda, vl.VllmDeepseekYarnNative, vl.VllmDeepseekYarnCuda]


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
    p = vl.vllm_rope_parameters(spec)
    assert p["rope_type"] == spec.rope_type and p["rope_theta"] == spec.rope_theta
    for key in VLLM_REQUIRED[spec.rope_type]:
        assert key in p, key
    assert "partial_rotary_factor" not in p and "mrope_section" not in p
    assert all(not isinstance(v, (np.floating, np.integer, tuple)) for v in p.values())  # plain JSON-like values


def test_vllm_rope_parameters_values():
    y = vl.vllm_rope_parameters(SPECS["yarn-notrunc"])
    # HF names, as the model config carries them; truncate only when False (HF's default is True)
    assert y == {"rope_type": "yarn", "rope_theta": 10000.0, "factor": 32.0, "original_max_position_embeddings": 4096,
                 "beta_fast": 32.0, "beta_slow": 1.0, "attention_factor": 1.25, "truncate": False}
    d = vl.vllm_rope_parameters(SPECS["yarn-deepseek"], yarn_type="deepseek_yarn")
    # deepseek_scaling_rope.py reads mscale / mscale_all_dim; vLLM's DeepSeek models rename the type
    assert d["rope_type"] == "deepseek_yarn" and d["mscale"] == 1.0 and d["mscale_all_dim"] == 0.707
    m = vl.vllm_rope_parameters(SPECS["mrope-interleaved"])
    assert m["mrope_section"] == [12, 10, 10] and m["mrope_interleaved"] is True  # mrope.py keys
    assert "mrope_interleaved" not in vl.vllm_rope_parameters(SPECS["mrope"])
    lr = vl.vllm_rope_parameters(SPECS["longrope"])
    assert lr["short_factor"] == _SF and lr["long_factor"] == _LF and lr["factor"] == 16.0
    with pytest.raises(ValueError, match="yarn_type"):
        vl.vllm_rope_parameters(SPECS["yarn"], yarn_type="bogus")


SIG_NEW = ("head_size", "max_position", "is_neox_style", "rope_parameters", "dtype", "dual_chunk_attention_config")
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
    return int(kw["head_size"] * kw["rope_parameters"].get("partial_rotary_factor", 1.0))


@pytest.mark.parametrize("sig", [SIG_NEW, SIG_MID, SIG_OLD], ids=["new", "mid", "old"])
@pytest.mark.parametrize("head_dim,rotary_dim", [(64, 64), (80, 32), (96, 64), (70, 64), (49 * 2, 2 * 2)])
def test_vllm_get_rope_kwargs_rotary_dim_applied_once(sig, head_dim, rotary_dim):
    spec = RopeSpec(head_dim=head_dim, rotary_dim=rotary_dim, layout="interleaved")
    kw = vl.vllm_get_rope_kwargs(spec, sig, max_position=4096, dtype="bf16")
    assert set(kw) <= set(sig) and kw["head_size"] == head_dim and kw["max_position"] == 4096
    assert kw["is_neox_style"] is False and kw["dtype"] == "bf16"
    assert _get_rope_rotary_dim(kw) == rotary_dim


def test_vllm_get_rope_kwargs_old_signature_splits_theta_and_scaling():
    kw = vl.vllm_get_rope_kwargs(RopeSpec(head_dim=64, rope_theta=5e5), SIG_OLD, max_position=16)
    assert kw["base"] == 5e5 and kw["rope_scaling"] is None and kw["partial_rotary_factor"] == 1.0
    kw = vl.vllm_get_rope_kwargs(SPECS["mrope"], SIG_OLD, max_position=16)
    assert kw["rope_scaling"] == {"rope_type": "default", "mrope_section": [8, 12, 12]}  # M-RoPE needs the dict
    kw = vl.vllm_get_rope_kwargs(SPECS["llama3"], SIG_NEW, max_position=16)
    assert kw["rope_parameters"]["rope_theta"] == 10000.0 and "base" not in kw
    with pytest.raises(ValueError, match="signature"):
        vl.vllm_get_rope_kwargs(SPECS["default"], ("x", "y"), max_position=16)


def test_vllm_max_position_and_cache_rows():
    # dynamic: vLLM's max_position is L0 (dynamic_ntk_scaling_rope.py: max_len = max_position * factor)
    assert vl.vllm_max_position(SPECS["dynamic"], _range()) == 2048
    assert vl.vllm_cache_rows(SPECS["dynamic"], 2048) == 8192
    # longrope: scale = max_position / L0 (phi3_long_rope_scaled_rope.py), so max_position = factor * L0
    assert vl.vllm_max_position(SPECS["longrope"], _range()) == 128
    odd = RopeSpec(head_dim=64, rope_type="longrope", factor=1.5, original_max_position_embeddings=3,
                   short_factor=_SF, long_factor=_LF)
    assert vl.vllm_max_position(odd, _range()) is None  # 4.5 is not an integer length
    assert vl.vllm_max_position(odd.replace(max_position_embeddings=100), _range()) == 100
    # yarn: the cache has ceil(L0 * factor) rows (yarn_scaling_rope.py / deepseek_scaling_rope.py)
    assert vl.vllm_cache_rows(SPECS["yarn"], vl.vllm_max_position(SPECS["yarn"], _range())) == 32768
    # size-only uses: a power of two covering the positions; M-RoPE caches 4 * max_position rows (mrope.py)
    assert vl.vllm_max_position(SPECS["default"], _range(start=1000)) == 1024
    assert vl.vllm_max_position(SPECS["mrope"], _streams(_range(start=1000))) == 256
    assert vl.vllm_cache_rows(SPECS["mrope"], 256) == 1024
    small = RopeSpec(head_dim=64, rope_type="linear", factor=0.5)
    mp = vl.vllm_max_position(small, _range(start=100))
    assert vl.vllm_cache_rows(small, mp) > 115  # linear_scaling_rope.py: max_position * factor rows


def test_vllm_query_layout():
    # DeepseekScalingRotaryEmbedding.forward_native slices query[..., :rotary_dim]: it needs (tokens, heads, dim)
    assert vl.vllm_query_layout("DeepseekScalingRotaryEmbedding") == "heads"
    # Phi3LongRoPE views query as (*shape[:-1], -1, head_size); mrope.py's triton_mrope unpacks q.shape as 2-D
    assert vl.vllm_query_layout("Phi3LongRoPEScaledRotaryEmbedding") == "flat"
    assert vl.vllm_query_layout("MRotaryEmbedding") == "flat"


# =========================================================================== declarations and reasons
def test_registry_names_and_classes():
    check_registry("vllm", VLLM_CLASSES)


def test_capabilities_declared_honestly():
    caps = {c.name: c().capabilities for c in VLLM_CLASSES}
    prec = {c.name: c().precision for c in VLLM_CLASSES}
    assert prec["vllm-native"].angle_dtype == "float32" and caps["vllm-native"].mrope
    assert caps["vllm-cuda-deepseek-yarn"].rope_types == ("yarn",) and not caps["vllm-cuda-deepseek-yarn"].partial


def test_availability_names_the_missing_gpu_and_library(monkeypatch):
    check_availability_reasons(monkeypatch, VLLM_CLASSES, vl.VllmRotaryCuda, "vllm")


def test_availability_without_a_gpu_only(monkeypatch):
    check_no_gpu_only(monkeypatch, VLLM_CLASSES)


@pytest.mark.parametrize("cls,spec,positions,text", [
    (vl.VllmRotaryNative, SPECS["longrope"].replace(layout="interleaved"), _range(), "neox_style only"),
    (vl.VllmRotaryNative, SPECS["dynamic"], _range(start=9000), "beyond vLLM's cos/sin cache"),
    (vl.VllmRotaryNative, SPECS["longrope"], _range(start=200), "beyond vLLM's cos/sin cache"),
    (vl.VllmRotaryNative, SPECS["default"], _range(start=-3), "negative positions"),
    (vl.VllmRotaryNative, RopeSpec(head_dim=64, rope_type="llama3", factor=8.0, original_max_position_embeddings=64,
                                   low_freq_factor=1.0, high_freq_factor=4.0, mrope_section=[8, 12, 12]),
     _streams(_range()), "M-RoPE for default and yarn"),
    (vl.VllmRotaryNative, RopeSpec(head_dim=64, mrope_section=[16, 16]), np.stack([_range()] * 2, -1), "3 sections"),
    (vl.VllmRotaryNative, RopeSpec(head_dim=64, rope_type="longrope", factor=1.5, original_max_position_embeddings=3,
                                   short_factor=_SF, long_factor=_LF), _range(1, 2), "not an integer"),
    (vl.VllmRotaryNative, SPECS["xpos"], _range(), "xpos"),
    (vl.VllmDeepseekYarnNative, SPECS["default"], _range(), "rope_type=default"),
    (vl.VllmDeepseekYarnCuda, SPECS["yarn"].replace(head_dim=96, rotary_dim=64), _range(), "partial"),
], ids=lambda v: v.__name__ if isinstance(v, type) else None)
def test_why_unsupported_spec_limits(cls, spec, positions, text):
    why = cls().why_unsupported(spec, "float32", "cuda", positions)
    assert why is not None and text in why, why


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

    return _install(monkeypatch, "vllm.model_executor.layers.rotary_embedding", get_rope=get_rope,
                    _ROPE_DICT=rope_dict)


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


# =========================================================================== real GPU tests
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


@needs_gpu
def test_vllm_ntk_is_a_different_formula_gpu():
    # ntk_scaling_rope.py: base * s and omega / s^(2/r) (kexue.fm 9706), not the NTK-aware b * s^(r/(r-2))
    # of the reference: at position 10 the angles differ by ~4 % of 10 rad, far outside any tolerance.
    a = _gpu_adapter(vl.VllmRotaryNative)
    res = judge_case(a, SPECS["ntk"], _range(), dtype="float32", device="cuda")
    assert res.outcome == "diverges", res.message
    assert res.max_ratio > 100
