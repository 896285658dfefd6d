"""Hugging Face transformers (v5): the real model rotary modules, run on a RopeSpec.

Mapping (checked against the installed ``transformers/modeling_rope_utils.py``
and the model files named below; the installed source is the final word):

* Full rotation (rotary_dim == head_dim): ``LlamaConfig`` + ``LlamaRotaryEmbedding``
  + ``models.llama.modeling_llama.apply_rotary_pos_emb`` (HALF layout, ``rotate_half``).
* Partial rotation (rotary_dim < head_dim): ``GPTNeoXConfig`` +
  ``GPTNeoXRotaryEmbedding`` + ``models.gpt_neox.modeling_gpt_neox.apply_rotary_pos_emb``:
  its default init honours ``rope_parameters['partial_rotary_factor']`` (Llama's
  does not) and its apply rotates ``x[..., :rotary_dim]`` and passes the tail.
* M-RoPE (``mrope_section``, 3 streams t/h/w): chunked sections through
  ``Qwen2VLTextConfig`` + ``Qwen2VLRotaryEmbedding`` (+ its apply_rotary_pos_emb),
  interleaved sections (``mrope_interleaved``) through ``Qwen3VLTextConfig`` +
  ``Qwen3VLTextRotaryEmbedding`` (with partial rotation: ``Qwen3_5TextConfig`` +
  ``Qwen3_5TextRotaryEmbedding``, whose init honours partial_rotary_factor and
  whose apply passes the tail through).  Our positions (batch, seq, 3) become HF's
  position_ids (3, batch, seq).
* ``rope_parameters`` carries the HF key names of RopeSpec unchanged
  (rope_type, rope_theta, factor, original_max_position_embeddings,
  attention_factor, beta_fast, beta_slow, mscale, mscale_all_dim, truncate,
  short_factor, long_factor, low_freq_factor, high_freq_factor,
  partial_rotary_factor, mrope_section); only keys the type's HF validator
  accepts are passed.
* ``max_position_embeddings`` (``config``): HF reads it as a *formula input* in
  two places, and the adapter sets it so that HF's derivation equals the spec's:
  - dynamic: HF's ``_compute_dynamic_ntk_parameters`` uses
    ``config.max_position_embeddings`` as the pre-training length L0 (the
    reference: ``original_max_position_embeddings``), so it is set to L0;
  - longrope without ``factor``: HF takes factor = max_position_embeddings / L0,
    the spec's rule, so it is set to ``spec.max_position_embeddings``.
  Elsewhere it only feeds warnings (YaRN's explicit-vs-implicit factor check:
  since PR #40320 the explicit ``factor`` wins, and the spec requires one);
  it is then chosen to keep HF's validators quiet.
* Stateful updates: HF's ``@dynamic_rope_update`` mutates the module
  (dynamic NTK grows ``inv_freq`` to max(position_ids)+1 past the cached
  length and resets it below ``original_max_seq_len``; LongRoPE caches
  ``long_inv_freq`` and copies the long or short set into the buffer).  Two
  ways to drive it:
  - ``call`` (one case) builds a FRESH config and rotary module: the module's
    first call, nothing carried over;
  - ``instance(spec, dtype, device)`` builds ONE config and rotary module and
    reuses it for every ``run`` of the live object, the way a model layer
    calls its rotary embedding (prefill, decode steps, a later shorter
    request, other dtypes): the suite's stateful scenarios exercise the
    module's state through it.  The module stays float32 (as HF builds it);
    each call's activations carry their own dtype.  (Dynamic NTK keeps the
    grown frequencies for a later, shorter call that is still past L0:
    conformance/known/hf.toml hf-dynamic-ntk-keeps-grown-frequencies.)
* Precision: HF forms the angles ``position_ids.float() * inv_freq`` in float32
  for every activation dtype (also float64), then casts cos/sin to x.dtype, so
  the adapter declares ``angle_dtype='float32'``.

Unsupported (declared through ``why_unsupported``): interleaved layout, static
"ntk" (not an HF rope_type), xPos, axial positions, non-'lang' frequency
schedules, LongRoPE's per-position switch (HF switches on the whole batch's
max position: ``longrope_switch='sequence'``), non-integer positions,
M-RoPE other than 3 streams, chunked M-RoPE with partial rotation.

``HFTransformersNested`` ("hf-nested") builds the per-layer-type form that
mixed-attention models use: ``layer_types`` = [sliding_attention,
full_attention] and ``rope_parameters`` = {"full_attention": <the spec's
dict>, "sliding_attention": {"rope_type": "default", "rope_theta": 10000}}
(Gemma 3's shape: the scaled RoPE on the full-attention layers; the sliding
dict takes the spec's partial_rotary_factor, as HF rejects a fully rotated odd
head_dim), and runs the rotary module with ``layer_type="full_attention"``:

* full rotation: ``Gemma3TextConfig`` + ``Gemma3RotaryEmbedding`` +
  ``models.gemma3.modeling_gemma3.apply_rotary_pos_emb``;
* partial rotation: ``LagunaConfig`` + ``LagunaRotaryEmbedding`` (its default
  init reads ``partial_rotary_factor`` from the layer type's dict; Gemma 3's
  does not) + ``models.laguna.modeling_laguna.apply_rotary_pos_emb`` (rotates
  ``x[..., :rotary_dim]``, passes the tail);
* no M-RoPE (the Qwen-VL modules take no layer_type).

Its ``max_position_embeddings`` is global (one per config), as HF's dynamic NTK
and its reset read it, so the mapping above applies unchanged.
HF reads YaRN's ``truncate`` from the top-level dict, not the layer type's, so a
nested ``truncate=False`` computes truncate=True (conformance/known/hf.toml
hf-nested-yarn-truncate-read-from-top-level).
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging

import numpy as np

from ropeconf.conformance.adapter import Adapter, Capabilities, Numerics
from ropeconf.reference import RopeSpec
from ropeconf.reference.dtypes import DTYPES, name_of

from ._torch import to_numpy, to_torch

# Keys each HF validator accepts (``_validate_<type>_rope_parameters``), besides
# rope_type / rope_theta / partial_rotary_factor / mrope_section.
_HF_KEYS = {
    "default": (),
    "linear": ("factor",),
    "dynamic": ("factor",),  # L0 goes to config.max_position_embeddings (see module doc)
    "yarn": ("factor", "original_max_position_embeddings", "attention_factor", "beta_fast",
             "beta_slow", "mscale", "mscale_all_dim", "truncate"),
    "longrope": ("factor", "original_max_position_embeddings", "attention_factor",
                 "short_factor", "long_factor"),
    "llama3": ("factor", "original_max_position_embeddings", "low_freq_factor", "high_freq_factor"),
}
_ALWAYS = ("rope_type", "rope_theta", "partial_rotary_factor", "mrope_section", "mrope_interleaved")


@contextlib.contextmanager
def _quiet_transformers():
    """Silence HF's config-validation warnings while building.

    The level is set once and left: ``Logger.setLevel`` clears every logger's cache, which
    cost more than the RoPE itself when done twice per call."""
    log = logging.getLogger("transformers")
    if log.level != logging.ERROR:
        log.setLevel(logging.ERROR)
    yield


def _rope_parameters(spec: RopeSpec) -> dict:
    """``spec.to_hf_rope_parameters()`` restricted to the keys the type's HF validator accepts."""
    keys = set(_ALWAYS) | set(_HF_KEYS[spec.rope_type])
    return {k: v for k, v in spec.to_hf_rope_parameters().items() if k in keys}


def _max_position_embeddings(spec: RopeSpec) -> int:
    t = spec.rope_type
    L0 = spec.original_max_position_embeddings
    if t == "dynamic":
        return int(L0)  # HF's dynamic NTK reads config.max_position_embeddings as L0
    if t == "longrope":
        if spec.factor is None:
            return int(spec.max_position_embeddings)  # HF: factor = max_position_embeddings / L0
        return int(spec.max_position_embeddings or L0)  # explicit factor wins; value unused
    if t == "yarn":
        # Explicit factor wins (HF >= PR #40320); max_pos only feeds a warning, which
        # max_pos == L0 (implicit factor 1) skips.
        return int(spec.max_position_embeddings or L0)
    if t == "llama3":
        # unused by the formula; HF warns unless L0 < max_position_embeddings
        return int(max(L0 + 1, round(L0 * max(spec.factor, 1.0))))
    return int(spec.max_position_embeddings or 4096)  # unused by default/linear


class HFTransformers(Adapter):
    name = "hf"
    distribution = "transformers"
    requires = ("torch", "transformers")
    capabilities = Capabilities(
        rope_types=("default", "linear", "dynamic", "yarn", "longrope", "llama3"),
        layouts=("half",),
        dtypes=DTYPES,
        devices=("cpu", "cuda"),
        freqs_for=("lang",),
        partial=True,
        xpos=False,
        axial=False,
        mrope=True,
        positions="arbitrary",
    )
    precision = Numerics(angle_dtype="float32")

    # ------------------------------------------------------------------------------------------
    def why_unsupported(self, spec, dtype, device, positions=None):
        why = super().why_unsupported(spec, dtype, device, positions)
        if why:
            return why
        if spec.rope_type == "longrope" and spec.longrope_switch != "sequence":
            return ("longrope_switch='position' not supported (HF picks short/long factors for the whole "
                    "call by max(position_ids)+1 > original_max_position_embeddings)")
        if spec.rotary_dim < spec.head_dim and spec.hf_partial_rotary_factor() is None:
            return (f"rotary_dim={spec.rotary_dim} not expressible as int(head_dim * partial_rotary_factor) "
                    f"with head_dim={spec.head_dim}")
        if spec.mrope_section is not None:
            if len(spec.mrope_section) != 3:
                return "mrope_section with other than 3 sections (t, h, w) not supported by HF's Qwen-VL modules"
            if spec.rotary_dim < spec.head_dim and not spec.mrope_interleaved:
                return ("chunked mrope_section with partial rotation not supported (Qwen2-VL's default init "
                        "ignores partial_rotary_factor; GLM-4V, which has it, rotates interleaved pairs)")
        if positions is not None:
            p = np.asarray(positions)
            if p.dtype.kind == "f" and not np.all(p == np.round(p)):
                return "non-integer positions not supported (HF position_ids are integer token indices)"
            if p.size == 0 and spec.rope_type in ("dynamic", "longrope"):
                return f"empty positions not supported for rope_type={spec.rope_type!r} (HF takes torch.max(position_ids))"
        return None

    # ------------------------------------------------------------------------------------------
    def _modules(self, spec: RopeSpec):
        """(config class, rotary-embedding class, apply_rotary_pos_emb) of the HF model used."""
        if spec.mrope_section is not None:
            if spec.mrope_interleaved and spec.rotary_dim < spec.head_dim:
                from transformers.models.qwen3_5 import modeling_qwen3_5 as m
                from transformers.models.qwen3_5.configuration_qwen3_5 import Qwen3_5TextConfig as C

                return C, m.Qwen3_5TextRotaryEmbedding, m.apply_rotary_pos_emb
            if spec.mrope_interleaved:
                from transformers.models.qwen3_vl import modeling_qwen3_vl as m
                from transformers.models.qwen3_vl.configuration_qwen3_vl import Qwen3VLTextConfig as C

                return C, m.Qwen3VLTextRotaryEmbedding, m.apply_rotary_pos_emb
            from transformers.models.qwen2_vl import modeling_qwen2_vl as m
            from transformers.models.qwen2_vl.configuration_qwen2_vl import Qwen2VLTextConfig as C

            return C, m.Qwen2VLRotaryEmbedding, m.apply_rotary_pos_emb
        if spec.rotary_dim < spec.head_dim:
            from transformers.models.gpt_neox import modeling_gpt_neox as m
            from transformers.models.gpt_neox.configuration_gpt_neox import GPTNeoXConfig as C

            return C, m.GPTNeoXRotaryEmbedding, m.apply_rotary_pos_emb
        from transformers.models.llama import modeling_llama as m
        from transformers.models.llama.configuration_llama import LlamaConfig as C

        return C, m.LlamaRotaryEmbedding, m.apply_rotary_pos_emb

    def config_kwargs(self, spec: RopeSpec, heads: int = 1) -> dict:
        """The keyword arguments of the model config for ``spec``."""
        return dict(
            hidden_size=spec.head_dim * heads,
            num_attention_heads=heads,
            max_position_embeddings=_max_position_embeddings(spec),
            rope_parameters=_rope_parameters(spec),
            num_hidden_layers=1,
            intermediate_size=4,
            vocab_size=8,
        )

    def build(self, spec: RopeSpec, heads: int = 1):
        """A fresh (config, rotary module, apply function) for ``spec``."""
        config_cls, rotary_cls, apply_fn = self._modules(spec)
        kwargs = self.config_kwargs(spec, heads)
        if config_cls.__name__ != "GPTNeoXConfig":  # GPT-NeoX derives head_dim = hidden_size // heads
            kwargs.update(head_dim=spec.head_dim, num_key_value_heads=heads)
        with _quiet_transformers():
            config = config_cls(**kwargs)
            rotary = rotary_cls(config)
        return config, rotary, apply_fn

    def forward(self, rotary, xt, pos):
        """cos, sin from the rotary module (the flat form: no layer type)."""
        return rotary(xt, pos)

    def rotate(self, rotary, apply_fn, x, positions, spec: RopeSpec, dtype: str, device: str):
        """One call of a (fresh or live) rotary module and the model's apply_rotary_pos_emb."""
        import torch

        xt = to_torch(np.asarray(x), dtype, device)
        pos = torch.from_numpy(np.ascontiguousarray(np.asarray(positions), dtype=np.int64)).to(device)
        if spec.mrope_section is not None:
            pos = pos.permute(2, 0, 1).contiguous()  # (batch, seq, 3) -> HF's (3, batch, seq)
        with torch.no_grad(), _quiet_transformers():
            cos, sin = self.forward(rotary, xt, pos)
            q, _ = apply_fn(xt, xt, cos, sin)  # unsqueeze_dim=1: x is (batch, heads, seq, head_dim)
        return to_numpy(q)

    def call(self, x, positions, spec, *, dtype, device="cpu", role="query"):
        # FRESH module per call: the module's first call, no state carried over (``instance`` keeps it).
        _, rotary, apply_fn = self.build(spec)
        return self.rotate(rotary.to(device), apply_fn, x, positions, spec, dtype, device)

    def instance(self, spec, dtype, device="cpu"):
        """ONE config and rotary module for ``spec``, reused by every ``run``: its dynamic state lives."""
        return LiveRotary(self, spec, device)


class LiveRotary:
    """One HF rotary module called repeatedly, like a model layer's (``Adapter.instance``).

    ``run`` checks each call against the adapter's declaration and the machine exactly as
    ``Adapter.run`` does, then calls the same module again; the module is built on the first
    call (after the checks) and kept, with whatever ``@dynamic_rope_update`` left in it.
    """

    def __init__(self, adapter: HFTransformers, spec: RopeSpec, device: str = "cpu"):
        self.adapter, self.spec, self.device = adapter, spec, device
        self.config = self.rotary = self.apply_fn = None
        self.calls = 0

    def run(self, x, positions, role: str = "query"):
        from ropeconf.conformance.adapter import Unsupported

        a, spec, device = self.adapter, self.spec, self.device
        dtype = name_of(np.asarray(x).dtype) or "float64"
        a.require_supported(spec, dtype, device, positions)
        missing = a.device_unavailable(device)
        if missing:
            raise Unsupported(f"{a.name} adapter: device={device} unavailable here: {missing}")
        if self.rotary is None:
            self.config, rotary, self.apply_fn = a.build(spec)
            self.rotary = rotary.to(device)
        self.calls += 1
        return a.rotate(self.rotary, self.apply_fn, x, positions, spec, dtype, device)


# ---------------------------------------------------------------------------------------------- nested
_LAYER = "full_attention"      # the layer type whose dict carries the spec (Gemma 3: the scaled RoPE)
_OTHER = "sliding_attention"   # the other layer type: plain RoPE, theta 1e4 (Gemma 3's local layers)


class HFTransformersNested(HFTransformers):
    """The per-layer-type ``rope_parameters`` form (Gemma 3 / Laguna), run on the full-attention layer."""

    name = "hf-nested"
    capabilities = dataclasses.replace(HFTransformers.capabilities, mrope=False)

    def _modules(self, spec: RopeSpec):
        if spec.rotary_dim < spec.head_dim:
            from transformers.models.laguna import modeling_laguna as m
            from transformers.models.laguna.configuration_laguna import LagunaConfig as C

            return C, m.LagunaRotaryEmbedding, m.apply_rotary_pos_emb
        from transformers.models.gemma3 import modeling_gemma3 as m
        from transformers.models.gemma3.configuration_gemma3 import Gemma3TextConfig as C

        return C, m.Gemma3RotaryEmbedding, m.apply_rotary_pos_emb

    def config_kwargs(self, spec: RopeSpec, heads: int = 1) -> dict:
        kwargs = super().config_kwargs(spec, heads)
        other = {"rope_type": "default", "rope_theta": 10000.0}
        if "partial_rotary_factor" in kwargs["rope_parameters"]:  # HF rejects a fully rotated odd head_dim
            other["partial_rotary_factor"] = kwargs["rope_parameters"]["partial_rotary_factor"]
        kwargs.update(num_hidden_layers=2, layer_types=[_OTHER, _LAYER],
                      rope_parameters={_LAYER: kwargs["rope_parameters"], _OTHER: other})
        return kwargs

    def forward(self, rotary, xt, pos):
        return rotary(xt, pos, layer_type=_LAYER)
