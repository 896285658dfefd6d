"""Plumbing shared by the GPU-only adapters (flash_attn.py, liger.py, vllm.py, transformer_engine.py).

None of these libraries installs without a CUDA build (they are not in the project's
.venv); ``scripts/gpu-check.sh`` installs them on a GPU machine and runs their adapters.
Every adapter declares ``devices=("cuda",)`` and reports itself *unavailable* (with the
reason) when its library does not import or ``torch.cuda.is_available()`` is False.
Libraries are imported lazily, inside methods only.  Each adapter module keeps its
spec -> library-argument mapping in small pure functions that import no GPU library and
are tested on any machine (tests/test_adapter_<family>.py).

Cache-taking libraries (flash-attn, Liger, TE) apply a rotation to caller-built tables,
so, like the ONNX adapters (adapters/onnx.py), each comes in two forms: reference
tables (``ropeconf.adapters.onnx.build_caches(cache='ref')``: our float64 cos/sin
times the attention factor (and xPos), rounded once to the tested dtype) and conventional
float32 tables (``cache='f32'``, the ``-f32cache`` twins).  With reference tables every
rope_type "passes" by construction: they test the application step only.  TE takes
angles instead of cos/sin: its reference form is our float64 angle rounded once to
float32 (``freqs`` is float32 by API), its ``-f32cache`` form float32(p) * float32(omega).

Here: the ``_GpuAdapter`` base (CUDA-only availability, checks, no_grad run), the
declaration helper, and the per-sequence offset table that flash-attn and TE both index.
"""

from __future__ import annotations

import importlib
from typing import Sequence

import numpy as np

from ropeconf.conformance.adapter import Adapter, Capabilities, Numerics
from ropeconf.reference import RopeSpec

from ._torch import cuda_available, to_numpy


def _caps(angle_dtype: str, compute_dtype: str | None = None, **kw) -> tuple[Capabilities, Numerics]:
    return Capabilities(**kw), Numerics(angle_dtype, compute_dtype)


NO_GPU = "needs a CUDA GPU: torch.cuda.is_available() is False"
GPU_DTYPES = ("float32", "float16", "bfloat16")
#: a position-indexed table holds every row 0..max_pos up to this many elements (as adapters/onnx.py)
FULL_TABLE_MAX_ELEMENTS = 1 << 18


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
    """Shared plumbing: CUDA-only availability, checks, no_grad run, result in the library's dtype."""

    def availability(self) -> str | None:
        reasons = [] if cuda_available() else [NO_GPU]
        reasons += self._library_reasons()
        return "; ".join(reasons) or None

    def _library_reasons(self) -> list[str]:
        """Why the library is not usable here (import errors), GPU aside; [] when it is."""
        return _import_reasons(self.requires)

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
