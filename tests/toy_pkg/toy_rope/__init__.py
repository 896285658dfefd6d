"""A toy third-party RoPE, written the conventional float32 way (the docs/adapters.md example).

It stands in for "your library": a half-split RoPE whose frequencies come from
a float32 pow and whose angles are formed in float32.  ``rope_adapter`` is the
smallest possible rope-conformance adapter for it.
"""

import numpy as np


def toy_rotary(x, positions, theta=10000.0, rotary_dim=None, pos_dtype=np.float32):
    """The "library": rotate x (batch, heads, seq, dim) at positions (batch, seq), half-split pairs."""
    d = x.shape[-1]
    r = rotary_dim or d
    i = np.arange(0, r, 2, dtype=np.float32)
    inv_freq = (1.0 / (np.float32(theta) ** (i / np.float32(r)))).astype(np.float32)
    angle = positions.astype(pos_dtype).astype(np.float32)[..., None] * inv_freq  # float32 angles
    cos = np.cos(angle).astype(x.dtype)[:, None]
    sin = np.sin(angle).astype(x.dtype)[:, None]
    h = r // 2
    x1, x2 = x[..., :h], x[..., h:r]
    out1 = (x1 * cos - x2 * sin).astype(x.dtype)
    out2 = (x2 * cos + x1 * sin).astype(x.dtype)
    return np.concatenate([out1, out2, x[..., r:]], axis=-1)


def rope_adapter(x, positions, spec):
    """rope-conformance adapter: map the spec dict onto the library's arguments."""
    return toy_rotary(x, positions, theta=spec["rope_theta"], rotary_dim=spec["rotary_dim"])


# What the toy supports; anything else is reported "unsupported", not "passed".
rope_adapter.ropeconf_capabilities = {
    "rope_types": ["default"],
    "layouts": ["half"],
    "dtypes": ["float32", "float16", "bfloat16"],
    "partial": True,
    "positions": "arbitrary",
}
rope_adapter.ropeconf_distribution = "toy-rope"


def buggy_adapter(x, positions, spec):
    """The same toy with positions formed in bfloat16: a planted bug the suite must catch."""
    import ml_dtypes

    return toy_rotary(x, positions, theta=spec["rope_theta"], rotary_dim=spec["rotary_dim"],
                      pos_dtype=ml_dtypes.bfloat16)


buggy_adapter.ropeconf_capabilities = rope_adapter.ropeconf_capabilities
buggy_adapter.ropeconf_distribution = "toy-rope"
