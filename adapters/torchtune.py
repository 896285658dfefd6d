"""torchtune (PyPI ``torchtune``; verified on 0.6.1 with torchao 0.17.0 and torch 2.13.0).

Maps a :class:`~ropeconf.reference.RopeSpec` onto torchtune's RoPE modules and
nothing else (no RoPE math here; ``_torch`` only converts arrays):

* ``torchtune.modules.RotaryPositionalEmbeddings(dim=rotary_dim,
  max_seq_len=N, base=rope_theta)`` for ``rope_type='default'``
  (adapter ``torchtune``);
* ``torchtune.models.llama3_1.Llama3ScaledRoPE(dim=rotary_dim, max_seq_len=N,
  base=rope_theta, scale_factor=factor, low_freq_factor=low_freq_factor,
  high_freq_factor=high_freq_factor,
  old_context_len=original_max_position_embeddings)`` for
  ``rope_type='llama3'`` (adapter ``torchtune-llama3``).  In 0.6.1 the
  constructor takes all four Llama 3.1 parameters (older snapshots of the file
  hard-coded 8 / 1 / 4 / 8192), so every llama3 spec maps;
* both are called as ``module(x_bshd, input_pos=positions)``: x is
  (batch, seq, heads, head_dim), so the suite's (batch, heads, seq, head_dim)
  is transposed in and out; ``input_pos`` is the int64 (batch, seq) position
  array, which ``forward`` uses to index the cache (``self.cache[input_pos]``
  viewed as [b, s, 1, h_d/2, 2]), so every row may carry its own, unsorted
  positions ('arbitrary').

What the 0.6.1 source does (torchtune/modules/position_embeddings.py and
torchtune/models/llama3_1/_position_embeddings.py), and what that means here:

* layout: INTERLEAVED (``x.reshape(..., -1, 2)``: pairs (2i, 2i+1));
* the whole last axis is rotated (the cache is [max_seq_len, dim/2, 2] and is
  viewed against ``h_d/2``): no partial rotation;
* the cos/sin cache is built at construction for positions 0..max_seq_len-1,
  in float32: ``theta = 1 / base ** (arange(0, dim, 2).float() / dim)``
  (Llama 3.1: ``apply_scaling`` of that, in float32, band decisions included),
  ``idx_theta = einsum('i, j -> ij', arange(max_seq_len).float(), theta)``.
  The angle is float32 for every input dtype (``angle_dtype='float32'``);
* ``forward`` computes in float32 (``x.float()``) and casts back
  (``type_as(x)``): bf16/fp16 are rounded once, at the output.  **float64
  input is computed in float32** (the input is rounded to float32, cos/sin and
  the rotation are float32), so float64 is declared unsupported with that
  reason.  No tolerance declaration covers it (``angle_dtype`` and
  ``compute_dtype`` do not cover an input rounded to float32 and a float32
  rotation): declared, it flickers around 1x the bound at short positions and
  conforms at long ones, which no registry entry can match stably
  (docs/findings/torchtune.md, finding 1);
* an index at or above max_seq_len raises IndexError; a negative one silently
  indexes from the end of the cache (Python indexing), so negative positions
  are declared unsupported.

Cache policy (adapter choice).  Row p of the cache is p * theta, rounded once,
then cos/sin, whatever max_seq_len is (checked bit for bit by
tests/test_adapter_torchtune.py), so one module per (spec, device) is kept
and rebuilt only when a call needs a larger cache: max_seq_len is
max(positions) + 1 rounded up to a power of two (at least 64), capped at
``MAX_POSITION + 1``.  ``MAX_POSITION = 2**20`` bounds the memory a cache
takes (4 * rotary_dim bytes per position: 256 MiB at rotary_dim 64) and its
build time (cos/sin of 2**20 x 32 large float32 angles: about 3.5 s on 2 CPU
cores at rotary_dim 64, 7 s at 128).  The modules are kept least recently
used first within ``CACHE_BYTES`` (1 GiB) of caches in all, so property runs
that draw many specs do not accumulate them.

Stateful instance (``instance(spec, dtype, device)``): the way a model holds it.  One module
per spec, built **once** with the user's fixed ``max_seq_len`` and reused for every call of a
sequence, never grown.  A RopeSpec of these rope types has no field for it
(``max_position_embeddings`` is a LongRoPE key), so it is the constructor's default, 4096 in 0.6.1
(read from its signature, not assumed), what ``RotaryPositionalEmbeddings(dim)`` gives; torchtune's
model builders pass theirs the same way (``llama3_1(max_seq_len=...)`` ->
``Llama3ScaledRoPE(max_seq_len=max_seq_len)``, models/llama3_1/_component_builders.py line 85).  The
docstrings promise that past max_seq_len "the cached freqs will be recomputed"
(position_embeddings.py lines 28-29, llama3_1/_position_embeddings.py lines 30-31); no code does that:
``forward`` indexes ``self.cache[input_pos]`` (line 96 / 165), so a position at or above max_seq_len
raises ``IndexError`` (and on CUDA a device-side assert).  The suite reports it as that call's error,
registered as ``torchtune-max-seq-len-indexerror`` (conformance/known/torchtune.toml); below
max_seq_len the reused module conforms (its cache is float32 whatever the input dtype, so dtype
switches and interleaved specs leave nothing behind).

Import noise: importing torchtune imports torchao 0.17, which logs "Failed to
load ..._C_mxfp8...so" / "..._C_cutlass_90a.abi3.so" (CUDA kernels absent on a
CPU build) through the ``torchao`` logger, and torch logs a
``register_constant()`` deprecation through ``torch.utils._pytree``.  Those
two loggers are raised to ERROR for the duration of the import only (their
levels are restored afterwards); an import that fails is reported by
``availability()`` with its error text.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import importlib
import logging

import numpy as np

from ropeconf.conformance.adapter import Adapter, Capabilities, Numerics, Unsupported
from ropeconf.reference import RopeSpec
from ropeconf.reference.dtypes import DTYPES, name_of

from ._torch import to_numpy, to_torch

MAX_POSITION = 2 ** 20
CACHE_BYTES = 2 ** 30
_DTYPES = tuple(d for d in DTYPES if d != "float64")
_FLOAT64_WHY = ("dtype=float64: forward computes in float32 (x.float(), float32 cos/sin cache) and casts "
                "back with type_as(x), so float64 input gets float32 accuracy")
_MIN_ROWS = 64
_QUIET_LOGGERS = ("torchao", "torch.utils._pytree")


@contextlib.contextmanager
def _quiet_import():
    """Silence torchao's / torch's import-time warnings (restored on exit)."""
    loggers = [logging.getLogger(n) for n in _QUIET_LOGGERS]
    saved = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        yield
    finally:
        for lg, level in zip(loggers, saved):
            lg.setLevel(level)


def _import(module: str):
    with _quiet_import():
        return importlib.import_module(module)


def _rows(max_pos: int, max_position: int) -> int:
    """Cache length for positions up to ``max_pos``: next power of two, capped."""
    need = max(int(max_pos) + 1, _MIN_ROWS)
    return min(1 << (need - 1).bit_length(), max_position + 1)


class _TorchtuneBase(Adapter):
    distribution = "torchtune"
    requires = ("torch", "torchtune")
    max_position = MAX_POSITION
    capabilities = Capabilities(
        rope_types=("default",),
        layouts=("interleaved",),
        dtypes=_DTYPES,          # float64 runs, but in float32 (see the module docstring)
        devices=("cpu", "cuda"),
        freqs_for=("lang",),
        partial=False, xpos=False, axial=False, mrope=False,
        positions="arbitrary",
        max_position=MAX_POSITION,
    )
    precision = Numerics(angle_dtype="float32")

    def __init__(self) -> None:
        # (spec, device) -> module whose cache covers every position seen so far (LRU order)
        self._modules: collections.OrderedDict[tuple[RopeSpec, str], object] = collections.OrderedDict()

    def availability(self) -> str | None:
        for mod in self.requires:
            try:
                _import(mod)
            except Exception as e:  # a broken install must not take the run down
                # torchtune's own "torchao not installed" message spans several indented lines
                return f"import {mod} failed: {type(e).__name__}: {' '.join(str(e).split())}"
        return None

    def why_unsupported(self, spec, dtype, device, positions=None):
        if dtype == "float64":
            return _FLOAT64_WHY
        why = super().why_unsupported(spec, dtype, device, positions)
        if why:
            return why
        if positions is not None and np.size(positions) and int(np.min(positions)) < 0:
            return "negative positions: input_pos indexes the cache (a negative index wraps to its end)"
        return None

    def _build(self, spec: RopeSpec, max_seq_len: int):
        raise NotImplementedError

    def _default_max_seq_len(self) -> int:
        """The library constructor's own ``max_seq_len`` default (read, not assumed)."""
        import inspect

        return int(inspect.signature(self._module_class()).parameters["max_seq_len"].default)

    def _module_class(self):
        raise NotImplementedError

    def user_max_seq_len(self, spec: RopeSpec) -> int:
        """The max_seq_len a user's model fixes for ``spec``: the constructor's default (no spec key maps to it
        for these rope types; ``max_position_embeddings`` is used when a spec carries it)."""
        return int(spec.max_position_embeddings or self._default_max_seq_len())

    def instance(self, spec: RopeSpec, dtype: str, device: str = "cpu"):
        """One module with the user's fixed max_seq_len, reused by every call (never rebuilt or grown)."""
        import torch

        self.require_supported(spec, dtype, device)
        missing = self.device_unavailable(device)
        if missing:
            raise Unsupported(f"{self.name} adapter: device={device} unavailable here: {missing}")
        with torch.device(device):
            return _Live(self, spec, device, self._build(spec, self.user_max_seq_len(spec)))

    def rotate(self, mod, x, positions, *, dtype, device="cpu"):
        """``mod(x_bshd, input_pos=positions)``, (b, h, s, d) in and out."""
        import torch

        positions = np.array(positions, dtype=np.int64)           # a writable copy for torch
        if positions.size and int(positions.min()) < 0:   # the library would read the cache's end
            raise ValueError("torchtune adapter: negative positions index the cache from its end")
        t = to_torch(x, dtype, device).transpose(1, 2)           # (b, h, s, d) -> (b, s, h, d)
        pos = torch.as_tensor(positions, dtype=torch.int64, device=device)
        with torch.no_grad():
            out = mod(t, input_pos=pos)
        return to_numpy(out.transpose(1, 2))

    def module(self, spec: RopeSpec, max_pos: int, device: str = "cpu"):
        """The cached module for ``spec`` on ``device`` whose cache reaches ``max_pos``."""
        import torch

        key = (spec, device)
        mod = self._modules.get(key)
        if mod is None or mod.max_seq_len <= max_pos:
            self._modules.pop(key, None)          # free the smaller cache first
            rows = _rows(max_pos, self.max_position)
            self._evict(CACHE_BYTES - 4 * spec.rotary_dim * rows)
            with torch.device(device):            # the cache is built where the model lives
                mod = self._build(spec, rows)
            self._modules[key] = mod
        self._modules.move_to_end(key)
        return mod

    def _evict(self, budget: int) -> None:
        """Drop least recently used modules until their caches take at most ``budget`` bytes."""
        def total() -> int:
            return sum(m.cache.numel() * m.cache.element_size() for m in self._modules.values())

        while self._modules and total() > max(budget, 0):
            self._modules.popitem(last=False)

    def call(self, x, positions, spec, *, dtype, device="cpu", role="query"):
        positions = np.asarray(positions)
        max_pos = int(positions.max()) if positions.size else 0
        return self.rotate(self.module(spec, max(max_pos, 0), device), x, positions, dtype=dtype, device=device)


class _Live:
    """One torchtune module for one spec (``Adapter.instance``): built once with the user's max_seq_len and
    called like a model calls it, ``module(x, input_pos=...)``, for every call of a sequence."""

    def __init__(self, adapter: _TorchtuneBase, spec: RopeSpec, device: str, module):
        self.adapter, self.spec, self.device, self.module = adapter, spec, device, module

    def run(self, x, positions, role="query"):
        dtype = name_of(np.asarray(x).dtype) or "float64"
        self.adapter.require_supported(self.spec, dtype, self.device, positions)  # the checks run() makes
        return self.adapter.rotate(self.module, x, positions, dtype=dtype, device=self.device)


class TorchtuneRoPE(_TorchtuneBase):
    """``torchtune.modules.RotaryPositionalEmbeddings`` (plain RoPE)."""

    name = "torchtune"

    def _module_class(self):
        return _import("torchtune.modules").RotaryPositionalEmbeddings

    def _build(self, spec: RopeSpec, max_seq_len: int):
        RotaryPositionalEmbeddings = _import("torchtune.modules").RotaryPositionalEmbeddings
        return RotaryPositionalEmbeddings(dim=spec.rotary_dim, max_seq_len=max_seq_len,
                                          base=spec.rope_theta)


class TorchtuneLlama3(_TorchtuneBase):
    """``torchtune.models.llama3_1.Llama3ScaledRoPE`` (Llama 3.1 band scaling).

    RopeSpec -> constructor: rotary_dim -> dim, rope_theta -> base, factor ->
    scale_factor, low_freq_factor -> low_freq_factor, high_freq_factor ->
    high_freq_factor, original_max_position_embeddings -> old_context_len.
    """

    name = "torchtune-llama3"
    capabilities = dataclasses.replace(_TorchtuneBase.capabilities, rope_types=("llama3",))

    def _module_class(self):
        return _import("torchtune.models.llama3_1").Llama3ScaledRoPE

    def _build(self, spec: RopeSpec, max_seq_len: int):
        Llama3ScaledRoPE = _import("torchtune.models.llama3_1").Llama3ScaledRoPE
        return Llama3ScaledRoPE(dim=spec.rotary_dim, max_seq_len=max_seq_len, base=spec.rope_theta,
                                scale_factor=spec.factor, low_freq_factor=spec.low_freq_factor,
                                high_freq_factor=spec.high_freq_factor,
                                old_context_len=spec.original_max_position_embeddings)
