"""GPU-only adapters: flash-attn, Liger-Kernel, vLLM and NVIDIA TransformerEngine.

None of these libraries installs without a CUDA build (they are not in the project's
.venv); ``scripts/gpu-check.sh`` installs them on a GPU machine and runs these adapters.
Every adapter declares ``devices=("cuda",)`` and reports itself *unavailable* (with the
reason) when its library does not import or ``torch.cuda.is_available()`` is False.
Libraries are imported lazily, inside methods only.

The spec -> library-argument mapping lives in small pure functions at the top of this
module (``offset_table``, ``flash_attn_arguments``, ``liger_cos_sin``, ``te_arguments``,
``te_freqs``, ``vllm_rope_parameters``, ``vllm_get_rope_kwargs``, ...): they import no GPU
library and are tested on any machine (tests/test_adapter_gpu_kernels.py).

Sources read (stored copies of the upstream repositories; commit of the copy read):

* flash-attn 2.8.3 (``flash_attn/__init__.py`` @06a9900d): ``flash_attn/layers/rotary.py``
  @09d422b1 ``apply_rotary_emb(x, cos, sin, interleaved=False, inplace=False,
  seqlen_offsets=0, cu_seqlens=None, max_seqlen=None)``; x is (batch, seqlen, nheads,
  headdim), or (total_seqlen, nheads, headdim) with ``cu_seqlens``; cos/sin are
  (seqlen_ro, rotary_dim/2).  Kernel ``flash_attn/ops/triton/rotary.py`` @03f6a6b7: asserts
  ``x.dtype == cos.dtype``, ``headdim <= 256``, ``seqlen_ro >= seqlen`` and (int offsets)
  ``offset + seqlen <= seqlen_ro``; loads cos/sin/x as float32, computes in float32, and
  reads row ``s + seqlen_offsets[b]`` of the table (a tensor offset past the table is
  *masked to cos=1, sin=0*, i.e. silently no rotation, so the tables built here always
  cover every row read).
* Liger-Kernel (``src/liger_kernel/transformers/rope.py``, ``src/liger_kernel/ops/rope.py``
  @00fb8bf2): ``liger_rotary_pos_emb(q, k, cos, sin, position_ids=None, unsqueeze_dim=1)``;
  q/k (bsz, n_head, seq, head_dim); cos/sin HF-style (1 | bsz, seq, head_dim) with the two
  halves equal (the kernel loads only the first half); ``position_ids`` is unused by the
  kernel; HF half layout only, whole head only (no rotary_dim < head_dim); computes in the
  dtype of cos/sin; rotates q and k in place when they are physically (bsz, seq, head, dim).
* vLLM ``vllm/model_executor/layers/rotary_embedding/``: ``__init__.py`` @07b12f1b
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
* TransformerEngine ``transformer_engine/pytorch/attention/rope.py`` @0dc141cf
  ``apply_rotary_pos_emb(t, freqs, tensor_format='sbhd', start_positions=None,
  interleaved=False, fused=False, cu_seqlens=None, cp_size=1, cp_rank=0)``; freqs are
  *angles* (s2, 1, 1, d2) float32, laid out per element (``RotaryPositionEmbedding`` builds
  cat(freqs, freqs), or each angle twice when interleaved); fused kernel
  ``transformer_engine/common/fused_rope/fused_rope.cu`` @01b5648e: ``sincosf`` of
  ``freqs[(s + start_positions[b]) * d2 + d]`` in float32, rotation in float32, tail copied.
  Older TE keeps the function in ``transformer_engine.pytorch.attention`` (one file) or
  ``...dot_product_attention.rope``; all three places are tried.

Cache-taking libraries (flash-attn, Liger, TE) apply a rotation to caller-built tables,
so, like the ONNX adapters (adapters/onnx.py), each comes in two forms: reference
tables (``ropeconf.adapters.onnx.build_caches(cache='ref')``: our float64 cos/sin
times the attention factor (and xPos), rounded once to the tested dtype) and conventional
float32 tables (``cache='f32'``, the ``-f32cache`` twins).  With reference tables every
rope_type "passes" by construction: they test the application step only.  TE takes
angles instead of cos/sin: its reference form is our float64 angle rounded once to
float32 (``freqs`` is float32 by API), its ``-f32cache`` form float32(p) * float32(omega).
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.metadata
import inspect
import math
import types
from typing import Any, Sequence

import numpy as np

from ropeconf.conformance.adapter import Adapter, Capabilities, Numerics
from ropeconf.reference import FREQS_FOR, ROPE_TYPES, RopeSpec, inv_freq

from ._tables import table_angles
from ._torch import cuda_available, to_numpy, to_torch, torch_dtype
from .onnx import build_caches


def _caps(angle_dtype: str, compute_dtype: str | None = None, **kw) -> tuple[Capabilities, Numerics]:
    return Capabilities(**kw), Numerics(angle_dtype, compute_dtype)

__all__ = [
    "FlashAttnRotary", "FlashAttnRotaryF32Cache", "FlashAttnRotaryVarlen", "FlashAttnRotaryInplace",
    "LigerRotary", "LigerRotaryF32Cache",
    "VllmRotaryNative", "VllmRotaryCuda", "VllmDeepseekYarnNative", "VllmDeepseekYarnCuda",
    "TransformerEngineRotary", "TransformerEngineRotaryF32Cache", "TransformerEngineRotaryBSHD",
    "TransformerEngineRotaryTHD",
    "NO_GPU",
    "offset_table", "flash_attn_arguments", "liger_cos_sin", "te_arguments", "te_freqs", "te_angles",
    "te_to_format", "te_from_format", "vllm_rope_parameters", "vllm_max_position", "vllm_cache_rows",
    "vllm_get_rope_kwargs", "vllm_query_layout",
]

NO_GPU = "needs a CUDA GPU: torch.cuda.is_available() is False"
GPU_DTYPES = ("float32", "float16", "bfloat16")
#: a position-indexed table holds every row 0..max_pos up to this many elements (as adapters/onnx.py)
FULL_TABLE_MAX_ELEMENTS = 1 << 18
FLASH_ATTN_MAX_HEAD_DIM = 256  # flash_attn/ops/triton/rotary.py: assert headdim <= 256


# =========================================================================== pure mappings
def per_batch_starts(positions: np.ndarray) -> np.ndarray | None:
    """starts (batch,) when every row is ``start_b + 0..seq-1``, else None.

    That is all a per-sequence offset can express (flash-attn ``seqlen_offsets``, TE
    ``start_positions``): the library reads table row ``s + offset_b`` for token s.
    """
    p = np.asarray(positions)
    if p.ndim != 2 or p.shape[1] == 0:
        return None
    starts = p[:, 0].astype(np.int64)
    if not np.array_equal(p, starts[:, None] + np.arange(p.shape[1])):
        return None
    return starts


def offset_table(positions: np.ndarray, n_pairs: int, max_elements: int = FULL_TABLE_MAX_ELEMENTS):
    """(rows, offsets) with ``rows[offsets_b + s] == positions[b, s]``, or None.

    ``rows``: the position of each table row (int64).  ``offsets``: an int when every
    sequence has the same start (flash-attn's scalar ``seqlen_offsets``), else an int64
    array (batch,).  Like a model's cache, the table holds every position 0..max when that
    fits in ``max_elements`` (rows * n_pairs) and positions are non-negative; otherwise
    (long or negative positions) it holds just the rows read: one block per sequence,
    offsets b * seq (the same indexing, a smaller table).  None when positions are not
    per-sequence contiguous (see :func:`per_batch_starts`).
    """
    starts = per_batch_starts(positions)
    if starts is None:
        return None
    batch, seq = np.asarray(positions).shape
    same = bool(np.all(starts == starts[0]))
    top = int(starts.max()) + seq
    if int(starts.min()) >= 0 and top * max(n_pairs, 1) <= max_elements:
        rows = np.arange(top, dtype=np.int64)
        return rows, (int(starts[0]) if same else starts.copy())
    if same:
        return np.asarray(positions[0], dtype=np.int64).copy(), 0
    return np.asarray(positions, dtype=np.int64).reshape(-1).copy(), np.arange(batch, dtype=np.int64) * seq


def flash_attn_arguments(spec: RopeSpec, positions: np.ndarray, *, varlen: bool = False,
                         max_elements: int = FULL_TABLE_MAX_ELEMENTS) -> dict[str, Any]:
    """What ``flash_attn.layers.rotary.apply_rotary_emb`` gets for ``spec`` and ``positions``.

    * ``interleaved``: True for GPT-J pairs (2i, 2i+1), False for NeoX halves;
    * ``rows``: the position of each cos/sin table row (the tables are (len(rows), r/2):
      the kernel takes rotary_dim = 2 * cos.shape[-1] and passes the tail through);
    * ``seqlen_offsets``: int or int64 array (batch,);
    * varlen only: ``cu_seqlens`` (batch+1,) int32 and ``max_seqlen`` (x is then
      (batch*seq, heads, head_dim)).
    """
    table = offset_table(positions, spec.n_pairs, max_elements)
    if table is None:
        raise ValueError("flash-attn needs per-sequence contiguous positions (start_b + 0..seq-1)")
    rows, offsets = table
    out: dict[str, Any] = {"interleaved": spec.layout == "interleaved", "rows": rows, "seqlen_offsets": offsets}
    if varlen:
        batch, seq = np.asarray(positions).shape
        out["cu_seqlens"] = np.arange(batch + 1, dtype=np.int32) * seq
        out["max_seqlen"] = int(seq)
    return out


def liger_cos_sin(cos_tok: np.ndarray, sin_tok: np.ndarray, positions: np.ndarray):
    """HF-style cos/sin for Liger from per-token (batch, seq, r/2) tables.

    Liger takes (1 | batch, seq, head_dim) with the two halves equal (HF's
    ``emb = cat(freqs, freqs)``; the kernel reads only the first half).  When every
    sequence has the same positions the batch axis collapses to 1 (Liger's broadcast form).
    """
    p = np.asarray(positions)
    if p.shape[0] > 1 and all(np.array_equal(p[0], p[b]) for b in range(1, p.shape[0])):
        cos_tok, sin_tok = cos_tok[:1], sin_tok[:1]
    return np.concatenate([cos_tok, cos_tok], axis=-1), np.concatenate([sin_tok, sin_tok], axis=-1)


TE_FORMATS = ("sbhd", "bshd", "thd")
# axes of x (batch, heads, seq, dim) for each TE tensor format ("thd" flattens the bshd form)
_TE_AXES = {"sbhd": (2, 0, 1, 3), "bshd": (0, 2, 1, 3), "thd": (0, 2, 1, 3)}


def te_to_format(x, tensor_format: str):
    """x (batch, heads, seq, dim) -> TE's ``tensor_format`` (NumPy or torch; a view where possible)."""
    if tensor_format not in TE_FORMATS:
        raise ValueError(f"tensor_format must be one of {TE_FORMATS}, got {tensor_format!r}")
    b, h, s, d = x.shape
    y = x.permute(*_TE_AXES[tensor_format]) if hasattr(x, "detach") else np.transpose(x, _TE_AXES[tensor_format])
    if tensor_format == "thd":
        y = y.reshape(b * s, h, d)
    return y


def te_from_format(y, tensor_format: str, shape: tuple[int, int, int, int]):
    """Inverse of :func:`te_to_format` back to (batch, heads, seq, dim) = ``shape``."""
    b, h, s, d = shape
    if tensor_format == "thd":
        y = y.reshape(b, s, h, d)
    inv = tuple(int(i) for i in np.argsort(_TE_AXES[tensor_format]))
    return y.permute(*inv) if hasattr(y, "detach") else np.transpose(y, inv)


def te_arguments(spec: RopeSpec, positions: np.ndarray, tensor_format: str = "sbhd",
                 max_elements: int = FULL_TABLE_MAX_ELEMENTS) -> dict[str, Any]:
    """What ``apply_rotary_pos_emb`` gets (besides t and freqs) for ``spec`` and ``positions``.

    ``rows`` (positions of the freqs rows), ``start_positions`` (None or int32 (batch,):
    TE has no scalar offset), ``interleaved``, ``tensor_format``, ``fused`` (always True:
    the CUDA kernel is what is tested) and, for "thd", ``cu_seqlens`` (batch+1,) int32.
    """
    if tensor_format not in TE_FORMATS:
        raise ValueError(f"tensor_format must be one of {TE_FORMATS}, got {tensor_format!r}")
    table = offset_table(positions, spec.n_pairs, max_elements)
    if table is None:
        raise ValueError("TransformerEngine needs per-sequence contiguous positions (start_b + 0..seq-1)")
    rows, offsets = table
    batch, seq = np.asarray(positions).shape
    if isinstance(offsets, int):
        start = None if offsets == 0 else np.full(batch, offsets, dtype=np.int32)
    else:
        start = offsets.astype(np.int32)
    out: dict[str, Any] = {"rows": rows, "start_positions": start, "interleaved": spec.layout == "interleaved",
                           "tensor_format": tensor_format, "fused": True}
    if tensor_format == "thd":
        out["cu_seqlens"] = np.arange(batch + 1, dtype=np.int32) * seq
    return out


def te_freqs(angles_rows: np.ndarray, layout: str) -> np.ndarray:
    """Per-pair angles (rows, r/2) -> TE's per-element freqs (rows, 1, 1, r) float32.

    Half layout: [a_0..a_{n-1}, a_0..a_{n-1}] (``RotaryPositionEmbedding``: cat(freqs,
    freqs)); interleaved: [a_0, a_0, a_1, a_1, ...].  The fused kernel takes the angle of
    element d from ``freqs[..., d]``.
    """
    a = np.asarray(angles_rows, dtype=np.float32)
    full = np.concatenate([a, a], axis=-1) if layout == "half" else np.repeat(a, 2, axis=-1)
    return np.ascontiguousarray(full[:, None, None, :], dtype=np.float32)


def te_angles(spec: RopeSpec, rows: np.ndarray, seq_len: int | None, cache: str = "ref") -> np.ndarray:
    """Angles (rows, r/2) float32 for TE's freqs: ``_tables.table_angles`` (reference or float32 recipe)."""
    return table_angles(spec, rows, seq_len, cache)


# ----------------------------------------------------------------------------- vLLM
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


# =========================================================================== adapters
def _import_reasons(modules: Sequence[str]) -> list[str]:
    out = []
    for mod in modules:
        try:
            importlib.import_module(mod)
        except Exception as e:  # a broken install must not take the run down
            out.append(f"import {mod} failed: {type(e).__name__}: {e}")
    return out


def _ints(a, device):
    import torch

    return torch.from_numpy(np.ascontiguousarray(a, dtype=np.int64)).to(device)


class _GpuAdapter(Adapter):
    """Shared plumbing: CUDA-only availability, checks, no_grad run, float64 result."""

    def availability(self) -> str | None:
        reasons = [] if cuda_available() else [NO_GPU]
        reasons += _import_reasons(self.requires)
        return "; ".join(reasons) or None

    def why_unsupported(self, spec, dtype, device, positions=None):
        why = super().why_unsupported(spec, dtype, device, positions)
        if why is None and positions is not None and np.asarray(positions).size == 0:
            why = "empty positions not supported"
        if why is None:
            why = self._limits(spec, dtype, positions)
        return why

    def _limits(self, spec: RopeSpec, dtype: str, positions: np.ndarray | None) -> str | None:
        """Library-specific limits beyond the capabilities (pure: no GPU, no library)."""
        return None

    def call(self, x, positions, spec, *, dtype, device="cuda", role="query"):
        positions = np.asarray(positions, dtype=np.int64)
        import torch

        x = np.asarray(x)
        if x.ndim != 4:
            raise ValueError(f"x must be (batch, heads, seq, head_dim), got shape {x.shape}")
        with torch.no_grad():
            y = self._call(x, positions, spec, dtype, device, role)
            torch.cuda.synchronize()
        return to_numpy(y)

    def _call(self, x, positions, spec, dtype, device, role):
        raise NotImplementedError


# --------------------------------------------------------------------------- flash-attn
class FlashAttnRotary(_GpuAdapter):
    """flash-attn ``apply_rotary_emb`` (Triton kernel), reference cos/sin tables.

    Primary path: x (batch, seq, heads, head_dim) contiguous, cos/sin a position-indexed
    table (rows, r/2) in the tested dtype (the kernel asserts equal dtypes), and
    ``seqlen_offsets`` an int when all sequences start alike (0 for 0..S-1) or an int
    tensor (batch,) per sequence (see :func:`offset_table`).  Expresses: both pairings
    (``interleaved``), partial rotation (r = 2 * cos.shape[-1]), per-sequence contiguous
    positions (any start, long and negative ones through a compact table), and every
    rope_type / attention factor / xPos through the reference tables.  Not expressible:
    positions that are not start_b + 0..S-1 (the kernel indexes the table by s + offset),
    axial and M-RoPE (several streams per token), head_dim > 256 (asserted).  The
    subclasses run the other forms of the same call: ``varlen`` (x (batch*seq, heads, d)
    with ``cu_seqlens``/``max_seqlen``) and ``inplace=True``.
    """

    name = "flash-attn"
    distribution = "flash-attn"
    requires = ("torch", "flash_attn.layers.rotary")
    cache = "ref"
    varlen = False
    inplace = False
    capabilities, precision = _caps(rope_types=ROPE_TYPES, layouts=("half", "interleaved"), dtypes=GPU_DTYPES,
                                devices=("cuda",), freqs_for=FREQS_FOR, partial=True, xpos=True, axial=False,
                                mrope=False, positions="arbitrary", angle_dtype="float64")

    def _limits(self, spec, dtype, positions):
        if spec.head_dim > FLASH_ATTN_MAX_HEAD_DIM:
            return f"head_dim={spec.head_dim} above {FLASH_ATTN_MAX_HEAD_DIM} (flash-attn asserts headdim <= 256)"
        if positions is not None and per_batch_starts(positions) is None:
            return ("positions that are not start_b + 0..seq-1 per sequence not supported (flash-attn reads "
                    "cos/sin row s + seqlen_offsets[b])")
        return None

    def _call(self, x, positions, spec, dtype, device, role):
        import torch
        from flash_attn.layers.rotary import apply_rotary_emb

        a = flash_attn_arguments(spec, positions, varlen=self.varlen)
        cos, sin, ids = build_caches(spec, a["rows"][None, :], dtype, cache=self.cache, role=role,
                                     max_elements=FULL_TABLE_MAX_ELEMENTS)
        cos, sin = cos[ids[0]], sin[ids[0]]  # table row k holds position rows[k]
        batch, heads, seq, dim = x.shape
        xt = to_torch(x, dtype, device).transpose(1, 2).contiguous()  # (batch, seq, heads, dim)
        offs = a["seqlen_offsets"]
        offs = offs if isinstance(offs, int) else _ints(offs, device)
        kw: dict[str, Any] = {"interleaved": a["interleaved"], "inplace": self.inplace, "seqlen_offsets": offs}
        if self.varlen:
            xt = xt.reshape(batch * seq, heads, dim)
            kw["cu_seqlens"] = torch.from_numpy(a["cu_seqlens"]).to(device)
            kw["max_seqlen"] = a["max_seqlen"]
        y = apply_rotary_emb(xt, to_torch(cos, dtype, device), to_torch(sin, dtype, device), **kw)
        return y.reshape(batch, seq, heads, dim).transpose(1, 2)


class FlashAttnRotaryF32Cache(FlashAttnRotary):
    """flash-attn with conventional float32 tables (angles formed in float32)."""

    name = "flash-attn-f32cache"
    cache = "f32"
    capabilities, precision = _caps(rope_types=ROPE_TYPES, layouts=("half", "interleaved"), dtypes=GPU_DTYPES,
                                devices=("cuda",), freqs_for=FREQS_FOR, partial=True, xpos=False, axial=False,
                                mrope=False, positions="arbitrary", angle_dtype="float32")


class FlashAttnRotaryVarlen(FlashAttnRotary):
    """flash-attn varlen form: x (batch*seq, heads, d), ``cu_seqlens`` and ``max_seqlen``."""

    name = "flash-attn-varlen"
    varlen = True


class FlashAttnRotaryInplace(FlashAttnRotary):
    """flash-attn with ``inplace=True`` (the result is written into x)."""

    name = "flash-attn-inplace"
    inplace = True


# --------------------------------------------------------------------------- Liger
class LigerRotary(_GpuAdapter):
    """Liger-Kernel ``liger_rotary_pos_emb`` (Triton), HF half layout, reference cos/sin.

    cos/sin are HF's per-token (1 | batch, seq, head_dim) tensors (halves equal, tested
    dtype, as HF's rotary module returns them), so any positions are expressible, and
    axial / M-RoPE too (per-token tables of several streams).  q is passed the way HF
    models hold it, physically (batch, seq, heads, dim) viewed as (batch, heads, seq,
    dim); k is a copy (the kernel needs both).  Not expressible: interleaved pairs, partial
    rotation (the kernel rotates head_dim // 2 pairs).
    """

    name = "liger"
    distribution = "liger-kernel"
    requires = ("torch", "liger_kernel.transformers.rope")
    cache = "ref"
    capabilities, precision = _caps(rope_types=ROPE_TYPES, layouts=("half",), dtypes=GPU_DTYPES, devices=("cuda",),
                                freqs_for=FREQS_FOR, partial=False, xpos=True, axial=True, mrope=True,
                                positions="arbitrary", angle_dtype="float64")

    def _call(self, x, positions, spec, dtype, device, role):
        from liger_kernel.transformers.rope import liger_rotary_pos_emb

        cos, sin, ids = build_caches(spec, positions, dtype, cache=self.cache, role=role,
                                     max_elements=FULL_TABLE_MAX_ELEMENTS)
        if ids is not None:  # position-indexed table -> per-token (batch, seq, r/2)
            cos, sin = cos[ids], sin[ids]
        cos, sin = liger_cos_sin(cos, sin, positions)
        q = to_torch(np.ascontiguousarray(np.swapaxes(x, 1, 2)), dtype, device).transpose(1, 2)
        k = q.clone()
        qo, _ = liger_rotary_pos_emb(q, k, to_torch(cos, dtype, device), to_torch(sin, dtype, device))
        return qo


class LigerRotaryF32Cache(LigerRotary):
    """Liger with conventional float32 cos/sin (angles formed in float32)."""

    name = "liger-f32cache"
    cache = "f32"
    capabilities, precision = _caps(rope_types=ROPE_TYPES, layouts=("half",), dtypes=GPU_DTYPES, devices=("cuda",),
                                freqs_for=FREQS_FOR, partial=False, xpos=False, axial=True, mrope=True,
                                positions="arbitrary", angle_dtype="float32")


# --------------------------------------------------------------------------- vLLM
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


# --------------------------------------------------------------------------- TransformerEngine
_TE_MODULES = ("transformer_engine.pytorch.attention.rope", "transformer_engine.pytorch.attention",
               "transformer_engine.pytorch.dot_product_attention.rope", "transformer_engine.pytorch")
_TE_DISTRIBUTIONS = ("transformer-engine", "transformer-engine-torch", "transformer-engine-cu12")


def _te_apply():
    errors = []
    for mod in _TE_MODULES:
        try:
            fn = getattr(importlib.import_module(mod), "apply_rotary_pos_emb", None)
        except Exception as e:
            errors.append(f"{mod}: {type(e).__name__}: {e}")
            continue
        if fn is not None:
            return fn
        errors.append(f"{mod}: no apply_rotary_pos_emb")
    raise ImportError("TransformerEngine apply_rotary_pos_emb not found (" + "; ".join(errors) + ")")


class TransformerEngineRotary(_GpuAdapter):
    """TransformerEngine fused RoPE (``apply_rotary_pos_emb(..., fused=True)``), sbhd format.

    freqs (rows, 1, 1, r) float32 from :func:`te_angles` laid out by :func:`te_freqs`;
    ``start_positions`` per sequence from :func:`te_arguments`; ``interleaved`` for GPT-J
    pairs; partial rotation by r < head_dim (tail copied).  The kernel forms cos/sin in
    float32 from the float32 angle and rotates in float32 (angle_dtype and compute_dtype
    float32).  Not expressible: an attention factor != 1 (YaRN, LongRoPE: TE takes angles
    only, there is no cos/sin scale), xPos, axial / M-RoPE, positions that are not
    start_b + 0..S-1.  Subclasses: bshd and thd (varlen, ``cu_seqlens``) formats.
    """

    name = "te"
    distribution = "transformer-engine"
    requires = ("torch", "transformer_engine.pytorch")
    cache = "ref"
    tensor_format = "sbhd"
    capabilities, precision = _caps(rope_types=ROPE_TYPES, layouts=("half", "interleaved"), dtypes=GPU_DTYPES,
                                devices=("cuda",), freqs_for=FREQS_FOR, partial=True, xpos=False, axial=False,
                                mrope=False, positions="arbitrary", angle_dtype="float32", compute_dtype="float32")

    def availability(self):
        reasons = [] if cuda_available() else [NO_GPU]
        reasons += _import_reasons(("torch",))
        if not reasons or reasons == [NO_GPU]:
            try:
                _te_apply()
            except Exception as e:
                reasons.append(f"{type(e).__name__}: {e}")
        return "; ".join(reasons) or None

    def version(self):
        for dist in _TE_DISTRIBUTIONS:
            try:
                return importlib.metadata.version(dist)
            except importlib.metadata.PackageNotFoundError:
                continue
        return "unknown"

    def _limits(self, spec, dtype, positions):
        if positions is not None:
            if per_batch_starts(positions) is None:
                return ("positions that are not start_b + 0..seq-1 per sequence not supported (TE reads freqs row "
                        "s + start_positions[b])")
            p = np.asarray(positions)
            att = inv_freq(spec, int(p.max()) + 1)[1]
            if att != 1.0:
                return (f"attention factor {att:.6g} not expressible (TE's apply_rotary_pos_emb takes angles only, "
                        f"no cos/sin scale)")
        return None

    def why_unsupported(self, spec, dtype, device, positions=None):
        why = super().why_unsupported(spec, dtype, device, positions)
        if why is None and device == "cuda":
            why = self._signature_limits(spec, positions)
        return why

    def _signature_limits(self, spec, positions):
        """What the installed apply_rotary_pos_emb lacks (older TE: no interleaved, no start_positions)."""
        try:
            params = inspect.signature(_te_apply()).parameters
        except Exception:
            return None  # not importable: availability() gives the reason
        if spec.layout == "interleaved" and "interleaved" not in params:
            return ("layout=interleaved not supported by this TransformerEngine (apply_rotary_pos_emb has no "
                    "interleaved)")
        if positions is not None and "start_positions" not in params and \
                te_arguments(spec, positions, self.tensor_format)["start_positions"] is not None:
            return ("offset positions not supported by this TransformerEngine (apply_rotary_pos_emb has no "
                    "start_positions)")
        return None

    def _call(self, x, positions, spec, dtype, device, role):
        import torch

        fn = _te_apply()
        a = te_arguments(spec, positions, self.tensor_format)
        seq_len = int(np.max(positions)) + 1
        freqs = torch.from_numpy(te_freqs(te_angles(spec, a["rows"], seq_len, self.cache), spec.layout)).to(device)
        t = te_to_format(to_torch(x, dtype, device), self.tensor_format).contiguous()
        params = inspect.signature(fn).parameters
        kw: dict[str, Any] = {"tensor_format": self.tensor_format, "fused": True}
        if a["interleaved"]:
            if "interleaved" not in params:
                raise ValueError(f"{self.name}: this TransformerEngine has no interleaved RoPE")
            kw["interleaved"] = True
        if a["start_positions"] is not None:
            if "start_positions" not in params:
                raise ValueError(f"{self.name}: this TransformerEngine has no start_positions")
            kw["start_positions"] = torch.from_numpy(a["start_positions"]).to(device)
        if self.tensor_format == "thd":
            kw["cu_seqlens"] = torch.from_numpy(a["cu_seqlens"]).to(device)
        y = fn(t, freqs, **kw)
        return te_from_format(y, self.tensor_format, tuple(x.shape))


class TransformerEngineRotaryF32Cache(TransformerEngineRotary):
    """TE with conventional float32 angles: float32(p) * float32(omega)."""

    name = "te-f32cache"
    cache = "f32"


class TransformerEngineRotaryBSHD(TransformerEngineRotary):
    name = "te-bshd"
    tensor_format = "bshd"


class TransformerEngineRotaryTHD(TransformerEngineRotary):
    """TE thd (packed varlen) format: x (batch*seq, heads, d) with ``cu_seqlens``."""

    name = "te-thd"
    tensor_format = "thd"
