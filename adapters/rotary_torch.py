"""rotary-embedding-torch (lucidrains; PyPI ``rotary-embedding-torch``).

Maps a :class:`~ropeconf.reference.RopeSpec` onto the library's public API and
nothing else (no RoPE math here; ``_torch`` only converts arrays):

* ``RotaryEmbedding(dim=rotary_dim, freqs_for, theta, max_freq, num_freqs,
  custom_freqs, interpolate_factor, theta_rescale_factor, use_xpos,
  xpos_scale_base)`` built from the spec (table in ``_module``);
* ``rotate_queries_or_keys(t, offset=start)`` for 'range' and 'offset'
  positions: the library builds the positions itself, **in t's dtype**
  (``get_seq_pos(..., dtype=t.dtype)``);
* ``forward(positions)`` + ``apply_rotary_emb(freqs, t)`` for arbitrary
  per-row positions (the positions tensor is passed as int64, the way a caller
  holds token indices; ``forward`` casts it to the frequency dtype, float32);
* ``rotate_queries_and_keys(q, k)`` for xPos (the query role returns q, the key
  role k);
* ``get_axial_freqs(*dims, offsets=...)`` + ``apply_rotary_emb`` for axial specs
  whose positions form a row-major grid ``arange(n_a) + offset_a``;
* partial rotation: the module is built with ``dim=rotary_dim``, so
  ``apply_rotary_emb`` (``start_index=0``) rotates the first rotary_dim
  features and passes the tail through.

The library's layout is INTERLEAVED (its ``rotate_half`` pairs (2i, 2i+1)).
The input is (batch, heads, seq, head_dim), the library default
(``seq_before_head_dim=False``, sequence axis -2).

Version-specific behaviour (read in rotary_embedding_torch.py 0.9.1) that the
results show and docs/findings/rotary_torch.md records:

* the frequencies are a float32 parameter and ``forward`` casts the positions
  to it, so the angle is float32 for every input dtype, float64 included
  (declared below as ``angle_dtype='float32'``);
* ``rotate_queries_or_keys`` builds positions in the input dtype: bfloat16
  positions above 256 (float16 above 2048) are rounded before the product,
  float16 positions above 65504 become inf;
* the module caches angles (``cached_freqs``, and xPos scales in
  ``cached_scales``) keyed on ``(seq_len, offset)`` only, not on the dtype:
  a call with offset 0 writes the table its positions gave, formed in that
  call's dtype, and a later call whose ``offset + seq_len`` fits reads it back.
  The cache is left on (``cache_if_possible=True``, the library default).

Two ways the suite drives it:

* ``call`` (golden, property and metamorphic cases) builds a **fresh module per
  call**, so one case is judged on its own;
* ``instance(spec, dtype, device)`` (stateful scenarios) builds **one module per
  spec and reuses it** for every call of the sequence, the way a model holds one
  ``RotaryEmbedding``: decoding steps, ragged rows and dtype switches go
  through the same module and its caches.  That is where a float32 call after
  a bfloat16 call reads the bf16-formed angles (finding
  ``rotary-torch-reused-module-dtype-cache``), and where a shorter xPos
  sequence after a longer one reads scales centred at the longer one's middle
  (``get_scale`` caches them keyed on length only; finding
  ``rotary-torch-xpos-scale-cache-length``).

Extra adapter classes in this file (``rotary-torch-cached-keys``,
``rotary-torch-learned``): ``RotaryTorchCachedKeys``
(``rotate_queries_with_cached_keys``, also with a reused module) and
``RotaryTorchLearned`` (``apply_learned_rotations`` with ``freq_ranges``; the
module only supplies ``freqs``, no cache is involved, so it has no instance).
"""

from __future__ import annotations


import numpy as np

import dataclasses

from ropeconf.conformance.adapter import Adapter, Capabilities, Numerics, Unsupported, positions_kind
from ropeconf.reference import RopeSpec
from ropeconf.reference.dtypes import DTYPES, name_of

from ._torch import to_numpy, to_torch

_ALL_FREQS = ("lang", "pixel", "constant", "custom")


def _module(spec: RopeSpec, dim: int, device: str):
    """A fresh RotaryEmbedding for ``spec`` (``dim`` = rotated width per axis).

    RopeSpec -> constructor:
      freqs_for lang/pixel/constant -> freqs_for (same name)
      freqs_for custom              -> custom_freqs=torch.tensor(inv_freq) (float32, torch's
                                       default for a list of floats; freqs_for stays 'lang')
      rope_theta                    -> theta
      max_freq, num_freqs           -> max_freq, num_freqs
      rope_type linear, factor s    -> interpolate_factor=s
      rope_type ntk, factor s       -> theta_rescale_factor=s
      xpos, xpos_scale_base         -> use_xpos, xpos_scale_base
    """
    import torch
    from rotary_embedding_torch import RotaryEmbedding

    kw = dict(dim=dim, theta=spec.rope_theta, max_freq=spec.max_freq, num_freqs=spec.num_freqs,
              use_xpos=spec.xpos, xpos_scale_base=spec.xpos_scale_base)
    if spec.freqs_for == "custom":
        kw["custom_freqs"] = torch.tensor(list(spec.inv_freq))
    else:
        kw["freqs_for"] = spec.freqs_for
    if spec.rope_type == "linear":
        kw["interpolate_factor"] = spec.factor
    elif spec.rope_type == "ntk":
        kw["theta_rescale_factor"] = spec.factor
    return RotaryEmbedding(**kw).to(device)


def _axial_grid(positions: np.ndarray) -> tuple[tuple[int, ...], tuple[int, ...]] | None:
    """(dims, offsets) when positions (batch, seq, A) are the row-major grid
    ``arange(dims[a]) + offsets[a]`` shared by every batch row, else None."""
    p = np.asarray(positions)
    if p.ndim != 3 or p.shape[1] == 0:
        return None
    offsets = tuple(int(v) for v in p[0].min(axis=0))
    dims = tuple(int(v) for v in p[0].max(axis=0) - p[0].min(axis=0) + 1)
    if int(np.prod(dims)) != p.shape[1]:
        return None
    grid = np.stack(np.meshgrid(*[np.arange(d) + o for d, o in zip(dims, offsets)], indexing="ij"), axis=-1)
    if not np.array_equal(p, np.broadcast_to(grid.reshape(1, p.shape[1], p.shape[2]), p.shape)):
        return None
    return dims, offsets


class RotaryTorch(Adapter):
    name = "rotary-torch"
    distribution = "rotary-embedding-torch"
    requires = ("torch", "einops", "rotary_embedding_torch")
    capabilities = Capabilities(
        rope_types=("default", "linear", "ntk"),
        layouts=("interleaved",),
        dtypes=DTYPES,
        devices=("cpu", "cuda"),
        freqs_for=_ALL_FREQS,
        partial=True, xpos=True, axial=True, mrope=False,
        positions="arbitrary",
    )
    precision = Numerics(angle_dtype="float32")

    def why_unsupported(self, spec, dtype, device, positions=None):
        why = super().why_unsupported(spec, dtype, device, positions)
        if why:
            return why
        if spec.rope_type == "linear" and spec.factor < 1:
            return f"factor={spec.factor} < 1: RotaryEmbedding asserts interpolate_factor >= 1"
        if spec.xpos:
            if spec.axial_axes:
                return "xpos with axial positions: get_axial_freqs has no xPos scale"
            # Without positions the answer must hold for every position kind: it does not.
            if positions is None or positions_kind(positions) != "range":
                return "xpos needs positions 0..seq-1: rotate_queries_and_keys takes no offset"
            if spec.xpos_center is not None and spec.xpos_center != np.shape(positions)[1] // 2:
                return "xpos_center: rotate_queries_and_keys centres the scale at seq_len // 2"
        if spec.axial_axes:
            if spec.freqs_for == "pixel":
                return "axial with freqs_for='pixel': get_axial_freqs uses linspace(-1, 1, n) coordinates"
            if positions is not None and _axial_grid(positions) is None:
                return ("axial positions that are not a row-major grid arange(n_a) + offset_a shared by "
                        "the batch (get_axial_freqs)")
        elif positions is not None and positions_kind(positions) == "arbitrary" and spec.rope_type == "linear":
            return ("linear with arbitrary positions: forward(positions) does not apply interpolate_factor "
                    "(only rotate_queries_or_keys' get_seq_pos divides by it)")
        return None

    def call(self, x, positions, spec, *, dtype, device="cpu", role="query"):
        return self.rotate(_module(spec, _dim(spec), device), x, positions, spec, dtype=dtype, device=device,
                           role=role)

    def instance(self, spec, dtype, device="cpu"):
        return _Live(self, spec, device)

    def rotate(self, rot, x, positions, spec, *, dtype, device="cpu", role="query"):
        """The library call on the module ``rot`` (built by ``_module(spec, _dim(spec), device)``)."""
        from rotary_embedding_torch import apply_rotary_emb

        positions = np.asarray(positions)
        t = to_torch(x, dtype, device)
        if spec.axial_axes:
            dims, offsets = _axial_grid(positions)
            freqs = rot.get_axial_freqs(*dims, offsets=offsets if any(offsets) else None)
            b, h, s, d = t.shape
            out = apply_rotary_emb(freqs, t.reshape(b, h, *dims, d))
            return to_numpy(out.reshape(b, h, s, d))
        kind = positions_kind(positions)
        if spec.xpos:
            q, k = rot.rotate_queries_and_keys(t, t)
            return to_numpy(q if role == "query" else k)
        if kind in ("range", "offset"):
            start = int(positions[0, 0]) if positions.size else 0
            return to_numpy(rot.rotate_queries_or_keys(t, offset=start))
        import torch

        pos = torch.as_tensor(positions, dtype=torch.int64, device=device)
        freqs = rot(pos)                          # (batch, seq, rotary_dim), float32
        return to_numpy(apply_rotary_emb(freqs[:, None], t))


def _dim(spec: RopeSpec) -> int:
    """The module's ``dim``: the rotated width, per axis for axial specs."""
    return spec.rotary_dim // spec.axial_axes if spec.axial_axes else spec.rotary_dim


class _Live:
    """One ``RotaryEmbedding`` for one spec, reused by every call (``Adapter.instance``): its
    ``cached_freqs`` / ``cached_scales`` carry over from call to call, as in a model."""

    def __init__(self, adapter: "RotaryTorch | RotaryTorchCachedKeys", spec: RopeSpec, device: str):
        missing = adapter.device_unavailable(device)
        if missing:
            raise Unsupported(f"{adapter.name} adapter: device={device} unavailable here: {missing}")
        self.adapter, self.spec, self.device = adapter, spec, device
        self.rot = _module(spec, _dim(spec), device)

    def run(self, x, positions, role="query"):
        dtype = name_of(np.asarray(x).dtype) or "float64"
        self.adapter.require_supported(self.spec, dtype, self.device, positions)  # same checks as run()
        return self.adapter.rotate(self.rot, x, positions, self.spec, dtype=dtype, device=self.device, role=role)


class RotaryTorchCachedKeys(Adapter):
    """``rotate_queries_with_cached_keys(q, k)``: the KV-cache decoding path.

    Positions start..start+S-1 (one start for the batch).  The key cache holds
    every key from position 0, so k is the input preceded by ``start`` zero
    rows; the library gives q the offset ``k_len - q_len = start``.  The query
    role returns the rotated q, the key role the last S rows of the rotated k.
    ``offset=0`` (the library's extra ``offset`` shifts only q since 0.6.3).
    With xPos, q's scale is centred at ``q_len // 2`` and k's at
    ``k_len // 2`` (library behaviour; the reference centres both at
    ``(start + S) // 2``).
    """

    name = "rotary-torch-cached-keys"
    distribution = "rotary-embedding-torch"
    requires = ("torch", "einops", "rotary_embedding_torch")
    # the zero-padded key cache is start+S rows: keep it a few hundred MB at most
    capabilities = dataclasses.replace(RotaryTorch.capabilities, axial=False, positions="offset",
                                       max_position=2 ** 15)
    precision = RotaryTorch.precision

    def why_unsupported(self, spec, dtype, device, positions=None):
        why = super().why_unsupported(spec, dtype, device, positions)
        if why:
            return why
        if spec.rope_type == "linear" and spec.factor < 1:
            return f"factor={spec.factor} < 1: RotaryEmbedding asserts interpolate_factor >= 1"
        if spec.xpos and spec.xpos_center is not None:
            return "xpos_center: the library centres each scale at its own length // 2"
        return None

    def call(self, x, positions, spec, *, dtype, device="cpu", role="query"):
        return self.rotate(_module(spec, spec.rotary_dim, device), x, positions, spec, dtype=dtype, device=device,
                           role=role)

    def instance(self, spec, dtype, device="cpu"):
        return _Live(self, spec, device)

    def rotate(self, rot, x, positions, spec, *, dtype, device="cpu", role="query"):
        import torch

        positions = np.asarray(positions)
        t = to_torch(x, dtype, device)
        start = int(positions[0, 0]) if positions.size else 0
        b, h, s, d = t.shape
        k = torch.cat([torch.zeros(b, h, start, d, dtype=t.dtype, device=t.device), t], dim=-2)
        q_out, k_out = rot.rotate_queries_with_cached_keys(t, k)
        return to_numpy(q_out if role == "query" else k_out[..., start:, :])


class RotaryTorchLearned(Adapter):
    """``apply_learned_rotations(rotations, t, freq_ranges=freqs)``.

    ``rotations`` are the positions (float32, one per token, shape (batch, 1,
    seq, 1)) and ``freq_ranges`` the module's own frequencies
    (``RotaryEmbedding(...).freqs``), so the library forms position x
    frequency itself (``einsum('..., f -> ... f')``), interleaves and applies.
    No interpolation (``linear``) and no xPos on this path.
    """

    name = "rotary-torch-learned"
    distribution = "rotary-embedding-torch"
    requires = ("torch", "einops", "rotary_embedding_torch")
    # float32 rotations hold integers exactly up to 2**24
    capabilities = dataclasses.replace(RotaryTorch.capabilities, rope_types=("default", "ntk"), xpos=False,
                                       axial=False, max_position=2 ** 24)
    precision = RotaryTorch.precision

    def call(self, x, positions, spec, *, dtype, device="cpu", role="query"):
        import torch
        from rotary_embedding_torch import apply_learned_rotations

        t = to_torch(x, dtype, device)
        rot = _module(spec, spec.rotary_dim, device)
        rotations = torch.as_tensor(np.asarray(positions), dtype=torch.float32, device=device)[:, None, :, None]
        out = apply_learned_rotations(rotations, t, freq_ranges=rot.freqs.detach())
        return to_numpy(out)
