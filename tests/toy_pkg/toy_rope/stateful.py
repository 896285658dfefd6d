"""A toy RoPE library with state (module objects, caches), written the conventional float32 way,
and five planted bugs that live outside a single fresh call (issue: state, keys and parameter values).

``ToyRotary`` is the "library": a module built from a config, called repeatedly like a model
layer.  The adapters below drive it; ``CorrectToy`` must conform, and each ``Buggy*`` must be
caught by ``ropeconf run`` with its variant run alone:

1. ``CacheWithoutTheta``: the process-wide cos/sin table cache is keyed by (positions, dim, dtype),
   not by theta: a second module with another theta reuses the first one's table.
2. ``CacheIgnoresDtype``: a module caches its table in the dtype of its first call and reuses it
   for later calls in another dtype.
3. ``HardcodedBetaFast``: YaRN's beta_fast is 32 whatever the config says.
4. ``key_side_xpos_bug`` (a function adapter taking ``role``): the key gets the query's xPos scale.
5. ``DynamicNeverResets``: dynamic NTK grows its frequencies past L0 and never goes back.
"""

from __future__ import annotations

import math

import numpy as np

from ropeconf.conformance.adapter import Adapter, Capabilities, Numerics

F32 = np.float32
_TABLES: dict = {}  # the process-wide table cache (key chosen by the module)


class ToyRotary:
    """rope_type default / dynamic / yarn, optional xPos; half layout; float32 frequencies and angles."""

    def __init__(self, dim, theta=10000.0, rope_type="default", factor=None, L0=None, beta_fast=32.0,
                 beta_slow=1.0, truncate=True, attention_factor=None, mscale=None, mscale_all_dim=None,
                 xpos_scale_base=None, bugs=()):
        self.dim, self.theta, self.rope_type, self.factor, self.L0 = dim, theta, rope_type, factor, L0
        self.beta_fast = 32.0 if "hardcoded_beta_fast" in bugs else beta_fast
        self.beta_slow, self.truncate, self.attention_factor = beta_slow, truncate, attention_factor
        self.mscale, self.mscale_all_dim = mscale, mscale_all_dim
        self.xpos_scale_base, self.bugs = xpos_scale_base, set(bugs)
        self.own: dict = {}                   # the module's own cache (the dtype-ignoring bug uses it)
        self.cached_len = L0                  # dynamic NTK state (HF-like)
        self.inv_freq = self._inv_freq(L0)

    # ------------------------------------------------------------------ frequencies (float32)
    def _base_inv(self, base):
        i = np.arange(0, self.dim, 2, dtype=F32)
        return (F32(1.0) / (F32(base) ** (i / F32(self.dim)))).astype(F32)

    def _inv_freq(self, seq_len):
        if self.rope_type == "dynamic":
            s, r = F32(self.factor), F32(self.dim)
            L = F32(max(seq_len or self.L0, self.L0))
            base = F32(self.theta) * (s * L / F32(self.L0) - (s - F32(1))) ** (r / (r - F32(2)))
            return self._base_inv(base)
        inv = self._base_inv(self.theta)
        if self.rope_type == "yarn":
            r, b, s = self.dim, self.theta, self.factor

            def corr(rot):
                return r * math.log(self.L0 / (rot * 2 * math.pi)) / (2 * math.log(b))
            low, high = corr(self.beta_fast), corr(self.beta_slow)
            if self.truncate:
                low, high = math.floor(low), math.ceil(high)
            low, high = max(low, 0), min(high, r - 1)
            if low == high:
                high += 0.001
            ramp = np.clip((np.arange(r // 2, dtype=F32) - F32(low)) / F32(high - low), 0, 1).astype(F32)
            inv = (inv / F32(s) * ramp + inv * (F32(1) - ramp)).astype(F32)
        return inv

    def _attention(self):
        if self.rope_type != "yarn":
            return F32(1.0)
        if self.attention_factor is not None:
            return F32(self.attention_factor)

        def m(s, k=1.0):
            return 1.0 if s <= 1 else 0.1 * k * math.log(s) + 1.0
        if self.mscale and self.mscale_all_dim:
            return F32(m(self.factor, self.mscale) / m(self.factor, self.mscale_all_dim))
        return F32(m(self.factor))

    # ------------------------------------------------------------------ tables and call
    def _table(self, positions, dtype):
        """cos/sin at ``positions`` in ``dtype``, from a cache keyed by the positions (like a real module's
        cache keyed by (seq_len, offset)); the planted bugs drop theta or the dtype from the key."""
        key = (positions.tobytes(), positions.shape, self.dim)
        if "cache_ignores_dtype" in self.bugs:
            cache = self.own
        else:
            cache, key = _TABLES, key + (np.dtype(dtype).str,)
        if "cache_without_theta" not in self.bugs:
            key = key + (self.theta, self.rope_type, self.factor, self.L0, self.beta_fast, self.beta_slow,
                         self.truncate, float(self._attention()), self.inv_freq.tobytes())
        if key not in cache:
            ang = positions.astype(F32)[..., None] * self.inv_freq
            att = self._attention()
            cache[key] = ((np.cos(ang) * att).astype(dtype), (np.sin(ang) * att).astype(dtype))
            if len(_TABLES) > 512:
                _TABLES.pop(next(iter(_TABLES)))
        return cache[key]

    def __call__(self, x, positions, role="query"):
        positions = np.asarray(positions)
        seq_len = int(positions.max()) + 1
        if self.rope_type == "dynamic":
            if "dynamic_never_resets" in self.bugs:
                if seq_len > self.cached_len:          # grows, never shrinks back
                    self.inv_freq, self.cached_len = self._inv_freq(seq_len), seq_len
            else:
                self.inv_freq = self._inv_freq(seq_len)   # per call: max(positions) + 1
        c, s = self._table(positions, x.dtype)
        c, s = c[:, None], s[:, None]
        if self.xpos_scale_base:
            r = self.dim
            zeta = ((np.arange(0, r, 2, dtype=F32) + F32(0.4) * F32(r)) / (F32(1.4) * F32(r))).astype(F32)
            power = ((positions.astype(F32) - F32(seq_len // 2)) / F32(self.xpos_scale_base))[..., None]
            scale = (zeta ** power).astype(F32)
            if role == "key":
                scale = (F32(1.0) / scale).astype(F32)
            c = (c.astype(F32) * scale[:, None]).astype(x.dtype)
            s = (s.astype(F32) * scale[:, None]).astype(x.dtype)
        h = self.dim // 2
        x1, x2 = x[..., :h], x[..., h:self.dim]
        return np.concatenate([(x1 * c - x2 * s).astype(x.dtype), (x2 * c + x1 * s).astype(x.dtype),
                               x[..., self.dim:]], axis=-1)


# ----------------------------------------------------------------------------- adapters
class CorrectToy(Adapter):
    name = "toy-stateful"
    distribution = "toy-rope"
    bugs: tuple = ()
    capabilities = Capabilities(rope_types=("default", "dynamic", "yarn"), layouts=("half",),
                                dtypes=("float32", "float16", "bfloat16"), partial=True, xpos=True,
                                positions="arbitrary")
    precision = Numerics(angle_dtype="float32")

    def why_unsupported(self, spec, dtype, device, positions=None):
        why = super().why_unsupported(spec, dtype, device, positions)
        if why is None and spec.xpos and spec.xpos_center is not None:
            why = "xpos_center: the toy centres the scale at seq_len // 2"
        if why is None and positions is not None and np.size(positions) and np.min(positions) < 0:
            why = "negative positions"
        return why

    def module(self, spec):
        return ToyRotary(spec.rotary_dim, spec.rope_theta, spec.rope_type, spec.factor,
                         spec.original_max_position_embeddings, spec.beta_fast, spec.beta_slow, spec.truncate,
                         spec.attention_factor, spec.mscale, spec.mscale_all_dim,
                         spec.xpos_scale_base if spec.xpos else None, self.bugs)

    def instance(self, spec, dtype, device="cpu"):
        mod = self.module(spec)
        return type("Live", (), {"run": lambda _self, x, positions, role="query": mod(x, positions, role)})()

    def call(self, x, positions, spec, *, dtype, device="cpu", role="query"):
        return self.module(spec)(x, positions, role)


class CacheWithoutTheta(CorrectToy):
    bugs = ("cache_without_theta",)


class CacheIgnoresDtype(CorrectToy):
    bugs = ("cache_ignores_dtype",)


class HardcodedBetaFast(CorrectToy):
    bugs = ("hardcoded_beta_fast",)


class DynamicNeverResets(CorrectToy):
    bugs = ("dynamic_never_resets",)


def key_side_xpos_bug(x, positions, spec, role="query"):
    """A function adapter: correct, except that the key gets the query's xPos scale."""
    mod = CorrectToy().module(__import__("ropeconf.reference", fromlist=["RopeSpec"]).RopeSpec.from_dict(spec))
    return mod(x, positions, "query")


key_side_xpos_bug.ropeconf_capabilities = {"rope_types": ["default"], "layouts": ["half"], "xpos": True,
                                           "dtypes": ["float32", "bfloat16"], "partial": True}
