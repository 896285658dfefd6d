"""Apple MLX: ``mx.fast.rope`` (PyPI ``mlx``, ``mlx[cpu]`` on Linux) and mlx-lm's RoPE classes.

Maps a :class:`~ropeconf.reference.RopeSpec` onto the libraries' public API and
nothing else (no RoPE math here; the only arithmetic is the exact dtype
conversion and ``freqs = 1 / inv_freq`` for ``freqs_for='custom'``, see below):

* ``MlxFastRope`` ("mlx-fast"): ``mx.fast.rope(x, dims=rotary_dim,
  traditional=(layout == 'interleaved'), base=rope_theta, scale=..., offset=...,
  freqs=...)``.  ``rope_type='linear'`` is ``scale=1/factor`` (``scale``
  multiplies the positions: that is how ``nn.RoPE`` and mlx-lm's
  ``initialize_rope`` express linear scaling).  ``freqs_for='custom'`` passes
  ``freqs=1/inv_freq`` and ``base=None``: ``freqs`` takes *periods*, not inverse
  frequencies (the library computes ``inv_freqs = reciprocal(freqs)``); that is
  also how mlx-lm's own classes use it.
* ``MlxLmRope`` ("mlx-lm"): the module a user of mlx-lm gets from a Hugging Face
  (transformers v4 style) config: ``initialize_rope(dims, config['rope_theta'],
  traditional, config.get('rope_scaling'), config.get('max_position_embeddings'))``,
  exactly the call mlx-lm's model classes make (models/llama.py); the config dict is
  :func:`mlx_lm_config`.  ``nn.RoPE`` (default, linear), ``DynamicNTKScalingRoPE``,
  ``Llama3RoPE``, ``YarnRoPE``, ``SuScaledRoPE`` (longrope), called as
  ``rope(x, offset=...)`` like mlx-lm's attention layers.

Input (batch, heads, seq, head_dim): MLX rotates along axis -2 with positions
``(arange(seq) + offset) * scale`` formed in float32, ``offset`` an int or an
integer array with one start per batch row.  Hence:

* every row start+0..S-1, one start        -> ``offset=start`` (int);
* every row contiguous, different starts   -> ``offset=mx.array(starts, int32)``;
* anything else                            -> one call per token column ``t`` on
  ``x[:, :, t:t+1]`` with ``offset=positions[:, t]`` (the batched single-token
  decode step), concatenated along the sequence axis.

``instance()`` keeps one library object for a spec and drives it like decoding
with a KV cache: each call's offset is what ``cache.offset`` holds when the
call starts (the first position of each row), and the object is reused across
calls and dtypes.

Conversions are exact: float32 / float16 / float64 arrays go through
``mx.array(a, dtype=...)`` (the dtype always given: ``mx.array`` of a float64
NumPy array is float32 otherwise); bfloat16 goes through float32
(``ml_dtypes.bfloat16`` -> float32 -> ``astype(mx.bfloat16)`` and back), which is
exact both ways.

Precision (``mlx/fast.cpp`` CPU fallback, confirmed bit for bit by rebuilding it
from MLX primitives, docs/findings/mlx.md): positions, the schedule and the
angle are float32 for every input dtype (float64 included), cos/sin are computed
in float32 and cast to the input dtype, the rotation runs in the input dtype:
``Numerics(angle_dtype='float32')``.  Positions are float32 in the library (exact
up to 2**24) and the offset is int32, hence ``max_position = 2**24``.

Lazy imports: ``mlx`` is imported only in ``call`` / ``instance``; without it the
adapters are *unavailable* with the import error (``requires``).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from ropeconf.conformance.adapter import Adapter, Capabilities, Numerics, Unsupported, positions_kind
from ropeconf.reference import RopeSpec
from ropeconf.reference.dtypes import DTYPES, name_of

MAX_POSITION = 2 ** 24   # positions are float32 in the library; the offset is int32


def _mx():
    import mlx.core as mx

    return mx


def to_mx(x: np.ndarray, dtype: str):
    """``x`` (NumPy, in ``dtype``) as an MLX array of that dtype, exactly."""
    mx = _mx()
    a = np.asarray(x)
    if dtype == "bfloat16":
        return mx.array(a.astype(np.float32), dtype=mx.float32).astype(mx.bfloat16)  # exact both steps
    return mx.array(a, dtype=getattr(mx, dtype))


def to_numpy(y, dtype: str) -> np.ndarray:
    """An MLX array of ``dtype`` as a NumPy array of the same dtype, exactly."""
    mx = _mx()
    if dtype == "bfloat16":
        import ml_dtypes

        return np.array(y.astype(mx.float32), dtype=np.float32).astype(ml_dtypes.bfloat16)
    return np.array(y, dtype=getattr(np, dtype))


def offset_plan(positions: np.ndarray) -> tuple[str, Any]:
    """How the positions reach the library: ('scalar', start) | ('rows', int32 starts) | ('tokens', None)."""
    p = np.asarray(positions, dtype=np.int64)
    if p.shape[-1] == 0:
        return "scalar", 0
    start = p[:, :1]
    if not np.array_equal(p, start + np.arange(p.shape[1])):
        return "tokens", None
    if np.all(start == start.flat[0]):
        return "scalar", int(start.flat[0])
    return "rows", start[:, 0].astype(np.int32)


def call_with_positions(fn, x_mx, positions: np.ndarray):
    """``fn(x, offset)`` (one library call) for ``positions`` (module doc)."""
    mx = _mx()
    kind, start = offset_plan(positions)
    if kind == "scalar":
        return fn(x_mx, start)
    if kind == "rows":
        return fn(x_mx, mx.array(start, dtype=mx.int32))
    p = np.asarray(positions, dtype=np.int64)
    cols = [fn(x_mx[:, :, t:t + 1, :], mx.array(p[:, t].astype(np.int32), dtype=mx.int32))
            for t in range(p.shape[1])]
    return mx.concatenate(cols, axis=2)


class _MlxBase(Adapter):
    distribution = "mlx"
    requires = ("mlx.core",)
    # float32 positions, schedule and angle for every dtype; cos/sin cast to the input dtype (fast.cpp)
    precision = Numerics(angle_dtype="float32")

    def why_unsupported(self, spec, dtype, device, positions=None):
        why = super().why_unsupported(spec, dtype, device, positions)
        if why:
            return why
        if positions is not None and np.size(positions) and int(np.min(positions)) < 0:
            return "negative positions: the offset is a cache length (positions = arange(seq) + offset)"
        return None

    def rope_fn(self, spec: RopeSpec):
        """``fn(x_mx, offset) -> mx.array``: the library object for ``spec`` and how it is called."""
        raise NotImplementedError

    def call(self, x, positions, spec, *, dtype, device="cpu", role="query"):
        out = call_with_positions(self.rope_fn(spec), to_mx(x, dtype), np.asarray(positions))
        return to_numpy(out, dtype)

    def instance(self, spec, dtype, device="cpu"):
        return _Decoder(self, spec, device)


class _Decoder:
    """One library object reused across calls, driven by a KV-cache offset (module doc)."""

    def __init__(self, adapter: _MlxBase, spec: RopeSpec, device: str):
        self.adapter, self.spec, self.device = adapter, spec, device
        self.fn = adapter.rope_fn(spec)
        self.offset: np.ndarray | None = None   # next position of each row (cache.offset after the last call)

    def run(self, x, positions, role="query"):
        dtype = name_of(np.asarray(x).dtype) or "float64"
        p = np.asarray(positions, dtype=np.int64)
        self.adapter.require_supported(self.spec, dtype, self.device, p)
        out = call_with_positions(self.fn, to_mx(x, dtype), p)
        if p.size:
            self.offset = p[:, -1] + 1
        return to_numpy(out, dtype)


class MlxFastRope(_MlxBase):
    """``mx.fast.rope``: default and linear (``scale``), custom frequencies (``freqs``), both layouts."""

    name = "mlx-fast"
    capabilities = Capabilities(
        rope_types=("default", "linear"),
        layouts=("half", "interleaved"),
        dtypes=DTYPES,
        devices=("cpu",),
        freqs_for=("lang", "custom"),
        partial=True, xpos=False, axial=False, mrope=False,
        positions="arbitrary",     # per-row offsets natively; other positions token column by column
        max_position=MAX_POSITION,
    )

    def rope_fn(self, spec):
        mx = _mx()
        dims, traditional = spec.rotary_dim, spec.layout == "interleaved"
        scale = 1.0 / spec.factor if spec.rope_type == "linear" else 1.0
        if spec.freqs_for == "custom":
            with np.errstate(divide="ignore"):  # inv_freq 0 -> period inf -> reciprocal 0
                periods = 1.0 / np.asarray(spec.inv_freq, dtype=np.float64)
            kw = {"base": None, "freqs": mx.array(periods.astype(np.float32), dtype=mx.float32)}
        else:
            kw = {"base": float(spec.rope_theta)}

        def fn(x, offset):
            return mx.fast.rope(x, dims, traditional=traditional, scale=scale, offset=offset, **kw)

        return fn


def mlx_lm_config(spec: RopeSpec) -> dict[str, Any]:
    """The config entries mlx-lm's model classes read for RoPE, as a Hugging Face (v4) config gives them.

    ``rope_theta``, ``rope_scaling`` (None for plain RoPE; keys named as HF names them,
    ``rope_type`` for the type) and ``max_position_embeddings``.  Every key the spec sets is
    written, also those mlx-lm 0.32.2 does not read (YaRN ``truncate``/``attention_factor``,
    LongRoPE ``attention_factor``): a real config carries them, and a library that ignores
    them must show it.

    ``max_position_embeddings``: dynamic NTK reads its L0 from it (mlx-lm and HF alike), so
    it is L0 there; LongRoPE derives its attention factor from it (mpe / L0), so it is the
    spec's own value, else factor * L0, the config in which mpe / L0 equals the factor;
    otherwise the spec's value (None when unset).
    """
    t, L0 = spec.rope_type, spec.original_max_position_embeddings
    mpe = spec.max_position_embeddings
    scaling: dict[str, Any] | None = None
    if t == "linear":
        scaling = {"rope_type": "linear", "factor": float(spec.factor)}
    elif t == "dynamic":
        scaling = {"rope_type": "dynamic", "factor": float(spec.factor)}
        mpe = int(L0)
    elif t == "llama3":
        scaling = {"rope_type": "llama3", "factor": float(spec.factor), "low_freq_factor": float(spec.low_freq_factor),
                   "high_freq_factor": float(spec.high_freq_factor), "original_max_position_embeddings": int(L0)}
    elif t == "yarn":
        scaling = {"rope_type": "yarn", "factor": float(spec.factor), "original_max_position_embeddings": int(L0),
                   "beta_fast": float(spec.beta_fast), "beta_slow": float(spec.beta_slow)}
        for key in ("mscale", "mscale_all_dim", "attention_factor"):
            if getattr(spec, key) is not None:
                scaling[key] = float(getattr(spec, key))
        if not spec.truncate:
            scaling["truncate"] = False
    elif t == "longrope":
        scaling = {"rope_type": "longrope", "short_factor": [float(v) for v in spec.short_factor],
                   "long_factor": [float(v) for v in spec.long_factor], "original_max_position_embeddings": int(L0)}
        if spec.factor is not None:
            scaling["factor"] = float(spec.factor)
        if spec.attention_factor is not None:
            scaling["attention_factor"] = float(spec.attention_factor)
        if mpe is None:
            mpe = spec.factor * L0
            mpe = int(mpe) if float(mpe).is_integer() else mpe
    elif t != "default":
        raise Unsupported(f"mlx-lm adapter: rope_type={t} has no mlx-lm config")
    return {"rope_theta": float(spec.rope_theta), "rope_scaling": scaling, "max_position_embeddings": mpe}


class MlxLmRope(_MlxBase):
    """mlx-lm ``initialize_rope`` from a config dict: default, linear, dynamic, llama3, yarn, longrope."""

    name = "mlx-lm"
    distribution = "mlx-lm"
    requires = ("mlx.core", "mlx_lm.models.rope_utils")
    capabilities = dataclasses.replace(
        MlxFastRope.capabilities,
        rope_types=("default", "linear", "dynamic", "llama3", "yarn", "longrope"),
        freqs_for=("lang",),
    )

    def why_unsupported(self, spec, dtype, device, positions=None):
        why = super().why_unsupported(spec, dtype, device, positions)
        if why:
            return why
        if spec.rope_type == "longrope" and spec.layout != "half":
            return ("layout=interleaved with longrope: SuScaledRoPE hard-codes traditional=False "
                    "(mlx_lm/models/rope_utils.py:64) and initialize_rope passes no layout to it")
        if spec.rope_type == "dynamic" and positions is not None and positions_kind(positions) == "arbitrary":
            return ("dynamic with per-row or non-contiguous positions: DynamicNTKScalingRoPE takes one int offset "
                    "(its base depends on x.shape[-2] + offset, rope_utils.py:260)")
        return None

    def module(self, spec: RopeSpec):
        """The object mlx-lm's model classes build for ``spec`` (models/llama.py: initialize_rope(...))."""
        from mlx_lm.models.rope_utils import initialize_rope

        cfg = mlx_lm_config(spec)
        return initialize_rope(spec.rotary_dim, cfg["rope_theta"], spec.layout == "interleaved",
                               cfg["rope_scaling"], cfg["max_position_embeddings"])

    def rope_fn(self, spec):
        rope = self.module(spec)

        def fn(x, offset):
            return rope(x, offset=offset)

        return fn
