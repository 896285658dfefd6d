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
  length and resets it below; LongRoPE caches ``long_inv_freq`` and swaps the
  buffer).  The reference semantics are per call (seq_len = max(positions)+1),
  so every ``run`` builds a FRESH config and rotary module: no state leaks
  between calls (HF issues #25104/#25306 are about exactly that leakage).
* Precision: HF forms the angles ``position_ids.float() * inv_freq`` in float32
  for every activation dtype (also float64), then casts cos/sin to x.dtype, so
  the adapter declares ``angle_dtype='float32'``.

Unsupported (declared through ``why_unsupported``): interleaved layout, static
"ntk" (not an HF rope_type), xPos, axial positions, non-'lang' frequency
schedules, LongRoPE's per-position switch (HF switches on the whole batch's
max position: ``longrope_switch='sequence'``), non-integer positions,
M-RoPE other than 3 streams, chunked M-RoPE with partial rotation.
"""

from __future__ import annotations

import contextlib
import logging

import numpy as np

from ropeconf.conformance.adapter import Adapter, Capabilities, Numerics
from ropeconf.reference import RopeSpec
from ropeconf.reference.dtypes import DTYPES

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

    def build(self, spec: RopeSpec, heads: int = 1):
        """A fresh (config, rotary module, apply function) for ``spec``."""
        config_cls, rotary_cls, apply_fn = self._modules(spec)
        kwargs = dict(
            hidden_size=spec.head_dim * heads,
            num_attention_heads=heads,
            max_position_embeddings=_max_position_embeddings(spec),
            rope_parameters=_rope_parameters(spec),
            num_hidden_layers=1,
            intermediate_size=4,
            vocab_size=8,
        )
        if config_cls.__name__ != "GPTNeoXConfig":  # GPT-NeoX derives head_dim = hidden_size // heads
            kwargs.update(head_dim=spec.head_dim, num_key_value_heads=heads)
        with _quiet_transformers():
            config = config_cls(**kwargs)
            rotary = rotary_cls(config)
        return config, rotary, apply_fn

    def call(self, x, positions, spec, *, dtype, device="cpu", role="query"):
        import torch

        x = np.asarray(x)
        heads = int(x.shape[1]) if x.ndim == 4 else 1
        # FRESH module per call: HF's dynamic/longrope updates are stateful (see module doc).
        _, rotary, apply_fn = self.build(spec, heads=max(heads, 1))
        rotary = rotary.to(device)
        xt = to_torch(x, dtype, device)
        pos = torch.from_numpy(np.ascontiguousarray(np.asarray(positions), dtype=np.int64)).to(device)
        if spec.mrope_section is not None:
            pos = pos.permute(2, 0, 1).contiguous()  # (batch, seq, 3) -> HF's (3, batch, seq)
        with torch.no_grad(), _quiet_transformers():
            cos, sin = rotary(xt, pos)
            q, _ = apply_fn(xt, xt, cos, sin)  # unsqueeze_dim=1: x is (batch, heads, seq, head_dim)
        return to_numpy(q)
