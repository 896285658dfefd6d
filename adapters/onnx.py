"""ONNX-family adapters: the opset-23 ``RotaryEmbedding`` op and its relatives.

All of these ops take **caller-built cos/sin caches**: they apply a rotation, they
do not compute frequencies.  So each adapter builds the caches and then runs
the real op on them:

* ``onnx-ref``  / ``onnx-ref-f32cache``: ``onnx.reference.ReferenceEvaluator``
  on a one-node opset-23 model ``RotaryEmbedding(X, cos_cache, sin_cache,
  position_ids)``;
* ``ort`` / ``ort-f32cache``: the same model in onnxruntime
  (``CPUExecutionProvider``; ``CUDAExecutionProvider`` when installed);
* ``ort-contrib`` / ``ort-contrib-f32cache``: the ``com.microsoft``
  ``RotaryEmbedding`` contrib op (input order ``(input, position_ids,
  cos_cache, sin_cache)``; ``num_heads`` is always set because the kernel
  requires it whenever ``rotary_embedding_dim`` is);
* ``torch-onnx`` / ``torch-onnx-f32cache``: ``torch.onnx.ops.rotary_embedding``
  eager (the aten implementation that torch exports 1:1 to the ONNX op).

Two ways of building the caches (the only thing that differs between an
adapter and its ``-f32cache`` twin):

* **reference caches** (default): ``ropeconf.reference.cos_sin`` (float64,
  exact to 2**-52) times the attention factor (and the xPos magnitude for the
  role), rounded once to the tested dtype.  Because the caches come from our
  reference, every rope_type "passes" here by construction: these adapters
  test only the **application step** (pairing convention, partial rotation,
  gather by ``position_ids``, arithmetic in the tested dtype), never a
  frequency formula.  The error stays at the rounding of the tested dtype at
  any position.
* **float32 caches**: what a user typically writes: ``inv_freq`` (our exact
  values) cast to float32, ``angle = float32(position) * float32(inv_freq)`` in
  float32, ``cos``/``sin`` in float32 (NumPy), times the attention factor in
  float32, cast to the tested dtype.  The error grows like position * 2**-24
  (the rounding of the float32 angle), which is the point of these variants.

Mapping decisions:

* plain positions ``(batch, seq)`` go through ``position_ids`` into a
  position-indexed cache of shape ``(rows, rotary_dim/2)``.  When the positions
  are non-negative and ``(max_pos+1) * rotary_dim/2 <= full_cache_max_elements``
  the cache has one row per position ``0..max_pos`` (what a model does);
  otherwise (long or negative positions) it holds only the distinct positions
  used and ``position_ids`` are their row numbers.  Both are legitimate uses of
  the op (``position_ids`` are row indices into the caches) and give the same
  values; the compact form just avoids building 2**20-row caches.
* axial and M-RoPE positions ``(batch, seq, streams)`` use the op's other form:
  no ``position_ids`` and per-token caches ``(batch, seq, rotary_dim/2)``.  The
  ``com.microsoft`` contrib op has no such form (``position_ids`` is
  required), so it declares axial/M-RoPE unsupported.
* xPos (reference caches only): the magnitude zeta**power depends only on the
  position, the pair and the role, so it folds into the cache rows exactly
  (cos*mag, sin*mag, like the reference).  The float32-cache variants declare
  xPos unsupported (there is no conventional float32 recipe to mimic).
* LongRoPE with ``longrope_switch='position'``: the short/long choice is per
  position, so a position-indexed cache expresses it (row p uses the set for
  p); the attention factor does not depend on the set.
* ``rotary_embedding_dim`` is 0 (the op's "whole head" default) for full
  rotation and ``rotary_dim`` for partial rotation.
* dtypes: the op's type constraint is float, float16, bfloat16 (no double).
  onnx.reference computes in the input dtype (NumPy), so all three run;
  onnxruntime registers CPU kernels for float and float16 only (bfloat16 has
  no CPU kernel, verified with onnxruntime 1.32.0); torch's eager
  implementation runs any floating dtype, float64 included.
* ``angle_dtype`` (tolerance model): float64 for reference caches (their angles
  are exact), float32 for float32 caches (also when the tested dtype is
  float64).
* onnxruntime needs a position-indexed cache of at least seq_len rows (it
  answers NOT_IMPLEMENTED otherwise, see ``_OrtBase``); its adapters pad.
  The opset-23 model sets ``num_heads`` only where the spec requires it (3-D
  input, never here): onnxruntime 1.23.2 wrongly demands it for partial
  rotation of 4-D input (fixed by 1.24.1), so ``ort`` errors there on 1.23.x.
  Findings and repro commands: docs/findings/onnx.md.
* onnxruntime writes ``$XDG_CACHE_HOME/Microsoft/DeveloperTools/.onnxruntime``
  (``~/.cache`` by default) when it is imported; we import it with
  ``XDG_CACHE_HOME`` pointed to a private directory under the temp dir (then
  restore the variable), so nothing is written to the user's home.
"""

from __future__ import annotations

import os
import sys
import tempfile
import threading
from typing import Any

import numpy as np

import dataclasses

from ropeconf.conformance.adapter import Adapter, Capabilities, Numerics
from ropeconf.reference import FREQS_FOR, ROPE_TYPES, RopeSpec
from ropeconf.reference.dtypes import numpy_dtype

from ._tables import cos_sin_tables

__all__ = [
    "OnnxReference", "OnnxReferenceF32Cache", "OrtRotary", "OrtRotaryF32Cache",
    "OrtContribRotary", "OrtContribRotaryF32Cache", "TorchOnnxRotary", "TorchOnnxRotaryF32Cache",
    "build_caches",
]

OPSET = 23
_ORT_CACHE_DIR = os.path.join(tempfile.gettempdir(), f"ropeconf-onnxruntime-{getattr(os, 'getuid', lambda: 0)()}")
_ort_lock = threading.Lock()


# --------------------------------------------------------------------------- helpers
def _import_ort():
    """Import onnxruntime with its device-id/telemetry cache redirected away from $HOME."""
    if "onnxruntime" in sys.modules:
        return sys.modules["onnxruntime"]
    with _ort_lock:
        old = os.environ.get("XDG_CACHE_HOME")
        os.makedirs(_ORT_CACHE_DIR, mode=0o700, exist_ok=True)
        os.environ["XDG_CACHE_HOME"] = _ORT_CACHE_DIR
        try:
            import onnxruntime
        finally:
            if old is None:
                os.environ.pop("XDG_CACHE_HOME", None)
            else:
                os.environ["XDG_CACHE_HOME"] = old
    return onnxruntime


def _cache_rows(positions: np.ndarray, n_pairs: int, max_elements: int, min_rows: int = 0):
    """Rows of a position-indexed cache, the position_ids that index them, and zero rows to append."""
    lo, hi = int(positions.min()), int(positions.max())
    n_full = max(hi + 1, min_rows)
    if lo >= 0 and n_full * n_pairs <= max_elements:
        return np.arange(n_full, dtype=np.int64), positions.astype(np.int64), 0
    rows, ids = np.unique(positions, return_inverse=True)
    return rows.astype(np.int64), ids.reshape(positions.shape).astype(np.int64), max(0, min_rows - rows.size)


def build_caches(spec: RopeSpec, positions: np.ndarray, dtype: str, *, cache: str = "ref",
                 role: str = "query", max_elements: int = 1 << 18, min_rows: int = 0):
    """(cos_cache, sin_cache, position_ids or None) for the ONNX RotaryEmbedding op.

    ``cache='ref'``: our float64 reference rounded once to ``dtype`` (attention
    factor and xPos folded in).  ``cache='f32'``: the conventional float32
    pipeline (see the module docstring).  Plain positions give a
    position-indexed cache and ``position_ids``; stream positions (axial,
    M-RoPE) give per-token caches ``(batch, seq, r/2)`` and ``None``.
    ``min_rows``: a position-indexed cache gets at least this many rows (rows
    that no position_id selects are real positions in the full form, zeros in
    the compact form).
    """
    positions = np.asarray(positions, dtype=np.int64)
    seq_len = int(positions.max()) + 1 if positions.size else None
    if positions.ndim == 3:  # per-token tables for stream positions
        rows, ids, pad = positions, None, 0
    else:
        rows, ids, pad = _cache_rows(positions, spec.n_pairs, max_elements, min_rows)
    c, s = cos_sin_tables(spec, rows, seq_len, dtype, cache=cache, role=role)
    return _pad(c, pad), _pad(s, pad), ids


def _pad(table: np.ndarray, rows: int) -> np.ndarray:
    if not rows:
        return table
    return np.concatenate([table, np.zeros((rows,) + table.shape[1:], table.dtype)])


def _rd_attr(spec: RopeSpec) -> int:
    return 0 if spec.rotary_dim == spec.head_dim else spec.rotary_dim


def _elem_type(dtype: str) -> int:
    from onnx import TensorProto

    return {"float32": TensorProto.FLOAT, "float16": TensorProto.FLOAT16,
            "bfloat16": TensorProto.BFLOAT16}[dtype]


def _one_node_model(dtype: str, interleaved: bool, rd_attr: int, with_ids: bool, *,
                    contrib: bool = False, num_heads: int = 0):
    """A one-node model: opset-23 RotaryEmbedding, or the com.microsoft contrib op."""
    from onnx import TensorProto, helper

    et = _elem_type(dtype)
    x = helper.make_tensor_value_info("X", et, [None, None, None, None])
    ids = helper.make_tensor_value_info("position_ids", TensorProto.INT64, [None, None])
    cshape = [None, None, None] if not with_ids else [None, None]
    cc = helper.make_tensor_value_info("cos_cache", et, cshape)
    sc = helper.make_tensor_value_info("sin_cache", et, cshape)
    y = helper.make_tensor_value_info("Y", et, [None, None, None, None])
    attrs: dict[str, Any] = {"interleaved": int(interleaved), "rotary_embedding_dim": rd_attr}
    if contrib:
        names, inputs = ["X", "position_ids", "cos_cache", "sin_cache"], [x, ids, cc, sc]
        attrs["num_heads"] = num_heads
        node = helper.make_node("RotaryEmbedding", names, ["Y"], domain="com.microsoft", **attrs)
        opsets = [helper.make_opsetid("", OPSET), helper.make_opsetid("com.microsoft", 1)]
    else:
        names = ["X", "cos_cache", "sin_cache"] + (["position_ids"] if with_ids else [])
        inputs = [x, cc, sc] + ([ids] if with_ids else [])
        node = helper.make_node("RotaryEmbedding", names, ["Y"], **attrs)
        opsets = [helper.make_opsetid("", OPSET)]
    graph = helper.make_graph([node], "rope", inputs, [y])
    return helper.make_model(graph, opset_imports=opsets, ir_version=10,
                             producer_name="rope-conformance")


_ALL_CAPS = Capabilities(rope_types=ROPE_TYPES, layouts=("half", "interleaved"), freqs_for=FREQS_FOR,
                         partial=True, positions="arbitrary", xpos=True, axial=True, mrope=True)
# Reference caches come from exact angles (declared as float64, the best the tolerance model knows);
# float32 caches form the angle in float32 whatever the tested dtype (float64 included).
_REF = Numerics(angle_dtype="float64")
_F32 = Numerics(angle_dtype="float32")


def _f32_twin(cls) -> tuple[str, Capabilities, Numerics]:
    """(cache, capabilities, precision) of the float32-cache twin of a reference-cache adapter:
    the same op fed conventional float32 tables (which do not model xPos)."""
    return "f32", dataclasses.replace(cls.capabilities, xpos=False), _F32


# --------------------------------------------------------------------------- base
class _CacheOpAdapter(Adapter):
    """Shared call(): build caches, call the op (``_call``)."""

    cache = "ref"
    #: a position-indexed cache holds every row 0..max_pos up to this many elements
    full_cache_max_elements = 1 << 18
    #: give position-indexed caches at least seq_len rows (onnxruntime needs it, see _OrtBase)
    cache_rows_at_least_seq = False

    def __init__(self) -> None:
        self._models: dict[tuple, Any] = {}

    def call(self, x, positions, spec, *, dtype, device="cpu", role="query"):
        positions = np.asarray(positions, dtype=np.int64)
        x = np.ascontiguousarray(np.asarray(x).astype(numpy_dtype(dtype), copy=False))
        if x.ndim != 4:
            raise ValueError(f"x must be (batch, heads, seq, head_dim), got shape {x.shape}")
        cos, sin, ids = build_caches(spec, positions, dtype, cache=self.cache, role=role,
                                     max_elements=self.full_cache_max_elements,
                                     min_rows=x.shape[2] if self.cache_rows_at_least_seq else 0)
        return self._call(x, cos, sin, ids, spec, dtype, device)

    def _call(self, x, cos, sin, ids, spec, dtype, device):
        raise NotImplementedError


# --------------------------------------------------------------------------- onnx.reference
class OnnxReference(_CacheOpAdapter):
    """``onnx.reference.ReferenceEvaluator`` on a one-node opset-23 RotaryEmbedding model."""

    name = "onnx-ref"
    distribution = "onnx"
    requires = ("onnx", "onnx.reference")
    capabilities = dataclasses.replace(_ALL_CAPS, dtypes=("float32", "float16", "bfloat16"), devices=("cpu",))
    precision = _REF

    def _call(self, x, cos, sin, ids, spec, dtype, device):
        from onnx.reference import ReferenceEvaluator

        key = (dtype, spec.layout == "interleaved", _rd_attr(spec), ids is not None)
        ev = self._models.get(key)
        if ev is None:
            ev = self._models[key] = ReferenceEvaluator(_one_node_model(*key))
        feeds = {"X": x, "cos_cache": cos, "sin_cache": sin}
        if ids is not None:
            feeds["position_ids"] = ids
        return ev.run(None, feeds)[0]


class OnnxReferenceF32Cache(OnnxReference):
    name = "onnx-ref-f32cache"
    cache, capabilities, precision = _f32_twin(OnnxReference)


# --------------------------------------------------------------------------- onnxruntime
class _OrtBase(_CacheOpAdapter):
    """Shared onnxruntime plumbing.

    onnxruntime (both kernels, 1.23.2 .. 1.32.0) returns NOT_IMPLEMENTED
    ("Updating cos_cache and sin_cache ...") whenever seq_len > cache rows, even
    when every position_id is in range (e.g. repeated positions): a check
    inherited from the contrib op's cache-extension path.  A model's cache has
    max_position_embeddings rows, so real graphs never hit it; we give every
    position-indexed cache at least seq_len rows (docs/findings/onnx.md).
    """

    distribution = "onnxruntime"
    requires = ("onnx", "onnxruntime")
    contrib = False
    cache_rows_at_least_seq = True
    _kernel_probe: dict = {}

    def availability(self):
        try:
            import onnx  # noqa: F401

            _import_ort()
        except Exception as e:
            return f"import failed: {type(e).__name__}: {e}"
        return None

    def probe_device(self, device: str) -> str | None:
        if device != "cuda":
            return super().probe_device(device)
        try:
            if "CUDAExecutionProvider" in _import_ort().get_available_providers():
                return None
        except Exception as e:  # noqa: BLE001
            return f"onnxruntime: {type(e).__name__}: {e}"
        return "no CUDAExecutionProvider in this onnxruntime"

    @staticmethod
    def _providers(device: str) -> list[str]:
        return ["CUDAExecutionProvider"] if device == "cuda" else ["CPUExecutionProvider"]

    def _session(self, dtype, interleaved, rd_attr, with_ids, heads, device):
        key = (dtype, interleaved, rd_attr, with_ids, heads if self.contrib else 0, device)
        sess = self._models.get(key)
        if sess is None:
            ort = _import_ort()
            so = ort.SessionOptions()
            so.log_severity_level = 4
            if device == "cuda":  # never let a missing CUDA kernel fall back to CPU silently
                so.add_session_config_entry("session.disable_cpu_ep_fallback", "1")
            model = _one_node_model(dtype, interleaved, rd_attr, with_ids, contrib=self.contrib,
                                    num_heads=heads)
            sess = ort.InferenceSession(model.SerializeToString(), so, providers=self._providers(device))
            self._models[key] = sess
        return sess

    def _probe(self, dtype: str, device: str) -> str | None:
        """None when the installed onnxruntime has a kernel for (op, dtype, device)."""
        key = (type(self).contrib, dtype, device)
        if key not in _OrtBase._kernel_probe:
            why = None
            try:
                self._session(dtype, False, 0, True, 1, device)
            except Exception as e:
                why = (f"onnxruntime {getattr(sys.modules.get('onnxruntime'), '__version__', '?')} "
                       f"cannot run {'com.microsoft.' if self.contrib else ''}RotaryEmbedding in "
                       f"{dtype} on {device}: {str(e).splitlines()[0][:200]}")
            _OrtBase._kernel_probe[key] = why
        return _OrtBase._kernel_probe[key]

    def why_unsupported(self, spec, dtype, device, positions=None):
        why = super().why_unsupported(spec, dtype, device, positions)
        if why is None and self.availability() is None:
            why = self._probe(dtype, device)
        return why

    def _call(self, x, cos, sin, ids, spec, dtype, device):
        sess = self._session(dtype, spec.layout == "interleaved", _rd_attr(spec), ids is not None,
                             x.shape[1], device)
        feeds = {"X": x, "cos_cache": cos, "sin_cache": sin}
        if ids is not None:
            feeds["position_ids"] = ids
        return sess.run(None, feeds)[0]


class OrtRotary(_OrtBase):
    """onnxruntime, opset-23 ``RotaryEmbedding`` (CPU kernel since onnxruntime 1.23)."""

    name = "ort"
    capabilities = dataclasses.replace(_ALL_CAPS, dtypes=("float32", "float16"), devices=("cpu", "cuda"))
    precision = _REF


class OrtRotaryF32Cache(OrtRotary):
    name = "ort-f32cache"
    cache, capabilities, precision = _f32_twin(OrtRotary)


class OrtContribRotary(_OrtBase):
    """onnxruntime ``com.microsoft.RotaryEmbedding`` (inputs: input, position_ids, cos, sin).

    4-D input (batch, heads, seq, head_dim) with ``num_heads`` set; ``position_ids``
    (batch, seq).  The op has no per-token-cache form, so no axial / M-RoPE.  Its
    ``scale`` attribute only matters when extending caches (not implemented on
    CPU) and is left at its default.
    """

    name = "ort-contrib"
    contrib = True
    capabilities = dataclasses.replace(OrtRotary.capabilities, axial=False, mrope=False)
    precision = _REF


class OrtContribRotaryF32Cache(OrtContribRotary):
    name = "ort-contrib-f32cache"
    cache, capabilities, precision = _f32_twin(OrtContribRotary)


# --------------------------------------------------------------------------- torch.onnx.ops
class TorchOnnxRotary(_CacheOpAdapter):
    """``torch.onnx.ops.rotary_embedding`` eager (torch's aten implementation of the ONNX op).

    float64 is accepted by the eager op (outside the ONNX type constraint, so
    such a graph would not export to a valid model).
    """

    name = "torch-onnx"
    distribution = "torch"
    requires = ("torch", "torch.onnx.ops")
    capabilities = dataclasses.replace(_ALL_CAPS, dtypes=("float64", "float32", "float16", "bfloat16"),
                                       devices=("cpu", "cuda"))
    precision = _REF

    def _call(self, x, cos, sin, ids, spec, dtype, device):
        import torch
        from torch.onnx.ops import rotary_embedding

        from ._torch import to_numpy, to_torch

        pid = None if ids is None else torch.from_numpy(ids).to(device)
        with torch.no_grad():
            y = rotary_embedding(to_torch(x, dtype, device), to_torch(cos, dtype, device),
                                 to_torch(sin, dtype, device), pid,
                                 interleaved=spec.layout == "interleaved", num_heads=0,
                                 rotary_embedding_dim=_rd_attr(spec))
        return to_numpy(y)


class TorchOnnxRotaryF32Cache(TorchOnnxRotary):
    name = "torch-onnx-f32cache"
    cache, capabilities, precision = _f32_twin(TorchOnnxRotary)
