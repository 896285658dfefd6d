"""vLLM rotary embeddings built by ``get_rope`` (GPU only; shared plumbing in adapters/_gpu.py).

Sources read (stored copies of the upstream repository; commit of the copy read):
``vllm/model_executor/layers/rotary_embedding/``: ``__init__.py`` @07b12f1b
``get_rope(head_size, max_position, is_neox_style=True, rope_parameters=None, dtype=None,
dual_chunk_attention_config=None)`` (rotary_dim = int(head_size * partial_rotary_factor),
base = rope_parameters['rope_theta']); an older ``__init__.py`` (indexed copy)
``get_rope(head_size, rotary_dim, max_position, base, is_neox_style=True,
rope_scaling=None, dtype=None, partial_rotary_factor=1.0, dual_chunk_attention_config=None)``;
an intermediate one took ``rotary_dim`` and ``rope_parameters`` together (a PR diff that
removed its ``partial_rotary_factor`` argument).  The adapter reads the installed
signature and fills whichever form it has.  Classes: ``base.py`` @04458da0 (cache built
in float32, cast to ``dtype``; ``forward_cuda`` -> ``ops.rotary_embedding`` in place) and
a newer ``base.py`` (``forward_static = native_rope``; ``forward_platform`` -> the
platform's rope kernel or ``forward_native``); ``linear_scaling_rope.py`` @0f17ee06,
``ntk_scaling_rope.py`` @03587f55, ``dynamic_ntk_scaling_rope.py`` @3cfbaf33,
``yarn_scaling_rope.py`` @0cd57848, ``deepseek_scaling_rope.py`` @00d678e1,
``phi3_long_rope_scaled_rope.py`` @17d618b0, ``llama3_rope.py`` @045d7575, ``mrope.py``
@055e47c2, ``common.py`` @002d181a; usage as in ``tests/kernels/core/test_pos_encoding.py``
@0cf5d8e8.

The mapping is the pure functions below (``vllm_rope_parameters``: the spec's own
``RopeSpec.to_hf_rope_parameters()``, ``vllm_max_position``, ``vllm_cache_rows``,
``vllm_get_rope_kwargs``, ``vllm_query_layout``), tested on any machine in
tests/test_adapter_vllm.py.
"""

from __future__ import annotations

import contextlib
import importlib
import inspect
import math
import types
from typing import Any, Sequence

import numpy as np

from ropeconf.reference import RopeSpec

from ._gpu import GPU_DTYPES, _caps, _GpuAdapter, _ints
from ._torch import to_torch, torch_dtype

__all__ = ["VllmRotaryNative", "VllmRotaryCuda", "VllmDeepseekYarnNative", "VllmDeepseekYarnCuda",
           "vllm_rope_parameters", "vllm_max_position", "vllm_cache_rows", "vllm_get_rope_kwargs",
           "vllm_query_layout"]

VLLM_ROPE_TYPES = ("default", "linear", "ntk", "dynamic", "yarn", "longrope", "llama3")
# classes whose forward wants query (tokens, heads, head_size) rather than (tokens, heads * head_size)
_VLLM_3D_QUERY = ("DeepseekScalingRotaryEmbedding",)


def vllm_rope_parameters(spec: RopeSpec, yarn_type: str = "yarn") -> dict[str, Any]:
    """The HF-style ``rope_parameters`` dict a model config carries for ``spec`` (``spec.to_hf_rope_parameters()``).

    vLLM's get_rope reads the model config's dict as is, so the adapter hands it exactly
    what an HF config holds (HF key names), and whatever vLLM ignores shows up as a
    divergence.  ``yarn_type='deepseek_yarn'`` renames YaRN to vLLM's DeepSeek class (what
    vLLM's DeepSeek-V2/V3 model code does to the config's YaRN dict).
    """
    t = spec.rope_type
    if t not in VLLM_ROPE_TYPES:
        raise ValueError(f"rope_type={t!r} has no vLLM equivalent")
    if yarn_type not in ("yarn", "deepseek_yarn"):
        raise ValueError(f"yarn_type must be 'yarn' or 'deepseek_yarn', got {yarn_type!r}")
    p = spec.to_hf_rope_parameters()
    if t == "yarn" and yarn_type == "deepseek_yarn":
        p["rope_type"] = "deepseek_yarn"
    return p


def _pow2(n: int) -> int:
    return 1 << max(int(n) - 1, 0).bit_length()


def vllm_max_position(spec: RopeSpec, positions: np.ndarray) -> int | None:
    """``max_position`` (the model's max_position_embeddings) handed to get_rope, or None.

    Where vLLM reads it as a formula input it is the spec's value: dynamic NTK uses it as
    the pre-training length L0 (``DynamicNTKScalingRotaryEmbedding``: base from
    max_len = max_position * factor); LongRoPE derives its attention scale from
    max_position / L0 and, from max_model_len (= max_position here), whether it uses the
    long factors; so it is ``max_position_embeddings``, or factor * L0 when that is an
    integer (None otherwise).  YaRN reads L0 from the dict.  Elsewhere it only sizes the
    cos/sin cache: the next power of two (>= 16) that covers the positions (a bounded set
    of sizes, so get_rope's module cache stays small).
    """
    t = spec.rope_type
    L0 = spec.original_max_position_embeddings
    if t == "dynamic":
        return int(L0)
    if t == "longrope":
        if spec.max_position_embeddings is not None:
            return int(spec.max_position_embeddings)
        m = float(spec.factor) * L0
        return int(m) if m.is_integer() else None
    if t == "yarn":
        return int(spec.max_position_embeddings or L0)
    p = np.asarray(positions)
    need = int(p.max()) + 1 if p.size else 1
    if spec.mrope_section is not None:
        need = -(-need // 4)  # MRotaryEmbedding caches 4 * max_position rows
    if t == "linear" and spec.factor < 1:
        need = math.ceil(need / spec.factor)
    return _pow2(max(need, 16))


def vllm_cache_rows(spec: RopeSpec, max_position: int, yarn_type: str = "yarn") -> int:
    """Rows of vLLM's cos/sin cache (positions must lie in [0, rows)), from the class sources.

    default: max_position (x4 for MRotaryEmbedding); ntk, llama3: max_position; linear:
    ceil(max_position * factor); dynamic: ceil(L0 * factor) (max_position is L0);
    yarn / deepseek_yarn: ceil(L0 * factor) (x4 with M-RoPE; newer YaRN at least
    max_position too, so this is a lower bound); longrope: max_position (vLLM serves
    positions below max_model_len).
    """
    t = spec.rope_type
    mult = 4 if spec.mrope_section is not None else 1
    if t == "default":
        return mult * int(max_position)
    if t in ("ntk", "llama3", "longrope"):
        return int(max_position)
    if t in ("linear", "dynamic"):
        return math.ceil(max_position * spec.factor)
    if t == "yarn":
        return math.ceil(mult * spec.original_max_position_embeddings * spec.factor)
    raise ValueError(f"rope_type={t!r} has no vLLM equivalent")


def vllm_get_rope_kwargs(spec: RopeSpec, param_names: Sequence[str], *, max_position: int, dtype: Any = None,
                         yarn_type: str = "yarn") -> dict[str, Any]:
    """Keyword arguments for the installed ``get_rope``, whose parameter names are ``param_names``.

    Three generations: ``(head_size, max_position, is_neox_style, rope_parameters, dtype,
    ...)`` (rotary_dim = int(head_size * rope_parameters['partial_rotary_factor'])); the
    same with a ``rotary_dim`` argument (then the dict carries no partial_rotary_factor, so
    the rotary dim is applied once); and ``(head_size, rotary_dim, max_position, base,
    is_neox_style, rope_scaling, dtype, partial_rotary_factor, ...)`` (theta as ``base``,
    the scaling dict without rope_theta, None for plain RoPE).
    """
    names = tuple(param_names)
    params = vllm_rope_parameters(spec, yarn_type)
    kw: dict[str, Any] = {"head_size": spec.head_dim, "max_position": int(max_position),
                          "is_neox_style": spec.layout == "half", "dtype": dtype}
    if "rotary_dim" in names:
        kw["rotary_dim"] = spec.rotary_dim
        params.pop("partial_rotary_factor", None)
    if "partial_rotary_factor" in names:
        kw["partial_rotary_factor"] = 1.0  # rotary_dim (passed above) already is the rotated width
    if "rope_parameters" in names:
        kw["rope_parameters"] = params
    elif "rope_scaling" in names and "base" in names:
        kw["base"] = params.pop("rope_theta")
        kw["rope_scaling"] = None if params == {"rope_type": "default"} else params
    else:
        raise ValueError(f"unrecognised vllm get_rope signature {names}")
    if "rotary_dim" not in names and spec.rotary_dim < spec.head_dim and "partial_rotary_factor" not in kw.get(
            "rope_parameters", {}):
        raise ValueError("this get_rope has no way to express rotary_dim < head_size")
    missing = [k for k in ("head_size", "max_position") if k not in names]
    if missing:
        raise ValueError(f"unrecognised vllm get_rope signature {names} (no {missing})")
    return {k: v for k, v in kw.items() if k in names}


def vllm_query_layout(class_name: str) -> str:
    """'flat' (tokens, heads * head_size): what vLLM's Llama-style models pass and what
    Phi3LongRoPE and the M-RoPE Triton kernel require; 'heads' (tokens, heads, head_size):
    what DeepseekScalingRotaryEmbedding's forward indexes (``query[..., :rotary_dim]``)."""
    return "heads" if class_name in _VLLM_3D_QUERY else "flat"


class _NativeFallback(RuntimeError):
    pass


def _own_method(obj, name: str):
    """The bound method ``name`` when a class below vLLM's CustomOp defines it, else None."""
    for cls in type(obj).__mro__:
        if name in cls.__dict__:
            if cls.__name__ == "CustomOp" or cls.__module__.startswith("torch."):
                return None
            return getattr(obj, name)
    return None


@contextlib.contextmanager
def _forbid_native(rope):
    """Make a silent fallback of the CUDA path to ``forward_native`` raise instead."""
    def fell_back(*args, **kwargs):
        raise _NativeFallback(f"{type(rope).__name__}'s CUDA path fell back to forward_native")

    had = "forward_native" in vars(rope)
    rope.forward_native = fell_back
    try:
        yield
    finally:
        if not had:
            del rope.forward_native


@contextlib.contextmanager
def _max_model_len(max_model_len: int):
    """Serve-time max_model_len for Phi3LongRoPEScaledRotaryEmbedding.

    That class reads ``get_current_vllm_config().model_config.max_model_len`` in its
    __init__ (long factors for every position when it exceeds L0); outside an engine there
    is no model config, so the module's reference to get_current_vllm_config is pointed
    at a stand-in holding max_model_len for the construction only.  Versions without the
    lookup are left alone.
    """
    try:
        mod = importlib.import_module("vllm.model_executor.layers.rotary_embedding.phi3_long_rope_scaled_rope")
    except Exception:
        yield
        return
    orig = getattr(mod, "get_current_vllm_config", None)
    if orig is None:
        yield
        return
    stand_in = types.SimpleNamespace(model_config=types.SimpleNamespace(max_model_len=int(max_model_len)))
    mod.get_current_vllm_config = lambda: stand_in
    try:
        yield
    finally:
        mod.get_current_vllm_config = orig


class _VllmBase(_GpuAdapter):
    """vLLM rotary embedding built by ``get_rope`` from the spec's HF ``rope_parameters``.

    Mapping (pure functions above): :func:`vllm_rope_parameters` (rope_type, rope_theta,
    partial_rotary_factor, scaling keys, mrope_section / mrope_interleaved),
    :func:`vllm_max_position`, :func:`vllm_get_rope_kwargs` (fits the installed signature),
    ``is_neox_style`` = half layout (GPT-J style = interleaved), ``dtype`` = the tested dtype
    (vLLM builds the cache in float32 on the GPU, then casts it to that dtype).  The call is
    vLLM's serving form: positions (tokens,) (M-RoPE: (3, tokens)), query and key (tokens,
    heads * head_size) (DeepSeek's class: (tokens, heads, head_size)); the key is a copy.
    A fresh get_rope module cache per call (its ``_ROPE_DICT`` is cleared) keeps GPU memory
    bounded over a long run.

    Semantics differences that are vLLM's own and show up as divergences, not errors:
    ``dynamic`` is static NTK at L0 * factor (vLLM #3488/#5093/#41236); ``ntk`` is
    kexue.fm's fixed NTK (base * s and omega / s^(2/r), ``ntk_scaling_rope.py``), not the
    NTK-aware base * s^(r/(r-2)); LongRoPE uses the long factors for every position when
    max_model_len > L0; versions that read ``attn_factor`` ignore HF's ``attention_factor``.
    vLLM rope types with no RopeSpec equivalent (mllama4, xdrope, dynamic with ``alpha``,
    openpangu, dual-chunk, deepseek_llama_scaling) are not mapped.
    """

    distribution = "vllm"
    requires = ("torch", "vllm.model_executor.layers.rotary_embedding")
    path = "native"          # "native": forward_native (or a plain module's forward); "cuda": the kernel
    yarn_type = "yarn"
    probe_on = "cuda"        # where _probe builds and runs its one-token call
    _probe_cache: dict = {}
    capabilities, precision = _caps(rope_types=VLLM_ROPE_TYPES, layouts=("half", "interleaved"), dtypes=GPU_DTYPES,
                                devices=("cuda",), freqs_for=("lang",), partial=True, xpos=False, axial=False,
                                mrope=True, positions="arbitrary", angle_dtype="float32")

    # ------------------------------------------------------------------ checks (pure)
    def _limits(self, spec, dtype, positions):
        t = spec.rope_type
        if spec.rotary_dim < spec.head_dim and spec.hf_partial_rotary_factor() is None:
            return (f"rotary_dim={spec.rotary_dim} not expressible as int(head_size * partial_rotary_factor) "
                    f"with head_size={spec.head_dim}")
        if t == "longrope" and spec.layout != "half":
            return "layout=interleaved not supported for longrope (Phi3LongRoPEScaledRotaryEmbedding: neox_style only)"
        if spec.mrope_section is not None:
            if t not in ("default", "yarn") or self.yarn_type != "yarn":
                return (f"mrope_section with rope_type={t!r} not supported (vLLM's get_rope builds M-RoPE for "
                        f"default and yarn)")
            if len(spec.mrope_section) != 3:
                return "mrope_section with other than 3 sections (t, h, w) not supported by MRotaryEmbedding"
        max_position = vllm_max_position(spec, positions if positions is not None else np.zeros((1, 1), np.int64))
        if max_position is None:
            return (f"longrope factor={spec.factor} with original_max_position_embeddings="
                    f"{spec.original_max_position_embeddings}: vLLM takes the scale as max_position / L0, and "
                    f"factor * L0 is not an integer (give max_position_embeddings)")
        if positions is not None:
            p = np.asarray(positions)
            rows = vllm_cache_rows(spec, max_position, self.yarn_type)
            if int(p.min()) < 0:
                return "negative positions not supported (vLLM indexes its cos_sin_cache by position)"
            if int(p.max()) >= rows:
                return (f"position {int(p.max())} beyond vLLM's cos/sin cache ({rows} rows for rope_type={t!r}, "
                        f"max_position={max_position})")
        return None

    def why_unsupported(self, spec, dtype, device, positions=None):
        why = super().why_unsupported(spec, dtype, device, positions)
        if why is None and self.path == "cuda" and device == "cuda" and self.availability() is None:
            why = self._probe(spec, dtype)
        return why

    # ------------------------------------------------------------------ building and calling
    def _build(self, spec: RopeSpec, dtype: str, positions: np.ndarray, device: str = "cuda"):
        import torch
        from vllm.model_executor.layers import rotary_embedding as vre

        max_position = vllm_max_position(spec, positions)
        names = tuple(inspect.signature(vre.get_rope).parameters)
        kw = vllm_get_rope_kwargs(spec, names, max_position=max_position, dtype=torch_dtype(dtype),
                                  yarn_type=self.yarn_type)
        cache = getattr(vre, "_ROPE_DICT", None)
        if isinstance(cache, dict):
            cache.clear()  # a fresh module per call: bounded GPU memory, no state between calls
        with torch.device(device), _max_model_len(max_position):
            rope = vre.get_rope(**kw)
        return rope.to(device)

    def _method(self, rope):
        """(callable, description) for this adapter's path, or (None, reason)."""
        if self.path == "native":
            m = _own_method(rope, "forward_native")
            if m is not None:
                return m, "forward_native"
            if not hasattr(rope, "dispatch_forward"):  # a plain torch module (e.g. Phi3LongRoPE): one forward
                return rope.forward, "forward"
            return None, f"{type(rope).__name__} has no forward_native"
        for name in ("forward_cuda", "forward_platform"):
            m = _own_method(rope, name)
            if m is not None:
                return m, name
        return None, (f"no CUDA path: {type(rope).__name__} has neither forward_cuda nor forward_platform "
                      f"(its only implementation is torch code; see vllm-native)")

    def _rows(self, rope) -> int | None:
        for attr in ("cos_sin_cache", "long_short_cos_sin_cache"):
            t = getattr(rope, attr, None)
            if t is not None and hasattr(t, "shape"):
                return int(t.shape[0])
        return None

    def _apply(self, rope, x, positions, spec, dtype, device):
        import torch

        batch, heads, seq, dim = x.shape
        method, what = self._method(rope)
        if method is None:
            raise ValueError(f"{self.name}: {what}")
        rows = self._rows(rope)  # safety net (the limits above already keep positions inside the cache):
        if rows is not None and int(np.max(positions)) >= rows:  # an out-of-range index is a CUDA fault
            raise ValueError(f"{self.name}: position {int(np.max(positions))} beyond the cos/sin cache ({rows} rows)")
        q = to_torch(x, dtype, device).transpose(1, 2).contiguous()  # (batch, seq, heads, dim)
        q = q.reshape(batch * seq, heads, dim)
        if vllm_query_layout(type(rope).__name__) == "flat":
            q = q.reshape(batch * seq, heads * dim)
        k = q.clone()
        if spec.mrope_section is not None:
            pos = _ints(np.asarray(positions).reshape(-1, positions.shape[-1]).T, device)  # (3, tokens)
        else:
            pos = _ints(np.asarray(positions).reshape(-1), device)
        guard = _forbid_native(rope) if self.path == "cuda" else contextlib.nullcontext()
        with guard:
            qo, _ = method(pos, q, k)
        return torch.as_tensor(qo).reshape(batch, seq, heads, dim).transpose(1, 2)

    def _call(self, x, positions, spec, dtype, device, role):
        rope = self._build(spec, dtype, positions, device)
        return self._apply(rope, x, positions, spec, dtype, device)

    def _probe(self, spec: RopeSpec, dtype: str) -> str | None:
        """None when this vLLM runs a CUDA kernel (not forward_native) for spec's class and dtype."""
        key = (type(self).__name__, spec.to_json(), dtype, self.probe_on)
        if key not in _VllmBase._probe_cache:
            why = None
            pos = np.zeros((1, 1, 3) if spec.mrope_section is not None else (1, 1), dtype=np.int64)
            try:
                rope = self._build(spec, dtype, pos, self.probe_on)
                method, what = self._method(rope)
                if method is None:
                    why = what
                else:
                    from ropeconf.golden_data.corpus import round_to

                    x = round_to(np.ones((1, 1, 1, spec.head_dim)), dtype)
                    self._apply(rope, x, pos, spec, dtype, self.probe_on)
            except _NativeFallback as e:
                why = (f"no CUDA kernel for this configuration: {e} (dtype={dtype}, head_size={spec.head_dim}); "
                       f"see vllm-native")
            except Exception:
                why = None  # let the real call report its own error
            _VllmBase._probe_cache[key] = why
        return _VllmBase._probe_cache[key]


class VllmRotaryNative(_VllmBase):
    """vLLM ``forward_native`` (its PyTorch reference path; a plain module's ``forward``)."""

    name = "vllm-native"
    path = "native"


class VllmRotaryCuda(_VllmBase):
    """vLLM's CUDA path: ``forward_cuda`` (``ops.rotary_embedding``, the M-RoPE Triton kernel,
    FlashInfer for DeepSeek) or, in newer vLLM, ``forward_platform``.  A class or
    configuration whose CUDA path falls back to ``forward_native`` is reported unsupported
    (probed once per spec and dtype), never as a kernel result."""

    name = "vllm-cuda"
    path = "cuda"


_DEEPSEEK_CAPS, _DEEPSEEK_PRECISION = _caps(rope_types=("yarn",), layouts=("half", "interleaved"), dtypes=GPU_DTYPES,
                              devices=("cuda",), freqs_for=("lang",), partial=False, xpos=False, axial=False,
                              mrope=False, positions="arbitrary", angle_dtype="float32")


class VllmDeepseekYarnNative(VllmRotaryNative):
    """vLLM ``deepseek_yarn`` (DeepseekScalingRotaryEmbedding), forward_native.  Whole head
    only: its forward broadcasts (tokens,) positions against (tokens, heads, r) and cannot
    concatenate a pass-through tail."""

    name = "vllm-native-deepseek-yarn"
    yarn_type = "deepseek_yarn"
    capabilities, precision = _DEEPSEEK_CAPS, _DEEPSEEK_PRECISION


class VllmDeepseekYarnCuda(VllmRotaryCuda):
    """vLLM ``deepseek_yarn`` on its CUDA path (FlashInfer when vLLM enables it for the dtype
    and head size; otherwise reported unsupported: it falls back to forward_native)."""

    name = "vllm-cuda-deepseek-yarn"
    yarn_type = "deepseek_yarn"
    capabilities, precision = _DEEPSEEK_CAPS, _DEEPSEEK_PRECISION
