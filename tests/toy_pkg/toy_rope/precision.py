"""A toy library with a precision finding rather than a formula bug, for the registry's ``kind = "precision"``.

``inaccurate_exp_adapter`` is the conventional float32 RoPE of ``toy_rope.toy_rotary`` except that its
frequencies come from an ``exp`` that is ``EXP_ULP`` ulp high (as MLX's float32 ``exp`` is up to 8 ulp off):
right in form, a little less accurate than the tolerance model's libm, so long-context float32 cases end just
above the bound.  ``theta_bug_adapter`` adds a real (small) formula bug on top: theta 10001 for 10000.
"""

import numpy as np

EXP_ULP = 8


def _rotary(x, positions, theta, rotary_dim):
    d = x.shape[-1]
    r = rotary_dim or d
    i = np.arange(0, r, 2, dtype=np.float32)
    inv_freq = (np.float32(theta) ** (-i / np.float32(r))).astype(np.float32)
    inv_freq = (inv_freq.astype(np.float64) * (1 + EXP_ULP * 2.0 ** -24)).astype(np.float32)  # the "exp"
    angle = positions.astype(np.float32)[..., None] * inv_freq
    cos, sin = np.cos(angle).astype(x.dtype)[:, None], np.sin(angle).astype(x.dtype)[:, None]
    h = r // 2
    x1, x2 = x[..., :h], x[..., h:r]
    return np.concatenate([(x1 * cos - x2 * sin).astype(x.dtype), (x2 * cos + x1 * sin).astype(x.dtype),
                           x[..., r:]], axis=-1)


def inaccurate_exp_adapter(x, positions, spec):
    return _rotary(x, positions, spec["rope_theta"], spec["rotary_dim"])


def theta_bug_adapter(x, positions, spec):
    theta = spec["rope_theta"] + (1.0 if spec["rope_theta"] == 10000.0 else 0.0)
    return _rotary(x, positions, theta, spec["rotary_dim"])


for _f in (inaccurate_exp_adapter, theta_bug_adapter):
    _f.ropeconf_capabilities = {"rope_types": ["default"], "layouts": ["half"], "dtypes": ["float32"],
                                "partial": True, "positions": "arbitrary"}
    _f.ropeconf_distribution = "toy-rope"
