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

Execution: compiled graphs take input ``TensorType(dtype, ["batch", "seq", "heads",
head_dim])`` (MAX's layout (batch, seq, heads, head_dim); ours is transposed in and
out) and a zero-size uint8 carrier of shape ``["start_pos", 0]`` whose symbolic first
dim is passed as ``start_pos=`` (the layer takes a ``Dim``, not a tensor), so every
batch, sequence length, head count and start position reuses one compiled model.
Positions must therefore be of the 'offset' kind (one start for every row).

Bundles (issue 12): a MAX compile costs a fixed ~35 s of CPU per graph plus ~20 s per
layer in it (measured, docs/findings/max.md), so the specs the suite calls most, each
variant's canonical spec at a head dim (what the golden corpus and the metamorphic
checks use), are compiled together: one graph per (head dim, dtype, device, chunk of
``bundle_size`` variants) holds each variant's MAX layer once and applies it in both
layouts (the same layer object with its ``interleaved`` attribute set to False, then
True: the cos/sin table does not depend on the layout), one output per (variant,
layout).  A call runs the whole bundle and keeps its spec's output (the other outputs
cost microseconds).  Any other spec (drawn property/stateful parameters) gets a graph
of its own.  The math is MAX's layers' in every case: nothing is precomputed outside
the graph.

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

The fused path: MAX pipelines apply RoPE with ``max.nn.kernels.fused_qk_ragged_rope``
(ragged batch, paged KV cache, positions from the cache lengths): the second adapter
of this file, :class:`MaxFusedRotary` (``max-fused``), drives that kernel on CPU.
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
_LAYOUTS = ("half", "interleaved")


def table_key(spec: RopeSpec) -> tuple:
    """What a MAX layer's cos/sin table depends on: the spec less its layout and ``longrope_switch``."""
    d = spec.replace(layout="half").to_dict()
    d.pop("longrope_switch", None)
    return tuple(sorted((k, repr(v)) for k, v in d.items()))


def canonical_specs(head_dim: int) -> list[RopeSpec]:
    """Each supported variant's canonical spec at ``head_dim`` (half layout), one per distinct table,
    in variant order: what the golden corpus and the metamorphic checks call."""
    from ropeconf.reference.variants import VARIANTS

    out, seen = [], set()
    for variant in VARIANTS.values():
        try:
            spec = variant.spec(head_dim=head_dim, rotary_dim=head_dim, layout="half")
        except ValueError:
            continue
        if MaxRotary().why_unsupported(spec, "float32", "cpu") is None and table_key(spec) not in seen:
            seen.add(table_key(spec))
            out.append(spec)
    return out


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
    #: compiled models kept in memory (each holds its constant-folded tables: rows * head_dim * 4 bytes each)
    max_cached_models = 3
    #: variants per bundle graph; 0 = a graph per spec.  Compile memory grows ~0.4 GB per layer (measured):
    #: 5 keeps a bundle's compile near 2.5 GB on a 7 GB CI runner.
    bundle_size = 5

    def __init__(self) -> None:
        self._models: collections.OrderedDict[tuple, Any] = collections.OrderedDict()
        self._sessions: dict[str, Any] = {}
        self._lock = threading.Lock()
        self.compile_seconds: dict[tuple, float] = {}   # graph key -> wall seconds of its (last) compile
        self._bundles: dict[tuple[int, int], list[list[RopeSpec]]] = {}

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
    def _load(self, key, graph, device: str):
        """Compile ``graph`` (timed into ``compile_seconds``) and keep it among the last few models."""
        t0 = time.perf_counter()
        model = self._session(device).load(graph)
        self.compile_seconds[key] = time.perf_counter() - t0
        self._models[key] = model
        while len(self._models) > self.max_cached_models:
            self._models.popitem(last=False)
        return model

    def _session(self, device: str):
        if device not in self._sessions:
            from max.driver import CPU, Accelerator
            from max.engine import InferenceSession

            dev = CPU() if device == "cpu" else Accelerator(0)
            self._sessions[device] = InferenceSession(devices=[dev])
        return self._sessions[device]

    @staticmethod
    def cache_key(spec: RopeSpec, dtype: str, device: str) -> tuple:
        """What a single-spec graph depends on: the spec less ``longrope_switch`` (MAX has one behaviour)."""
        d = spec.to_dict()
        d.pop("longrope_switch", None)
        return (tuple(sorted((k, repr(v)) for k, v in d.items())), dtype, device)

    def bundles(self, head_dim: int) -> list[list[RopeSpec]]:
        """The canonical specs at ``head_dim`` in chunks of ``bundle_size`` (one graph each)."""
        key = (head_dim, self.bundle_size)
        if key not in self._bundles:
            specs = canonical_specs(head_dim) if self.bundle_size > 0 else []
            n = max(self.bundle_size, 1)
            self._bundles[key] = [specs[i:i + n] for i in range(0, len(specs), n)]
        return self._bundles[key]

    def route(self, spec: RopeSpec) -> tuple[tuple[RopeSpec, ...], tuple[str, ...], int]:
        """(the graph's specs, its layouts, the output index of ``spec``): its bundle's, else its own graph."""
        key = table_key(spec)
        for chunk in self.bundles(spec.head_dim):
            keys = [table_key(s) for s in chunk]
            if key in keys:
                return tuple(chunk), _LAYOUTS, keys.index(key) * len(_LAYOUTS) + _LAYOUTS.index(spec.layout)
        return (spec,), (spec.layout,), 0

    def compiled(self, spec: RopeSpec, dtype: str, device: str = "cpu"):
        """The compiled model serving (spec, dtype, device) and the index of its output (built on first use)."""
        specs, layouts, index = self.route(spec)
        if len(specs) == 1 and len(layouts) == 1:
            key = self.cache_key(spec, dtype, device)
        else:
            key = (tuple(table_key(s) for s in specs), layouts, dtype, device)
        with self._lock:
            if key in self._models:
                self._models.move_to_end(key)
                return self._models[key], index
            prepare_environment()
            from max.dtype import DType
            from max.graph import DeviceRef, Graph, TensorType

            ref = DeviceRef.CPU() if device == "cpu" else DeviceRef.GPU(0)
            x_type = TensorType(getattr(DType, dtype), ["batch", "seq", "heads", spec.head_dim], device=ref)
            start_type = TensorType(DType.uint8, ["start_pos", 0], device=ref)
            what = (f"{specs[0].rope_type}_{layouts[0]}" if len(specs) == 1 and len(layouts) == 1 else
                    f"bundle{len(specs)}_" + "_".join(s.rope_type for s in specs))
            name = "ropeconf_" + re.sub(r"\W", "_", f"{what}_{spec.head_dim}_{dtype}")
            with Graph(name, input_types=[x_type, start_type]) as graph:
                x, carrier = graph.inputs
                outs = []
                for s in specs:
                    layer = build_layer(s if len(layouts) > 1 else spec)
                    for layout in layouts:
                        layer.interleaved = layout == "interleaved"   # the table is shared; only the pairing changes
                        outs.append(layer(x.tensor, start_pos=carrier.tensor.shape[0]))
                graph.output(*outs)
            return self._load(key, graph, device), index

    def call(self, x, positions, spec, *, dtype, device="cpu", role="query"):
        pos = np.asarray(positions)
        if positions_kind(pos) == "arbitrary":
            raise ValueError("max adapter: positions must share one start (MAX takes a single start_pos)")
        start = int(pos.flat[0]) if pos.size else 0
        from max.driver import CPU, Accelerator, Buffer

        model, index = self.compiled(spec, dtype, device)
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
        out = model.execute(xb, carrier)[index]
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


# ============================================================================================ fused path
#: tokens per KV-cache page (MHAKVCacheParams: "must be a multiple of 128 and at least 128")
_PAGE = 128


class MaxFusedRotary(MaxRotary):
    """MAX's pipeline path: ``max.nn.kernels.fused_qk_ragged_rope`` over a ragged batch and a paged KV cache.

    What MAX's attention layers do (``max/nn/attention/attention_with_rope.py``: the rope layer's
    ``freqs_cis`` table, ``ops.cast`` to the activation dtype, then the fused kernel): here the table is
    the same ``max.nn`` layer's (``build_layer``), the cache is ``MHAKVCacheParams(n_kv_heads=1,
    page_size=128, num_layers=1)`` with its own ``get_symbolic_inputs()``, and the kernel places token
    i of row b at position ``cache_lengths[b] + i``.  So each row's positions must be
    ``start_b + 0..S-1`` (rows may start anywhere: a ragged batch of requests at different KV-cache
    offsets); the adapter sets ``cache_lengths`` to the row starts.

    One head per execute (the graph's head count is a static 1: with a symbolic head count the
    kernel wrote nothing, measured).  Query: the kernel's output.  Key: the kernel rotates the new
    tokens' keys in the paged cache in place; the adapter writes x into the cache slots (the cache
    has one KV head) and reads them back.  Only the pages holding new tokens are allocated;
    every earlier page id points at one shared page the kernel never touches.  float32 only (the one
    dtype run).
    """

    name = "max-fused"
    capabilities = Capabilities(
        rope_types=MaxRotary.capabilities.rope_types,
        layouts=("half", "interleaved"),
        dtypes=("float32",),
        devices=("cpu", "cuda"),
        freqs_for=("lang",),
        positions="arbitrary",            # narrowed in why_unsupported: each row start + 0..S-1
        max_position=TABLE_POSITIONS - 1,
    )
    bundle_size = 0

    def why_unsupported(self, spec, dtype, device, positions=None):
        why = super().why_unsupported(spec, dtype, device, positions)
        if why:
            return why
        if positions is not None:
            p = np.asarray(positions)
            if p.ndim != 2 or (p.size and not np.array_equal(p, p[:, :1] + np.arange(p.shape[1]))):
                return ("rows that are not start + 0..S-1 not supported (the fused kernel places row b's "
                        "token i at cache_lengths[b] + i)")
        return None

    def compiled_fused(self, spec: RopeSpec, dtype: str, device: str = "cpu"):
        key = ("fused",) + self.cache_key(spec, dtype, device)
        with self._lock:
            if key in self._models:
                self._models.move_to_end(key)
                return self._models[key]
            prepare_environment()
            from max import tree
            from max.dtype import DType
            from max.graph import DeviceRef, Graph, TensorType, ops
            from max.nn.kernels import fused_qk_ragged_rope

            ref = DeviceRef.CPU() if device == "cpu" else DeviceRef.GPU(0)
            params = self._kv_params(spec, dtype, ref)
            kv_types, treedef = tree.flatten(params.get_symbolic_inputs()[0])
            # one static head: with a symbolic head count the kernel wrote nothing (all-zero output, measured)
            types = [TensorType(getattr(DType, dtype), ["total_seq", 1, spec.head_dim], device=ref),
                     TensorType(DType.uint32, ["rows_plus_1"], device=ref)] + list(kv_types)
            name = "ropeconf_fused_" + re.sub(r"\W", "_", f"{spec.rope_type}_{spec.layout}_{spec.head_dim}_{dtype}")
            with Graph(name, input_types=types) as graph:
                x, offsets, *kv = graph.inputs
                kv_collection = tree.unflatten(treedef, iter(kv), exact=False)
                layer = build_layer(spec)
                freqs = ops.cast(layer.freqs_cis, x.tensor.dtype).to(x.tensor.device)  # attention_with_rope.py
                q = fused_qk_ragged_rope(params, x.tensor, offsets.tensor, kv_collection, freqs,
                                         ops.constant(0, DType.uint32, device=ref),
                                         interleaved=spec.layout == "interleaved")
                graph.output(q)
            return self._load(key, graph, device)

    @staticmethod
    def _kv_params(spec: RopeSpec, dtype: str, ref):
        from max.dtype import DType
        from max.nn.kv_cache.cache_params import MHAKVCacheParams

        return MHAKVCacheParams(dtype=getattr(DType, dtype), head_dim=spec.head_dim, num_layers=1, devices=[ref],
                                n_kv_heads=1, page_size=_PAGE)

    def call(self, x, positions, spec, *, dtype, device="cpu", role="query"):
        from max import tree
        from max.driver import CPU, Accelerator, Buffer
        from max.nn.kv_cache.cache_params import packed_page_stride
        from max.nn.kv_cache.input_types import KVCacheInputsPerDevice

        pos = np.asarray(positions, dtype=np.int64)
        if self.why_unsupported(spec, dtype, device, pos):
            raise ValueError(f"max-fused adapter: {self.why_unsupported(spec, dtype, device, pos)}")
        model = self.compiled_fused(spec, dtype, device)
        x = np.asarray(x, dtype=dtype)
        batch, heads, seq, d = x.shape
        starts = pos[:, 0] if seq else np.zeros(batch, np.int64)
        first, last = starts // _PAGE, (starts + max(seq, 1) - 1) // _PAGE
        width = int(last.max()) + 1 if batch else 1
        lookup = np.zeros((batch, width), np.uint32)              # page 0: shared, never touched
        n_pages = 1
        for b in range(batch):
            for j in range(int(first[b]), int(last[b]) + 1):
                lookup[b, j] = n_pages
                n_pages += 1
        offsets = (np.arange(batch + 1) * seq).astype(np.uint32)
        dev = CPU() if device == "cpu" else Accelerator(0)
        tok = np.swapaxes(x, 1, 2)                                 # (batch, seq, heads, d)

        def run_once(q: np.ndarray, k_head: np.ndarray | None):
            blocks = np.zeros((n_pages, 2, 1, _PAGE, 1, d), dtype=dtype)
            if k_head is not None:                                 # the new tokens' keys, at their cache slots
                for b in range(batch):
                    p = starts[b] + np.arange(seq)
                    blocks[lookup[b, p // _PAGE], 0, 0, p % _PAGE, 0] = k_head[b]
            bufs = KVCacheInputsPerDevice(
                kv_blocks=Buffer.from_numpy(blocks), cache_lengths=Buffer.from_numpy(starts.astype(np.uint32)),
                lookup_table=Buffer.from_numpy(lookup),
                max_prompt_length=Buffer.from_numpy(np.array([seq], np.uint32)),
                max_cache_length=Buffer.from_numpy(np.array([int(starts.max()) if batch else 0], np.uint32)),
                page_stride=packed_page_stride(Buffer.from_numpy(blocks)),
                attention_dispatch_metadata=Buffer.from_numpy(np.zeros(4, np.int64)))
            ins = [Buffer.from_numpy(np.ascontiguousarray(q)), Buffer.from_numpy(offsets)] + \
                list(tree.flatten(bufs)[0])
            if device != "cpu":
                ins = [b.to(dev) for b in ins]
            out = model.execute(*ins)[0]
            if device != "cpu":
                out = out.to(CPU())
            cache = ins[2].to(CPU()).to_numpy() if device != "cpu" else ins[2].to_numpy()
            return out.to_numpy(), cache

        out = np.empty_like(tok)
        for h in range(heads):                                     # one head per execute (one static head)
            q = np.ascontiguousarray(tok[:, :, h:h + 1]).reshape(batch * seq, 1, d)
            y, cache = run_once(q, tok[:, :, h] if role == "key" else None)
            if role == "query":
                out[:, :, h] = y.reshape(batch, seq, d)
                continue
            for b in range(batch):
                p = starts[b] + np.arange(seq)
                out[b, :, h] = cache[lookup[b, p // _PAGE], 0, 0, p % _PAGE, 0]
        return np.swapaxes(out, 1, 2)
