"""NVIDIA TransformerEngine fused RoPE (GPU only; shared plumbing in adapters/_gpu.py).

Sources read (stored copies of the upstream repository; commit of the copy read):
``transformer_engine/pytorch/attention/rope.py`` @0dc141cf ``apply_rotary_pos_emb(t, freqs,
tensor_format='sbhd', start_positions=None, interleaved=False, fused=False, cu_seqlens=None,
cp_size=1, cp_rank=0)``; freqs are *angles* (s2, 1, 1, d2) float32, laid out per element
(``RotaryPositionEmbedding`` builds cat(freqs, freqs), or each angle twice when
interleaved); fused kernel ``transformer_engine/common/fused_rope/fused_rope.cu`` @01b5648e:
``sincosf`` of ``freqs[(s + start_positions[b]) * d2 + d]`` in float32, rotation in float32,
tail copied.  Older TE keeps the function in ``transformer_engine.pytorch.attention`` (one
file) or ``...dot_product_attention.rope``; all three places are tried.

The mapping is the pure functions below (``te_arguments`` over ``_gpu.offset_table``,
``te_freqs``, ``te_angles``, ``te_to_format``, ``te_from_format``), tested on any machine
in tests/test_adapter_transformer_engine.py.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import inspect
from typing import Any

import numpy as np

from ropeconf.reference import FREQS_FOR, ROPE_TYPES, RopeSpec, inv_freq

from ._gpu import (FULL_TABLE_MAX_ELEMENTS, GPU_DTYPES, _caps, _GpuAdapter, _import_reasons, offset_table,
                   per_batch_starts)
from ._tables import table_angles
from ._torch import to_torch

__all__ = ["TransformerEngineRotary", "TransformerEngineRotaryF32Cache", "TransformerEngineRotaryBSHD",
           "TransformerEngineRotaryTHD", "te_arguments", "te_freqs", "te_angles", "te_to_format", "te_from_format"]

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

    def _library_reasons(self):
        reasons = _import_reasons(("torch",))
        if not reasons:  # apply_rotary_pos_emb lives in one of several modules, by TE version
            try:
                _te_apply()
            except Exception as e:
                reasons.append(f"{type(e).__name__}: {e}")
        return reasons

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
