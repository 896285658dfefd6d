"""A stateless toy RoPE written the conventional float32 way, with one switchable mistake per convention.

Independent of the suite's reference and of its diagnosis catalogue: each bug is written here the
way a library would get it wrong, so that tests/test_diagnosis.py can check that the diagnosis
names it.  ``planted(bug)`` returns a function adapter with that bug.
"""

from __future__ import annotations

import math

import ml_dtypes
import numpy as np

F = np.float32


def _inv_freq(spec, seq_len, bugs):
    r = spec["rotary_dim"]
    width = spec["head_dim"] if "exponent_head_dim" in bugs else r
    theta = 10000.0 if "theta_default" in bugs else spec["rope_theta"]
    i = np.arange(0, r, 2, dtype=F)
    t = spec["rope_type"]
    s = spec.get("factor")
    if t == "dynamic" and "dynamic_never_rescaled" not in bugs:
        L0 = spec["original_max_position_embeddings"]
        L = seq_len + (1 if "dynamic_len_plus" in bugs else 0)
        if "dynamic_as_ntk" in bugs:
            theta = F(theta) * F(s) ** (F(r) / F(r - 2))
        elif "dynamic_as_uniform" not in bugs and L > L0:
            theta = F(theta) * (F(s) * F(L) / F(L0) - (F(s) - F(1))) ** (F(r) / F(r - 2))
    inv = (F(1) / (F(theta) ** (i / F(width)))).astype(F)
    if t == "dynamic" and "dynamic_as_uniform" in bugs:
        inv = (inv / F(s) ** (F(r) / F(r - 2))).astype(F)
    if t == "linear":
        inv = (inv / F(math.sqrt(s) if "linear_sqrt" in bugs else s)).astype(F)
    if t == "yarn":
        fast, slow = spec["beta_fast"], spec["beta_slow"]
        if "betas_swapped" in bugs:
            fast, slow = slow, fast
        L0 = spec["original_max_position_embeddings"]

        def corr(n):
            return r * math.log(L0 / (n * 2 * math.pi)) / (2 * math.log(theta))
        low, high = corr(fast), corr(slow)
        truncate = spec["truncate"] != ("truncate_ignored" in bugs)
        if truncate:
            low, high = math.floor(low), math.ceil(high)
        low, high = max(low, 0), min(high, r - 1)
        if low == high:
            high += 0.001
        ramp = np.clip((np.arange(r // 2, dtype=F) - F(low)) / F(high - low), 0, 1).astype(F)
        if "ramp_inverted" in bugs:
            ramp = (F(1) - ramp).astype(F)
        inv = (inv / F(s) * ramp + inv * (F(1) - ramp)).astype(F)
    if t == "llama3":
        L0, lo, hi = spec["original_max_position_embeddings"], spec["low_freq_factor"], spec["high_freq_factor"]
        lam = (F(2 * math.pi) / inv).astype(F)
        sigma = ((F(L0) / lam - F(lo)) / F(hi - lo)).astype(F)
        if "llama3_reversed" in bugs:
            sigma = (F(1) - sigma).astype(F)
        mid = ((F(1) - sigma) * inv / F(s) + sigma * inv).astype(F)
        inv = np.where(lam < F(L0 / hi), inv, np.where(lam > F(L0 / lo), (inv / F(s)).astype(F), mid)).astype(F)
    if t == "longrope":
        L0 = spec["original_max_position_embeddings"]
        long = seq_len >= L0 if "longrope_at_equal" in bugs else seq_len > L0
        ext = np.array(spec["long_factor"] if long else spec["short_factor"], dtype=F)
        inv = (inv / ext).astype(F)
    return inv


def _attention(spec, bugs):
    t, s = spec["rope_type"], spec.get("factor")
    if t == "yarn":
        if spec.get("attention_factor") is not None:
            a = spec["attention_factor"]
        else:
            a = (0.07 if "mscale_007" in bugs else 0.1) * math.log(s) + 1.0 if s > 1 else 1.0
    elif t == "longrope":
        L0 = spec["original_max_position_embeddings"]
        a = spec["attention_factor"] or (math.sqrt(1 + math.log(s) / math.log(L0)) if s > 1 else 1.0)
    else:
        return 1.0, 1.0
    if "attention_missing" in bugs:
        return 1.0, 1.0
    if "attention_squared" in bugs:
        return a * a, a * a
    if "attention_sin_only" in bugs:
        return 1.0, a
    return a, a


def toy_rope(x, positions, spec, role="query", bugs=()):
    """x (b, h, s, d) in its dtype; positions (b, s) int; spec: the full spec dict."""
    bugs = set(bugs)
    r, d = spec["rotary_dim"], spec["head_dim"]
    positions = np.asarray(positions)
    seq_len = int(positions.max()) + 1
    p = positions.astype(np.float64)
    if "positions_plus1" in bugs:
        p = p + 1
    if "positions_bf16" in bugs:
        p = p.astype(ml_dtypes.bfloat16).astype(np.float64)
    if "positions_f16" in bugs:
        p = p.astype(np.float16).astype(np.float64)
    inv = _inv_freq(spec, seq_len, bugs)
    ang = (p.astype(F)[..., None] * inv).astype(F)
    if "sin_flipped" in bugs:
        ang = -ang
    ca, sa = _attention(spec, bugs)
    cos = (np.cos(ang) * F(ca)).astype(F)
    sin = (np.sin(ang) * F(sa)).astype(F)
    if spec.get("xpos"):
        zeta = ((np.arange(0, r, 2, dtype=F) + F(0.4) * F(r)) / (F(1.4) * F(r))).astype(F)
        centre = 0 if "xpos_centre_0" in bugs else seq_len // 2
        power = ((positions.astype(F) - F(centre)) / F(spec["xpos_scale_base"]))[..., None]
        scale = (zeta ** power).astype(F)
        if role == "key" and "xpos_query_scale_for_keys" not in bugs:
            scale = (F(1) / scale).astype(F)
        cos, sin = (cos * scale).astype(F), (sin * scale).astype(F)
    if "cos_sin_bf16" in bugs:
        cos = cos.astype(ml_dtypes.bfloat16).astype(F)
        sin = sin.astype(ml_dtypes.bfloat16).astype(F)
    cos = cos.astype(x.dtype)[:, None]
    sin = sin.astype(x.dtype)[:, None]
    xr = np.concatenate([x[..., d - r:], x[..., :d - r]], axis=-1) if "partial_last_dims" in bugs else x
    half = spec["layout"] == "half"
    if "pairing" in bugs:
        half = not half
    h = r // 2
    a, b = (xr[..., :h], xr[..., h:r]) if half else (xr[..., 0:r:2], xr[..., 1:r:2])
    o1 = (a * cos - b * sin).astype(x.dtype)
    o2 = (b * cos + a * sin).astype(x.dtype)
    rot = np.concatenate([o1, o2], -1) if half else np.stack([o1, o2], -1).reshape(o1.shape[:-1] + (r,))
    if "output_order" in bugs:
        perm = np.concatenate([np.arange(0, r, 2), np.arange(1, r, 2)])
        rot = rot[..., perm] if not half else rot[..., np.argsort(perm)]
    tail = np.zeros_like(xr[..., r:]) if "tail_zeroed" in bugs else xr[..., r:]
    out = np.concatenate([rot, tail], axis=-1)
    if "partial_last_dims" in bugs:
        out = np.concatenate([out[..., r:], out[..., :r]], axis=-1)
    return out.astype(x.dtype)


def planted(bugs=(), rope_types=("default", "linear", "dynamic", "yarn", "llama3", "longrope"), dtypes=("float32",),
            angle_dtype=None):
    def adapter(x, positions, spec, role="query"):
        return toy_rope(x, positions, spec, role, bugs)

    adapter.ropeconf_capabilities = {"rope_types": list(rope_types), "layouts": ["half", "interleaved"],
                                     "dtypes": list(dtypes), "partial": True, "xpos": True,
                                     "positions": "arbitrary"}
    if angle_dtype:
        adapter.ropeconf_capabilities["angle_dtype"] = angle_dtype
    adapter.__name__ = "planted_" + "_".join(bugs) if bugs else "planted_correct"
    return adapter
