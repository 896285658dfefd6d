"""zetascale (kyegomez/zeta; PyPI ``zetascale``): ``zeta.nn.embeddings.rope``.

Runs in its own environment, the ``zeta`` tox environment (``tox -e zeta``): zetascale's
declared requirements would replace the CPU torch with a CUDA build, so it is not in ``.venv``, where
this adapter reports itself unavailable with the import error.

How the module is loaded (what a user of 2.8.8 has to do).  ``import zeta`` (and so
``from zeta.nn import RotaryEmbedding`` or ``from zeta.nn.embeddings.rope import ...``) runs
``zeta/__init__.py``, which imports the whole package: it needs beartype, accelerate, pillow,
loguru, colt5-attention, matplotlib, datasets and torchvision, and PyPI's torchvision cannot be
imported beside the CPU torch 2.13.0 ("operator torchvision::nms does not exist").  It also has
global side effects (``warnings.filterwarnings("ignore")``, the root logger set to CRITICAL,
TensorFlow imported when installed).  ``zeta/nn/embeddings/rope.py`` itself only needs torch and
einops, so the adapter loads that installed file directly::

    spec = importlib.util.find_spec("zeta")                       # locates the package, runs nothing
    path = os.path.join(spec.submodule_search_locations[0], "nn", "embeddings", "rope.py")
    mod = importlib.util.module_from_spec(importlib.util.spec_from_file_location(NAME, path))
    spec.loader.exec_module(mod)

(a private module name, so ``sys.modules["zeta"]`` is left alone).  If ``zeta.nn.embeddings.rope``
is already imported in the process (an environment where ``import zeta`` works) that module is
used instead.  Either way it is the same code.

Mapping (no RoPE math here):

* ``RotaryEmbedding(dim=head_dim, use_xpos=xpos, scale_base=xpos_scale_base,
  interpolation_factor=factor (linear) else 1, base=rope_theta,
  base_rescale_factor=factor (ntk) else 1)``;
* ``freqs, scale = module(seq_len=start + S, device)`` then
  ``apply_rotary_pos_emb(t, freqs, scale)`` (the same module's own apply function), which uses the
  last S rows of ``freqs`` (right alignment): positions ``start..start+S-1``.  There is no offset
  argument and no way to pass arbitrary positions;
* the key role passes ``scale ** -1`` (the x-transformers convention zeta's own
  ``structs/hierarchical_transformer.py`` uses); without xPos both roles are the same call;
* layout HALF (``freqs = cat(freqs, freqs)``), whole last axis rotated (no partial rotation).

Known breakage of 2.8.8, NOT worked around: ``rope.rotate_half`` does
``rearrange(x, '... (j d) -> ... j d', j=2).unbind(dim=-1)``, the wrong axis, so
``apply_rotary_pos_emb`` raises ``ValueError: too many values to unpack (expected 2)`` for every
head_dim >= 6 (``not enough values to unpack`` at 2) and at head_dim 4 computes a transform that is
not a rotation.  ``run`` lets the exception propagate (the suite reports the library's text as an
error) and returns the head_dim-4 output as the library computes it (a divergence).
"""

from __future__ import annotations

import importlib.util
import os
import sys

import numpy as np

from ropeconf.conformance.adapter import Adapter, Capabilities, Numerics, positions_kind
from ropeconf.reference.dtypes import DTYPES

from ._torch import to_numpy, to_torch

_MODULE_NAME = "_ropeconf_zeta_nn_embeddings_rope"
_loaded: dict[str, object] = {}


def load_rope():
    """zeta's ``nn/embeddings/rope.py`` module (see the module docstring for how and why)."""
    if "mod" in _loaded:
        return _loaded["mod"]
    mod = sys.modules.get("zeta.nn.embeddings.rope")
    how = "zeta.nn.embeddings.rope (already imported)"
    if mod is None:
        spec = importlib.util.find_spec("zeta")
        if spec is None or not spec.submodule_search_locations:
            raise ModuleNotFoundError("No module named 'zeta'")
        path = os.path.join(list(spec.submodule_search_locations)[0], "nn", "embeddings", "rope.py")
        fspec = importlib.util.spec_from_file_location(_MODULE_NAME, path)
        mod = importlib.util.module_from_spec(fspec)
        fspec.loader.exec_module(mod)
        how = f"file {path}"
    _loaded["mod"], _loaded["how"] = mod, how
    return mod


class ZetaRotary(Adapter):
    name = "zeta"
    distribution = "zetascale"
    requires = ("torch", "einops")
    capabilities = Capabilities(
        rope_types=("default", "linear", "ntk"),
        layouts=("half",),
        dtypes=DTYPES,
        devices=("cpu", "cuda"),
        freqs_for=("lang",),
        partial=False, xpos=True, axial=False, mrope=False,
        positions="offset",
    )
    precision = Numerics(angle_dtype="float32")

    def availability(self):
        why = super().availability()
        if why:
            return why
        try:
            load_rope()
        except Exception as e:
            return (f"import zeta failed: {type(e).__name__}: {e} (zetascale runs in its own venv: "
                    f"tox -e zeta)")
        return None

    @property
    def loaded_from(self) -> str:
        """How zeta's rope.py was loaded (for reports)."""
        load_rope()
        return str(_loaded["how"])

    def why_unsupported(self, spec, dtype, device, positions=None):
        why = super().why_unsupported(spec, dtype, device, positions)
        if why:
            return why
        if spec.rope_type == "linear" and spec.factor < 1:
            return f"factor={spec.factor} < 1: RotaryEmbedding asserts interpolation_factor >= 1"
        if spec.xpos and spec.xpos_center is not None:
            return "xpos_center: RotaryEmbedding.forward centres the scale at seq_len // 2"
        return None

    def call(self, x, positions, spec, *, dtype, device="cpu", role="query"):
        positions = np.asarray(positions)
        rope = load_rope()
        module = rope.RotaryEmbedding(
            dim=spec.head_dim,
            use_xpos=spec.xpos,
            scale_base=spec.xpos_scale_base,
            interpolation_factor=spec.factor if spec.rope_type == "linear" else 1.0,
            base=spec.rope_theta,
            base_rescale_factor=spec.factor if spec.rope_type == "ntk" else 1.0,
        ).to(device)
        t = to_torch(x, dtype, device)
        seq = t.shape[-2]
        start = int(positions[0, 0]) if positions.size and positions_kind(positions) == "offset" else 0
        freqs, scale = module(start + seq, device)
        if role == "key" and spec.xpos:
            scale = scale ** -1
        return to_numpy(rope.apply_rotary_pos_emb(t, freqs, scale))
