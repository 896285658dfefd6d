"""Liger-Kernel ``liger_rotary_pos_emb`` (GPU only; shared plumbing in adapters/_gpu.py).

Sources read (stored copies of the upstream repository; commit of the copy read):
``src/liger_kernel/transformers/rope.py``, ``src/liger_kernel/ops/rope.py`` @00fb8bf2:
``liger_rotary_pos_emb(q, k, cos, sin, position_ids=None, unsqueeze_dim=1)``; q/k (bsz,
n_head, seq, head_dim); cos/sin HF-style (1 | bsz, seq, head_dim) with the two halves equal
(the kernel loads only the first half); ``position_ids`` is unused by the kernel; HF half
layout only, whole head only (no rotary_dim < head_dim); computes in the dtype of cos/sin;
rotates q and k in place when they are physically (bsz, seq, head, dim).

The mapping is :func:`liger_cos_sin` (pure, tested on any machine in tests/test_adapter_liger.py).
"""

from __future__ import annotations

import numpy as np

from ropeconf.reference import FREQS_FOR, ROPE_TYPES

from ._gpu import FULL_TABLE_MAX_ELEMENTS, GPU_DTYPES, _caps, _GpuAdapter
from ._torch import to_torch
from .onnx import _f32_twin, build_caches

__all__ = ["LigerRotary", "LigerRotaryF32Cache", "liger_cos_sin"]


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
    cache, capabilities, precision = _f32_twin(LigerRotary)
