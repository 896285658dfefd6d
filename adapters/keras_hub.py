"""KerasHub ``RotaryEmbedding`` (PyPI ``keras-hub``; verified on 0.32.0 with keras 3.15.1).

One adapter per Keras backend: ``keras-torch``, ``keras-jax``, ``keras-tf``.
Keras fixes its backend when it is first imported (``KERAS_BACKEND``), so each
adapter declares ``env = {"KERAS_BACKEND": ...}`` and the suite runs it in its
own worker process; ``availability()`` refuses to run in a process whose
backend is another one (before importing keras when ``KERAS_BACKEND`` already
names another backend).  Nothing here imports keras at module level (the
runner reads ``env`` in the parent process).  Run on torch 2.13.0+cpu, jax
0.10.2 and tensorflow-cpu 2.21.0 (the project venv has tensorflow only with
``ROPE_WITH_TF=1``; without it ``keras-tf`` reports the import error).

Mapping of a :class:`~ropeconf.reference.RopeSpec` (no RoPE math here; only
argument mapping and array conversion):

* ``default``  -> ``keras_hub.layers.RotaryEmbedding(max_wavelength=rope_theta)``
  (the layer's own defaults, ``rope_type="linear"``, ``scaling_factor=1.0``,
  exactly as KerasHub's models build it; dividing by 1.0 is exact);
* ``linear``   -> ``RotaryEmbedding(rope_type="linear", scaling_factor=factor)``;
* ``dynamic``  -> ``RotaryEmbedding(rope_type="dynamic", scaling_factor=factor)``.
  KerasHub's "dynamic" is a *uniform* division ``omega / s**(d/(d-2))`` with no
  sequence-length dependence and no ``original_max_position_embeddings``; it
  is mapped as is and the suite reports the divergence from dynamic NTK
  (conformance/known/keras_hub.toml, ``keras-hub-dynamic-is-uniform``);
* ``yarn``     -> ``RotaryEmbedding(rope_type="yarn", scaling_factor=factor,
  beta_fast, beta_slow, original_max_position_embeddings, truncate)``.  The
  layer has no ``attention_factor`` / ``mscale`` / ``mscale_all_dim``: specs
  that set them are declared unsupported;
* ``llama3``   -> ``keras_hub.src.models.llama.llama_rotary_embedding.
  LlamaRotaryEmbedding(max_wavelength=rope_theta, frequency_adjustment_factor=
  factor, low_freq_factor, high_freq_factor, pretraining_sequence_length=
  original_max_position_embeddings)``;
* ``longrope`` -> ``keras_hub.src.models.phi3.phi3_rotary_embedding.
  Phi3SuScaledRotaryEmbedding(inverese_freq_short_factor=short_factor,
  inverese_freq_long_factor=long_factor, max_sequence_length=factor * L0
  (or max_position_embeddings when factor is None), pretraining_sequence_length
  =L0, max_wavelength=rope_theta)``.  Its attention factor is
  sqrt(1 + ln(max_sequence_length/L0)/ln L0), HF's default; an explicit
  ``attention_factor`` and ``longrope_switch='position'`` cannot be expressed
  (unsupported).  The layer picks the long factors when ``start_index +
  seq_len > L0`` (HF: ``max(positions) + 1 > L0``), so it is called with
  ``start_index``; its ``positions=`` path is broken in 0.32.0 (the base
  ``call`` makes positions 2-D, the subclass' einsum ``"i,j->ij"`` needs 1-D:
  torch and jax raise, tensorflow returns a wrong-shaped tensor or raises), so
  positions that are not one contiguous range shared by every row are
  declared unsupported (docs/findings/keras_hub.md, finding F4).

Layout: x is the suite's (batch, heads, seq, head_dim); the layer is built
with ``sequence_axis=2, feature_axis=-1`` (no transpose here; the layer's own
``moveaxis`` to (batch, seq, heads, dim) and back is a pure permutation).
The layer rotates the whole feature axis in HALF layout (``concat(-x2, x1)``),
so interleaved layout and partial rotation are unsupported, as are xPos,
axial and M-RoPE positions and every ``freqs_for`` but ``lang``.

Positions: a range or one offset shared by every row is passed as
``start_index=`` (the decoding API: ``arange(seq) + float32(start_index)``);
anything else as ``positions=`` (int32, shape (batch, seq), cast to float32 by
the layer).  Both give float32 positions, exact below 2**24.

dtype: the layer is built with ``dtype=<tested dtype>`` (a DTypePolicy whose
compute dtype is the tested dtype) and x is cast to it.  The layer forms
positions, frequencies and angles in float32 (``angle_dtype='float32'``),
casts cos/sin to the compute dtype and rotates in it; YaRN's magnitude
``0.1 ln s + 1`` is formed *in the compute dtype*.  float64 is not declared:
the angles would still be float32.
"""

from __future__ import annotations

import importlib
import os
import sys

import numpy as np

from ropeconf.conformance.adapter import Adapter, Capabilities, Numerics, Unsupported, positions_kind
from ropeconf.reference import RopeSpec
from ropeconf.reference.dtypes import name_of, numpy_dtype

ROPE_TYPES = ("default", "linear", "dynamic", "yarn", "llama3", "longrope")
DTYPES = ("float32", "float16", "bfloat16")
_INT32_MAX = 2 ** 31 - 1


class KerasHubRotary(Adapter):
    """Base class: the backend-independent mapping.  Subclasses set ``backend``."""

    distribution = "keras-hub"
    backend = ""
    capabilities = Capabilities(
        rope_types=ROPE_TYPES,
        layouts=("half",),
        dtypes=DTYPES,
        devices=("cpu",),
        freqs_for=("lang",),
        partial=False, xpos=False, axial=False, mrope=False,
        positions="arbitrary",
        max_position=_INT32_MAX,     # positions travel as int32 (jax has no int64 without x64)
    )
    precision = Numerics(angle_dtype="float32")

    def __init__(self) -> None:
        self._layers: dict[tuple[RopeSpec, str], object] = {}

    # ------------------------------------------------------------------ availability
    def availability(self) -> str | None:
        env = os.environ.get("KERAS_BACKEND")
        if "keras" not in sys.modules and env is not None and env != self.backend:
            # keras is not imported yet and will pick KERAS_BACKEND: refuse without importing it
            return self._wrong_backend(env, env)
        why = super().availability()
        if why:
            if env != self.backend:
                why += (f" (KERAS_BACKEND={env!r}; without it Keras uses ~/.keras/keras.json or "
                        f"'tensorflow': run this adapter with KERAS_BACKEND={self.backend})")
            return why
        import keras

        have = keras.config.backend()
        if have != self.backend:
            return self._wrong_backend(have, env)
        return None

    def _wrong_backend(self, have: str, env: str | None) -> str:
        return (f"this process runs the Keras backend {have!r} (KERAS_BACKEND={env!r}), this adapter "
                f"needs {self.backend!r}: Keras fixes its backend at import, run it in its own "
                f"process with KERAS_BACKEND={self.backend}")

    # ------------------------------------------------------------------ capabilities
    def why_unsupported(self, spec: RopeSpec, dtype: str, device: str,
                        positions: np.ndarray | None = None) -> str | None:
        why = super().why_unsupported(spec, dtype, device, positions)
        if why:
            return why
        if positions is not None and np.size(positions) and int(np.min(positions)) < -_INT32_MAX:
            return "position below -2**31+1 (positions travel as int32)"
        t = spec.rope_type
        if t == "yarn":
            set_ = [k for k in ("attention_factor", "mscale", "mscale_all_dim") if getattr(spec, k) is not None]
            if set_:
                return (f"yarn {', '.join(set_)} not supported: RotaryEmbedding has no such parameter "
                        f"(its magnitude is always 0.1*ln(factor)+1)")
        if t == "longrope":
            if spec.attention_factor is not None:
                return ("longrope attention_factor not supported: Phi3SuScaledRotaryEmbedding derives it "
                        "from max_sequence_length / pretraining_sequence_length")
            if spec.longrope_switch != "sequence":
                return "longrope_switch='position' not supported: Phi3SuScaledRotaryEmbedding switches per call"
            if positions is not None and np.size(positions) and positions_kind(positions) == "arbitrary":
                return ("longrope with positions other than one shared contiguous range not supported: "
                        "Phi3SuScaledRotaryEmbedding's positions= argument raises in keras-hub 0.32.0 "
                        "(einsum 'i,j->ij' on the 2-D positions the base call makes)")
        return None

    # ------------------------------------------------------------------ mapping
    def layer_kwargs(self, spec: RopeSpec, dtype: str) -> tuple[str, dict]:
        """(class name, constructor keywords) for ``spec``; no keras import needed."""
        common = {"sequence_axis": 2, "feature_axis": -1, "dtype": dtype}
        t = spec.rope_type
        theta = spec.rope_theta
        if t == "default":
            return "RotaryEmbedding", {"max_wavelength": theta, **common}
        if t in ("linear", "dynamic"):
            return "RotaryEmbedding", {"max_wavelength": theta, "scaling_factor": spec.factor,
                                       "rope_type": t, **common}
        if t == "yarn":
            return "RotaryEmbedding", {"max_wavelength": theta, "scaling_factor": spec.factor,
                                       "rope_type": "yarn", "beta_fast": spec.beta_fast,
                                       "beta_slow": spec.beta_slow,
                                       "original_max_position_embeddings": spec.original_max_position_embeddings,
                                       "truncate": spec.truncate, **common}
        if t == "llama3":
            return "LlamaRotaryEmbedding", {"max_wavelength": theta, "frequency_adjustment_factor": spec.factor,
                                            "low_freq_factor": spec.low_freq_factor,
                                            "high_freq_factor": spec.high_freq_factor,
                                            "pretraining_sequence_length": spec.original_max_position_embeddings,
                                            **common}
        if t == "longrope":
            L0 = spec.original_max_position_embeddings
            if spec.factor is not None:
                msl = spec.factor * L0
                msl = int(msl) if float(msl).is_integer() else msl
            else:
                msl = spec.max_position_embeddings
            return "Phi3SuScaledRotaryEmbedding", {
                "inverese_freq_short_factor": [float(v) for v in spec.short_factor],
                "inverese_freq_long_factor": [float(v) for v in spec.long_factor],
                "max_sequence_length": msl, "pretraining_sequence_length": L0,
                "max_wavelength": theta, **common}
        raise ValueError(f"rope_type={t!r} is not mapped")

    def build_layer(self, spec: RopeSpec, dtype: str):
        """A new layer for ``spec`` with the dtype policy ``dtype`` (what a model's constructor does)."""
        cls_name, kwargs = self.layer_kwargs(spec, dtype)
        return _layer_class(cls_name)(**kwargs)

    def layer(self, spec: RopeSpec, dtype: str):
        """The adapter's layer for (spec, dtype), built once and reused by every ``call``."""
        key = (spec, dtype)
        if key not in self._layers:
            self._layers[key] = self.build_layer(spec, dtype)
        return self._layers[key]

    def instance(self, spec: RopeSpec, dtype: str, device: str = "cpu"):
        """One layer per dtype policy, built on first use and reused by every later call of a sequence."""
        missing = self.device_unavailable(device)
        if missing:
            raise Unsupported(f"{self.name} adapter: device={device} unavailable here: {missing}")
        return _Live(self, spec, device)

    def call(self, x: np.ndarray, positions: np.ndarray, spec: RopeSpec, *, dtype: str,
             device: str = "cpu", role: str = "query"):
        return self.rotate(self.layer(spec, dtype), x, positions, spec, dtype=dtype)

    def rotate(self, layer, x: np.ndarray, positions: np.ndarray, spec: RopeSpec, *, dtype: str):
        """``layer(x, start_index=...)`` or ``layer(x, positions=...)``, (b, h, s, d) in and out."""
        pos = np.asarray(positions)
        shape = x.shape
        x, pos = self._pad(x, pos, spec)
        x32 = np.asarray(x, dtype=np.float32)  # exact: x is in dtype; the layer's input is cast to dtype
        if positions_kind(pos) in ("range", "offset"):
            out = self._apply(layer, x32, dtype, start_index=int(pos.flat[0]) if pos.size else 0)
        else:
            out = self._apply(layer, x32, dtype, positions=pos.astype(np.int32))
        import keras
        from keras import ops

        returned = keras.backend.standardize_dtype(out.dtype)  # the layer's own output dtype
        # through float32 (exact for every declared dtype), back to the dtype the layer returned
        out = ops.convert_to_numpy(ops.cast(out, "float32")).astype(numpy_dtype(returned))
        return out[: shape[0], : shape[1], : shape[2]]

    def _apply(self, layer, x32: np.ndarray, dtype: str, *, start_index: int | None = None,
               positions: np.ndarray | None = None):
        """The layer call (eager on every backend)."""
        from keras import ops

        xt = ops.cast(ops.convert_to_tensor(x32), dtype)
        if positions is None:
            return layer(xt, start_index=start_index)
        return layer(xt, positions=ops.convert_to_tensor(positions))

    def _pad(self, x: np.ndarray, pos: np.ndarray, spec: RopeSpec):
        """Shapes as they arrive, except under jax (see KerasHubJax)."""
        return x, pos


class _Live:
    """One spec's layers, reused by every call of a sequence (``Adapter.instance``).  A Keras layer's dtype
    policy is fixed at construction, so a dtype switch gets (and keeps) a second layer, as a model in
    another dtype would.  The layer holds no weights and no cache (it recomputes cos/sin every call), so
    reuse can only expose per-layer state the library might add; the stateful sequences check that it
    adds none."""

    def __init__(self, adapter: KerasHubRotary, spec: RopeSpec, device: str):
        self.adapter, self.spec, self.device = adapter, spec, device
        self.layers: dict[str, object] = {}

    def run(self, x, positions, role="query"):
        dtype = name_of(np.asarray(x).dtype) or "float64"
        self.adapter.require_supported(self.spec, dtype, self.device, positions)  # the checks run() makes
        if dtype not in self.layers:
            self.layers[dtype] = self.adapter.build_layer(self.spec, dtype)
        return self.adapter.rotate(self.layers[dtype], x, positions, self.spec, dtype=dtype)


def _layer_class(name: str):
    if name == "RotaryEmbedding":
        return importlib.import_module("keras_hub.layers").RotaryEmbedding
    if name == "LlamaRotaryEmbedding":
        return importlib.import_module("keras_hub.src.models.llama.llama_rotary_embedding").LlamaRotaryEmbedding
    if name == "Phi3SuScaledRotaryEmbedding":
        return importlib.import_module(
            "keras_hub.src.models.phi3.phi3_rotary_embedding").Phi3SuScaledRotaryEmbedding
    raise ValueError(name)


class KerasHubTorch(KerasHubRotary):
    name = "keras-torch"
    backend = "torch"
    env = {"KERAS_BACKEND": "torch"}
    requires = ("torch", "keras_hub")


class KerasHubJax(KerasHubRotary):
    """jax compiles every op once per input shape (~40 ms of CPU each here), and property cases draw many
    shapes.  So batch, heads and seq are padded up to fixed buckets (batch a power of two >= 2, heads >= 4,
    seq 512 or the next power of two above: extra rows of zeros, extra tokens continuing the positions)
    and the result is cut back.  What remains is one compile per op, rotary_dim, dtype and positions form
    (shared start_index or per-row positions): ~700 compiles, ~26 s of the adapter's ~42 s in a ci run.  RoPE acts per token and per head, so the
    real rows are unchanged (tests/test_adapter_keras_hub.py checks this bit for bit).  LongRoPE is
    not padded in seq: Phi3SuScaledRotaryEmbedding picks its factors from the input length.

    The layer is called eagerly, as under torch and tensorflow.  Running it under ``jax.jit`` (as
    ``CausalLM.generate`` does, keras_hub/src/models/causal_lm.py lines 165-168) was measured and not
    kept: a jitted call compiles once per layer configuration and shape (~0.3 s of CPU each), and the
    suite draws a new spec for almost every property case, so the whole-run CPU time stayed the same
    (docs/findings/keras_hub.md, "Run time")."""

    name = "keras-jax"
    backend = "jax"
    env = {"KERAS_BACKEND": "jax"}
    requires = ("jax", "keras_hub")

    def _pad(self, x: np.ndarray, pos: np.ndarray, spec: RopeSpec):
        b, h, s, _ = x.shape
        pb, ph = max(2, 1 << max(0, b - 1).bit_length()), max(h, 4)
        ps = s if spec.rope_type == "longrope" else max(512, 1 << max(0, s - 1).bit_length())
        if (pb, ph, ps) == (b, h, s):
            return x, pos
        xp = np.zeros((pb, ph, ps, x.shape[3]), dtype=x.dtype)
        xp[:b, :h, :s] = x
        step = np.arange(1, ps - s + 1)
        tail = pos[:, -1:] + step if s else np.broadcast_to(step - 1, (b, ps))
        pp = np.concatenate([pos, tail], axis=1) if s else tail
        pp = np.concatenate([pp, np.broadcast_to(pp[-1:], (pb - b, ps))], axis=0)
        return xp, pp


class KerasHubTensorflow(KerasHubRotary):
    name = "keras-tf"
    backend = "tensorflow"
    env = {"KERAS_BACKEND": "tensorflow"}
    requires = ("tensorflow", "keras_hub")
