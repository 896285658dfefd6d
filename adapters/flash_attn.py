"""flash-attn ``apply_rotary_emb`` (GPU only; shared plumbing in adapters/_gpu.py).

Source read (stored copies of the upstream repository; commit of the copy read):
flash-attn 2.8.3 (``flash_attn/__init__.py`` @06a9900d): ``flash_attn/layers/rotary.py``
@09d422b1 ``apply_rotary_emb(x, cos, sin, interleaved=False, inplace=False,
seqlen_offsets=0, cu_seqlens=None, max_seqlen=None)``; x is (batch, seqlen, nheads,
headdim), or (total_seqlen, nheads, headdim) with ``cu_seqlens``; cos/sin are
(seqlen_ro, rotary_dim/2).  Kernel ``flash_attn/ops/triton/rotary.py`` @03f6a6b7: asserts
``x.dtype == cos.dtype``, ``headdim <= 256``, ``seqlen_ro >= seqlen`` and (int offsets)
``offset + seqlen <= seqlen_ro``; loads cos/sin/x as float32, computes in float32, and
reads row ``s + seqlen_offsets[b]`` of the table (a tensor offset past the table is
*masked to cos=1, sin=0*, i.e. silently no rotation, so the tables built here always
cover every row read).

The mapping is :func:`flash_attn_arguments` (pure, tested on any machine in
tests/test_adapter_flash_attn.py) over ``_gpu.offset_table``.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ropeconf.reference import FREQS_FOR, ROPE_TYPES, RopeSpec

from ._gpu import FULL_TABLE_MAX_ELEMENTS, GPU_DTYPES, _caps, _GpuAdapter, _ints, offset_table, per_batch_starts
from ._torch import to_torch
from .onnx import _f32_twin, build_caches

__all__ = ["FlashAttnRotary", "FlashAttnRotaryF32Cache", "FlashAttnRotaryVarlen", "FlashAttnRotaryInplace",
           "flash_attn_arguments"]

FLASH_ATTN_MAX_HEAD_DIM = 256  # flash_attn/ops/triton/rotary.py: assert headdim <= 256


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
    cache, capabilities, precision = _f32_twin(FlashAttnRotary)


class FlashAttnRotaryVarlen(FlashAttnRotary):
    """flash-attn varlen form: x (batch*seq, heads, d), ``cu_seqlens`` and ``max_seqlen``."""

    name = "flash-attn-varlen"
    varlen = True


class FlashAttnRotaryInplace(FlashAttnRotary):
    """flash-attn with ``inplace=True`` (the result is written into x)."""

    name = "flash-attn-inplace"
    inplace = True
