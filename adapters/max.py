"""Modular MAX (PyPI ``max``): ``max.nn`` rotary-embedding layers, compiled and run through the graph API.

Checked against the installed ``max/nn/rotary_embedding.py`` of max 26.7.0 (in
this release the graph-API layers live in ``max.nn``; there is no
``max.nn.legacy``).  The installed source is the final word.

Mapping of a :class:`RopeSpec` (layout -> ``interleaved=(layout == "interleaved")``;
``dim=head_dim, n_heads=1, head_dim=head_dim``; ``theta=rope_theta``):

* ``default``  -> ``RotaryEmbedding``.
* ``linear``   -> ``Llama3RotaryEmbedding`` with ``Llama3RopeScalingParams(factor,
  low_freq_factor=1e38, high_freq_factor=1e38, orig_max_position)``: MAX has no
  linear class (``LinearScalingParams`` is a bare dataclass); this is exactly how
  MAX's own Gemma 3 builds linear scaling (``max/pipelines/architectures/gemma3/
  gemma3.py``: "This degenerates to linear scaling"): every wavelength is above
  ``L0/1e38``, so every omega becomes omega/factor.
* ``dynamic``  -> ``DynamicRotaryEmbedding(max_seq_len=original_max_position_embeddings)``,
  grown with its own ``maybe_update_freqs`` to cover the table.  It never
  rescales ``inv_freq`` (known divergence ``max-dynamic-never-rescales``).
* ``yarn``     -> ``YarnRotaryEmbedding`` + ``YarnScalingParams(factor, beta_fast, beta_slow,
  original_max_position_embeddings, truncate)``; when both ``mscale`` and
  ``mscale_all_dim`` are set (non-zero; the reference's DeepSeek rule) ->
  ``DeepseekYarnRotaryEmbedding`` + ``DeepseekYarnRopeScalingParams`` (its ``dim``
  is the rope dim), the only MAX class that applies the mscale ratio.  An
  explicit ``attention_factor`` has no MAX field: unsupported.
* ``longrope`` -> ``LongRoPERotaryEmbedding`` + ``LongRoPEScalingParams(short_factor,
  long_factor, original_max_position, max_position_embeddings)``.  MAX stitches the
  table per position (rows < L0 short factors, rows >= L0 long factors): that is
  the spec's ``longrope_switch='position'``; with ``'sequence'`` (HF's rule) it
  diverges at sequences that straddle L0.  MAX puts the LongRoPE attention factor
  into ``compute_scale()`` (the attention-logit scale), not into cos/sin, so the
  rotated output lacks it (known divergence).  An explicit ``attention_factor`` has
  no MAX field: unsupported.
* ``llama3``   -> ``Llama3RotaryEmbedding`` + ``Llama3RopeScalingParams``.
* ``ntk`` (static NTK base): no MAX class expresses it: unsupported.  Partial
  rotation, xPos, axial and M-RoPE: not expressible with these layers: unsupported.

Execution: one ``Graph`` per (spec, dtype, device) with input
``TensorType(dtype, ["batch", "seq", "heads", head_dim])`` (MAX's layout
(batch, seq, heads, head_dim); ours is transposed in and out) and a zero-size
uint8 carrier of shape ``["start_pos", 0]`` whose symbolic first dim is passed
as ``start_pos=`` (the layer takes a ``Dim``, not a tensor), so every batch,
sequence length, head count and start position reuses one compiled model.
Positions must therefore be of the 'offset' kind (one start for every row).

Table size: the layers precompute a float32 cos/sin table at graph build time
(MAX constant-folds it at compile): ``2*max_seq_len`` rows for
RotaryEmbedding/Llama3/LongRoPE/Dynamic, but only ``max_seq_len`` rows for
YaRN and DeepSeek-YaRN.  A slice past the end is NOT checked: MAX silently
reads past the table (garbage or NaN, measured).  The adapter sizes every table
to ``TABLE_POSITIONS`` rows (max_seq_len = 2**19, or 2**20 for YaRN) and
declares ``max_position = TABLE_POSITIONS - 1``.  The table size is fixed per
spec, not chosen per call, because a compile costs ~45-60 s of CPU whatever the
table size while a call costs ~1 ms: per-call table sizes would multiply the
compiles.

Precision: inv_freq is formed in float64 and cast to float32 (DeepSeek-YaRN:
float32 pow), positions are float32, angles ``p * omega`` float32
(``angle_dtype='float32'``); the table is cast to the activation dtype before the
rotation (bf16 cos/sin for bf16 input).

Compile cache: MAX caches compiled kernels under ``$MODULAR_CACHE_DIR`` (else
``$XDG_CACHE_HOME/modular``, i.e. ``~/.cache/modular``).  Before ``max`` is
imported the adapter sets ``MODULAR_CACHE_DIR`` (unless already set) to
``$ROPECONF_CACHE_DIR/modular`` or ``<system temp dir>/ropeconf-cache/modular``.
A warm cache cuts a repeated graph from ~50 s to ~4 s of CPU.
"""

from __future__ import annotations

import collections
import os
import re
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

from ropeconf.conformance.adapter import Adapter, Capabilities, Numerics, positions_kind
from ropeconf.reference import RopeSpec

#: rows of every compiled cos/sin table; positions 0 .. TABLE_POSITIONS-1 are valid.
TABLE_POSITIONS = 2 ** 20
#: MAX's Gemma 3 uses this low/high frequency factor to turn Llama3RotaryEmbedding into linear scaling.
_LINEAR_VIA_LLAMA3 = 1e38


def cache_dir() -> Path:
    """Where MAX's compile cache goes: $ROPECONF_CACHE_DIR/modular or <tmp>/ropeconf-cache/modular."""
    base = os.environ.get("ROPECONF_CACHE_DIR")
    root = Path(base) if base else Path(tempfile.gettempdir()) / "ropeconf-cache"
    return root / "modular"


def prepare_environment() -> None:
    """Point MAX's compile cache away from the home directory (call before importing max)."""
    if not os.environ.get("MODULAR_CACHE_DIR"):
        d = cache_dir()
        d.mkdir(parents=True, exist_ok=True)
        os.environ["MODULAR_CACHE_DIR"] = str(d)


def _uses_deepseek(spec: RopeSpec) -> bool:
    return spec.rope_type == "yarn" and bool(spec.mscale) and bool(spec.mscale_all_dim)


def max_seq_len_for(spec: RopeSpec, rows: int = TABLE_POSITIONS) -> int:
    """The ``max_seq_len`` that gives a table of at least ``rows`` rows for this spec's MAX class."""
    if spec.rope_type == "yarn":
        return rows                       # Yarn / DeepseekYarn: max_seq_len rows
    msl = -(-rows // 2)                   # the others: 2 * max_seq_len rows
    if spec.rope_type == "longrope":
        # the stitched table needs original_max_position < 2 * max_seq_len
        msl = max(msl, spec.original_max_position_embeddings)
    return msl


def build_layer(spec: RopeSpec, rows: int = TABLE_POSITIONS):
    """The ``max.nn`` layer for ``spec`` (call inside a Graph context for ``dynamic``)."""
    import max.nn as mnn
    from max.nn import rotary_embedding as rem

    d = spec.head_dim
    common = dict(dim=d, n_heads=1, theta=float(spec.rope_theta), max_seq_len=max_seq_len_for(spec, rows),
                  head_dim=d, interleaved=spec.layout == "interleaved")
    t = spec.rope_type
    if t == "default":
        return mnn.RotaryEmbedding(**common)
    if t == "linear":
        params = mnn.Llama3RopeScalingParams(factor=float(spec.factor), low_freq_factor=_LINEAR_VIA_LLAMA3,
                                             high_freq_factor=_LINEAR_VIA_LLAMA3,
                                             orig_max_position=4096)  # unused: L0/1e38 ~ 0 either way
        return mnn.Llama3RotaryEmbedding(**common, scaling_params=params)
    if t == "llama3":
        params = mnn.Llama3RopeScalingParams(factor=float(spec.factor), low_freq_factor=float(spec.low_freq_factor),
                                             high_freq_factor=float(spec.high_freq_factor),
                                             orig_max_position=int(spec.original_max_position_embeddings))
        return mnn.Llama3RotaryEmbedding(**common, scaling_params=params)
    if t == "dynamic":
        from max.dtype import DType
        from max.graph import DeviceRef, ops

        L0 = int(spec.original_max_position_embeddings)
        layer = mnn.DynamicRotaryEmbedding(**{**common, "max_seq_len": L0})
        # grow the table the way the layer is meant to be driven: position ids of the longest sequence
        n = max_seq_len_for(spec, rows)
        layer.maybe_update_freqs(ops.range(0, n, 1, out_dim=n, dtype=DType.int64, device=DeviceRef.CPU()))
        return layer
    if t == "yarn":
        if _uses_deepseek(spec):
            params = rem.DeepseekYarnRopeScalingParams(
                scaling_factor=float(spec.factor),
                original_max_position_embeddings=int(spec.original_max_position_embeddings),
                beta_fast=spec.beta_fast, beta_slow=spec.beta_slow, mscale=float(spec.mscale),
                mscale_all_dim=float(spec.mscale_all_dim))
            return rem.DeepseekYarnRotaryEmbedding(**common, scaling_params=params)
        params = mnn.YarnScalingParams(factor=float(spec.factor), beta_fast=float(spec.beta_fast),
                                       beta_slow=float(spec.beta_slow),
                                       original_max_position_embeddings=int(spec.original_max_position_embeddings),
                                       truncate=bool(spec.truncate))
        return mnn.YarnRotaryEmbedding(**common, scaling_params=params)
    if t == "longrope":
        L0 = int(spec.original_max_position_embeddings)
        mpe = spec.max_position_embeddings
        if mpe is None:  # only feeds MAX's compute_scale (factor = max_position_embeddings / L0)
            mpe = int(round(float(spec.factor) * L0))
        params = mnn.LongRoPEScalingParams(short_factor=[float(v) for v in spec.short_factor],
                                           long_factor=[float(v) for v in spec.long_factor],
                                           original_max_position=L0, max_position_embeddings=int(mpe))
        return mnn.LongRoPERotaryEmbedding(**common, scaling_params=params)
    raise ValueError(f"max adapter: rope_type={t!r} has no MAX layer")


_DTYPES = ("float32", "bfloat16", "float16")


class MaxRotary(Adapter):
    name = "max"
    distribution = "max"
    requires = ("max",)
    capabilities = Capabilities(
        rope_types=("default", "linear", "dynamic", "yarn", "longrope", "llama3"),
        layouts=("half", "interleaved"),
        dtypes=_DTYPES,
        devices=("cpu", "cuda"),
        freqs_for=("lang",),
        partial=False,
        xpos=False,
        axial=False,
        mrope=False,
        positions="offset",
        max_position=TABLE_POSITIONS - 1,
    )
    precision = Numerics(angle_dtype="float32")
    #: compiled models kept in memory (each holds its constant-folded table: rows * head_dim * 4 bytes)
    max_cached_models = 4

    def __init__(self) -> None:
        self._models: collections.OrderedDict[tuple, Any] = collections.OrderedDict()
        self._sessions: dict[str, Any] = {}
        self._lock = threading.Lock()
        self.compile_seconds: dict[tuple, float] = {}   # key -> wall seconds of its (last) compile

    # ------------------------------------------------------------------------------------------
    def availability(self) -> str | None:
        prepare_environment()
        return super().availability()

    def probe_device(self, device: str) -> str | None:
        if device == "cuda" and not _accelerator_available():
            return "MAX sees no accelerator: max.driver.accelerator_count() == 0"
        return super().probe_device(device) if device != "cuda" else None

    def why_unsupported(self, spec, dtype, device, positions=None):
        why = super().why_unsupported(spec, dtype, device, positions)
        if why:
            return why
        if spec.rope_type == "yarn" and spec.attention_factor is not None:
            return "yarn attention_factor not supported (YarnScalingParams has no such field; MAX applies mscale)"
        if spec.rope_type == "longrope" and spec.attention_factor is not None:
            return "longrope attention_factor not supported (LongRoPEScalingParams has no such field)"
        if positions is not None:
            p = np.asarray(positions)
            if p.dtype.kind == "f" and not np.all(p == np.round(p)):
                return "non-integer positions not supported (MAX takes an integer start_pos)"
            if p.size and np.min(p) < 0:
                return "negative positions not supported (MAX slices its table from start_pos >= 0)"
        return None

    # ------------------------------------------------------------------------------------------
    def _session(self, device: str):
        if device not in self._sessions:
            from max.driver import CPU, Accelerator
            from max.engine import InferenceSession

            dev = CPU() if device == "cpu" else Accelerator(0)
            self._sessions[device] = InferenceSession(devices=[dev])
        return self._sessions[device]

    @staticmethod
    def cache_key(spec: RopeSpec, dtype: str, device: str) -> tuple:
        """What the compiled graph depends on: the spec less ``longrope_switch`` (MAX has one behaviour)."""
        d = spec.to_dict()
        d.pop("longrope_switch", None)
        return (tuple(sorted((k, repr(v)) for k, v in d.items())), dtype, device)

    def compiled(self, spec: RopeSpec, dtype: str, device: str = "cpu"):
        """The compiled model for (spec, dtype, device), built on first use (LRU-bounded cache)."""
        key = self.cache_key(spec, dtype, device)
        with self._lock:
            if key in self._models:
                self._models.move_to_end(key)
                return self._models[key]
            prepare_environment()
            from max.dtype import DType
            from max.graph import DeviceRef, Graph, TensorType

            ref = DeviceRef.CPU() if device == "cpu" else DeviceRef.GPU(0)
            x_type = TensorType(getattr(DType, dtype), ["batch", "seq", "heads", spec.head_dim], device=ref)
            start_type = TensorType(DType.uint8, ["start_pos", 0], device=ref)
            name = "ropeconf_" + re.sub(r"\W", "_", f"{spec.rope_type}_{spec.layout}_{spec.head_dim}_{dtype}")
            with Graph(name, input_types=[x_type, start_type]) as graph:
                x, carrier = graph.inputs
                layer = build_layer(spec)
                graph.output(layer(x.tensor, start_pos=carrier.tensor.shape[0]))
            t0 = time.perf_counter()
            model = self._session(device).load(graph)
            self.compile_seconds[key] = time.perf_counter() - t0
            self._models[key] = model
            while len(self._models) > self.max_cached_models:
                self._models.popitem(last=False)
            return model

    def call(self, x, positions, spec, *, dtype, device="cpu", role="query"):
        pos = np.asarray(positions)
        if positions_kind(pos) == "arbitrary":
            raise ValueError("max adapter: positions must share one start (MAX takes a single start_pos)")
        start = int(pos.flat[0]) if pos.size else 0
        from max.driver import CPU, Accelerator, Buffer

        model = self.compiled(spec, dtype, device)
        x = np.asarray(x)
        xs = np.ascontiguousarray(np.swapaxes(x, 1, 2))            # (batch, seq, heads, head_dim)
        if dtype == "bfloat16":
            from max.dtype import DType

            xb = Buffer.from_numpy(xs.view(np.uint16)).view(DType.bfloat16)
        else:
            xb = Buffer.from_numpy(np.ascontiguousarray(xs, dtype=dtype))
        carrier = Buffer.from_numpy(np.zeros((start, 0), dtype=np.uint8))
        if device != "cpu":
            acc = Accelerator(0)
            xb, carrier = xb.to(acc), carrier.to(acc)
        out = model.execute(xb, carrier)[0]
        if device != "cpu":
            out = out.to(CPU())
        if dtype == "bfloat16":
            import ml_dtypes
            from max.dtype import DType

            y = out.view(DType.uint16).to_numpy().view(ml_dtypes.bfloat16)
        else:
            y = out.to_numpy()
        return np.swapaxes(y, 1, 2)


def _accelerator_available() -> bool:
    try:
        from max.driver import accelerator_count

        return accelerator_count() > 0
    except Exception:
        return False
