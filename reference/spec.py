"""The one canonical description of a RoPE: :class:`RopeSpec`.

Every other part of rope-conformance (the reference, the golden data, the
adapters and the suite) consumes a ``RopeSpec`` or its ``to_dict()`` form.
Key names follow Hugging Face's ``rope_parameters`` wherever HF has the
concept; the rest are ours.  docs/spec.md documents every key, its default and
its valid range; ``FIELDS`` below is the machine-readable form of that table.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any, Mapping

from .frequencies import ROPE_TYPES as ROPE_TYPE_RECORDS
from .frequencies import SCALING_KEYS
from .validate import check_finite, check_int, check_range, float_tuple

ROPE_TYPES = tuple(ROPE_TYPE_RECORDS)
LAYOUTS = ("half", "interleaved")
FREQS_FOR = ("lang", "pixel", "constant", "custom")
LONGROPE_SWITCH = ("sequence", "position")
# Our keys that are not HF ``rope_parameters`` keys (max_position_embeddings is a config-level HF key).
_NOT_HF_PARAMS = frozenset({"longrope_switch", "max_position_embeddings"})


@dataclasses.dataclass(frozen=True)
class RopeSpec:
    """An immutable, validated description of one RoPE configuration.

    Construct with keywords or :meth:`from_dict`; every invalid value raises
    ``ValueError``/``TypeError`` naming the key, the value and the allowed range.
    """

    # --- geometry -------------------------------------------------------------
    head_dim: int = 64
    rotary_dim: int | None = None          # None: int(head_dim * partial_rotary_factor)
    partial_rotary_factor: float = 1.0
    layout: str = "half"                   # "half": pairs (i, i+r/2); "interleaved": (2i, 2i+1)
    # --- frequency schedule -----------------------------------------------------
    rope_type: str = "default"
    rope_theta: float = 10000.0
    freqs_for: str = "lang"                # lang | pixel | constant | custom
    max_freq: float = 10.0                 # pixel: omega = pi * linspace(1, max_freq/2, n)
    num_freqs: int = 1                     # constant: omega = 1 (num_freqs must equal n)
    inv_freq: tuple[float, ...] | None = None  # custom: explicit (learned) frequencies
    # --- scaling (HF rope_parameters names) --------------------------------------
    factor: float | None = None
    original_max_position_embeddings: int | None = None
    max_position_embeddings: int | None = None
    attention_factor: float | None = None
    beta_fast: float = 32.0
    beta_slow: float = 1.0
    mscale: float | None = None
    mscale_all_dim: float | None = None
    truncate: bool = True
    short_factor: tuple[float, ...] | None = None
    long_factor: tuple[float, ...] | None = None
    low_freq_factor: float | None = None   # llama3: required (HF validation requires both)
    high_freq_factor: float | None = None
    longrope_switch: str = "sequence"      # "sequence": HF (max position decides); "position": MAX
    # --- xPos ----------------------------------------------------------------
    xpos: bool = False
    xpos_scale_base: float = 512.0
    xpos_center: float | None = None       # None: floor(seq_len / 2)
    # --- multi-axis positions ------------------------------------------------------
    axial_axes: int = 0                    # >0: positions carry a trailing axis of this length
    mrope_section: tuple[int, ...] | None = None
    mrope_interleaved: bool = False

    # ------------------------------------------------------------------------
    def __post_init__(self) -> None:
        set_ = lambda k, v: object.__setattr__(self, k, v)  # noqa: E731
        for name in ("inv_freq", "short_factor", "long_factor"):
            set_(name, float_tuple(name, getattr(self, name)))
        if self.mrope_section is not None:
            sec = tuple(self.mrope_section)
            for i, v in enumerate(sec):
                check_int(f"mrope_section[{i}]", v, 0)
            set_("mrope_section", sec)
        for name in ("truncate", "xpos", "mrope_interleaved"):
            if not isinstance(getattr(self, name), bool):
                raise TypeError(f"{name} must be a bool, got {getattr(self, name)!r}")
        for name, allowed in (("rope_type", ROPE_TYPES), ("layout", LAYOUTS),
                              ("freqs_for", FREQS_FOR), ("longrope_switch", LONGROPE_SWITCH)):
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name}={getattr(self, name)!r} is not one of {list(allowed)}")

        check_int("head_dim", self.head_dim, 2)
        check_range("partial_rotary_factor", self.partial_rotary_factor, 0.0, 1.0, low_open=True)
        if self.rotary_dim is None:
            rd = int(self.head_dim * self.partial_rotary_factor)
            if rd % 2:
                raise ValueError(
                    f"rotary_dim derived from head_dim={self.head_dim} * partial_rotary_factor="
                    f"{self.partial_rotary_factor} is {rd}, which is odd: rotary_dim must be even")
            set_("rotary_dim", rd)
        elif self.partial_rotary_factor != 1.0 and \
                self.rotary_dim != int(self.head_dim * self.partial_rotary_factor):
            raise ValueError(f"rotary_dim={self.rotary_dim!r} contradicts partial_rotary_factor="
                             f"{self.partial_rotary_factor} with head_dim={self.head_dim}")
        check_int("rotary_dim", self.rotary_dim, 2)
        if self.rotary_dim % 2:
            raise ValueError(f"rotary_dim={self.rotary_dim} is odd: must be an even int in [2, head_dim]")
        if self.rotary_dim > self.head_dim:
            raise ValueError(f"rotary_dim={self.rotary_dim} is out of range: must be <= head_dim={self.head_dim}")

        check_range("rope_theta", self.rope_theta, 1.0, low_open=True)
        n = self.n_freqs
        check_finite("max_freq", self.max_freq)
        if self.freqs_for == "pixel":
            check_range("max_freq", self.max_freq, 0.0, low_open=True)
        check_int("num_freqs", self.num_freqs, 1)
        if self.freqs_for == "constant":
            if self.num_freqs != n:
                raise ValueError(f"num_freqs={self.num_freqs} must equal the number of rotated pairs "
                                 f"per axis ({n}) for freqs_for='constant'")
        if self.freqs_for == "custom":
            if self.inv_freq is None or len(self.inv_freq) != n:
                got = None if self.inv_freq is None else len(self.inv_freq)
                raise ValueError(f"inv_freq must be a list of {n} frequencies for freqs_for='custom' "
                                 f"(rotary_dim/2 per axis), got length {got}")
        elif self.inv_freq is not None:
            raise ValueError("inv_freq is only valid with freqs_for='custom'")
        if self.freqs_for != "lang" and ROPE_TYPE_RECORDS[self.rope_type].lang_only:
            raise ValueError(f"rope_type={self.rope_type!r} needs freqs_for='lang' (its formula is "
                             f"defined on the geometric schedule), got freqs_for={self.freqs_for!r}")

        # scaling keys: only those of the chosen rope_type may be set; its record checks the rest
        rt = ROPE_TYPE_RECORDS[self.rope_type]
        defaults = {f.name: f.default for f in dataclasses.fields(RopeSpec)}
        for key in sorted(SCALING_KEYS - rt.keys):
            if getattr(self, key) != defaults[key]:
                raise ValueError(f"{key}={getattr(self, key)!r} is not used by rope_type="
                                 f"{self.rope_type!r} (it reads: {sorted(rt.keys) or 'no scaling keys'})")
        if self.max_position_embeddings is not None:
            check_int("max_position_embeddings", self.max_position_embeddings, 1)
        if self.attention_factor is not None:
            check_range("attention_factor", self.attention_factor, 0.0, low_open=True)
        rt.validate(self)
        if self.xpos:
            check_range("xpos_scale_base", self.xpos_scale_base, 0.0, low_open=True)
            if self.xpos_center is not None:
                check_finite("xpos_center", self.xpos_center)
        elif self.xpos_center is not None or self.xpos_scale_base != 512.0:
            raise ValueError("xpos_center / xpos_scale_base are only valid with xpos=True")

        check_int("axial_axes", self.axial_axes, 0)
        if self.axial_axes and self.mrope_section is not None:
            raise ValueError("axial_axes and mrope_section are exclusive")
        if self.axial_axes and self.rotary_dim % (2 * self.axial_axes):
            raise ValueError(f"rotary_dim={self.rotary_dim} must be divisible by 2*axial_axes="
                             f"{2 * self.axial_axes}")
        if self.mrope_section is not None:
            if len(self.mrope_section) < 1 or sum(self.mrope_section) != self.rotary_dim // 2:
                raise ValueError(f"mrope_section={list(self.mrope_section)} must sum to rotary_dim/2 = "
                                 f"{self.rotary_dim // 2}, got {sum(self.mrope_section)}")
            if self.mrope_interleaved and len(self.mrope_section) != 3:
                raise ValueError("mrope_interleaved=True needs exactly 3 sections (t, h, w)")
        elif self.mrope_interleaved:
            raise ValueError("mrope_interleaved=True needs mrope_section")

    # ------------------------------------------------------------------------
    @property
    def n_pairs(self) -> int:
        """Number of rotated pairs: rotary_dim // 2."""
        return self.rotary_dim // 2

    @property
    def n_streams(self) -> int:
        """Length of the trailing position axis (1 for plain 1-D positions)."""
        if self.axial_axes:
            return self.axial_axes
        if self.mrope_section is not None:
            return len(self.mrope_section)
        return 1

    @property
    def n_freqs(self) -> int:
        """Number of distinct frequencies: per axis for axial RoPE, else n_pairs."""
        return self.n_pairs // self.axial_axes if self.axial_axes else self.n_pairs

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict of every non-default key (rotary_dim and head_dim always)."""
        out: dict[str, Any] = {}
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            if f.name in ("head_dim", "rotary_dim", "rope_type", "layout") or v != f.default:
                out[f.name] = list(v) if isinstance(v, tuple) else v
        return out

    def to_full_dict(self) -> dict[str, Any]:
        """Every key that applies to this spec, defaults filled in (what function adapters receive).

        All geometry, schedule, xPos and multi-axis keys, plus every scaling key of this
        spec's rope_type (an optional one that is not set is present as None, meaning
        "derived", e.g. YaRN's attention_factor).  Scaling keys of other rope types are
        left out.  ``RopeSpec.from_dict`` accepts it back unchanged.
        """
        keys = ROPE_TYPE_RECORDS[self.rope_type].keys
        return {f.name: (list(v) if isinstance(v, tuple) else v)
                for f in dataclasses.fields(self) for v in [getattr(self, f.name)]
                if f.name not in SCALING_KEYS or f.name in keys}

    def hf_partial_rotary_factor(self) -> float | None:
        """A partial_rotary_factor f with int(head_dim * f) == rotary_dim (HF's rule), or None if none exists."""
        r, d = self.rotary_dim, self.head_dim
        if r == d:
            return 1.0
        import numpy as np

        candidates = [self.partial_rotary_factor, r / d]
        f = r / d
        for _ in range(4):  # r/d * d can round just below r (e.g. 1/49*49); step up an ulp or two
            f = float(np.nextafter(f, 2.0))
            candidates.append(f)
        return next((f for f in candidates if 0.0 < f < 1.0 and int(d * f) == r), None)

    def to_hf_rope_parameters(self) -> dict[str, Any]:
        """The Hugging Face (transformers v5) ``rope_parameters`` dict of this spec (inverse of from_hf_config).

        rope_type, rope_theta, every HF key of the rope_type that is set (HF names equal
        ours), ``partial_rotary_factor`` when rotary_dim < head_dim (ValueError if no
        factor gives int(head_dim * f) == rotary_dim), and ``mrope_section`` /
        ``mrope_interleaved``.  ``max_position_embeddings`` is a config-level key in HF and
        ``longrope_switch`` is ours: neither is included.  The layout is not a
        ``rope_parameters`` key either (HF: the model's code or ``rope_interleave``; vLLM:
        ``is_neox_style``).  Raises ValueError for specs HF cannot express (xPos, axial,
        non-'lang' schedules).
        """
        for bad, what in ((self.xpos, "xpos"), (bool(self.axial_axes), "axial_axes"),
                          (self.freqs_for != "lang", f"freqs_for={self.freqs_for!r}")):
            if bad:
                raise ValueError(f"{what} has no Hugging Face rope_parameters form")
        p: dict[str, Any] = {"rope_type": self.rope_type, "rope_theta": float(self.rope_theta)}
        for key in sorted(ROPE_TYPE_RECORDS[self.rope_type].keys - _NOT_HF_PARAMS):
            v = getattr(self, key)
            if v is None:
                continue
            p[key] = [float(a) for a in v] if isinstance(v, tuple) else (
                v if isinstance(v, bool) or key == "original_max_position_embeddings" else float(v))
        if self.rotary_dim < self.head_dim:
            f = self.hf_partial_rotary_factor()
            if f is None:
                raise ValueError(f"rotary_dim={self.rotary_dim} is not int(head_dim * f) for any f "
                                 f"(head_dim={self.head_dim})")
            p["partial_rotary_factor"] = f
        if self.mrope_section is not None:
            p["mrope_section"] = [int(s) for s in self.mrope_section]
            if self.mrope_interleaved:
                p["mrope_interleaved"] = True
        return p

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    def replace(self, **changes: Any) -> "RopeSpec":
        d = self.to_dict()
        derived = self.rotary_dim == int(self.head_dim * self.partial_rotary_factor)
        if ("head_dim" in changes or "partial_rotary_factor" in changes) and derived \
                and "rotary_dim" not in changes:
            d.pop("rotary_dim", None)  # re-derive it; an explicit rotary_dim is kept
        d.update(changes)
        return RopeSpec.from_dict(d)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "RopeSpec":
        """Build a spec from our own dict, or from a Hugging Face ``config.json`` dict.

        A dict with ``rope_scaling``, ``rope_parameters``, ``hidden_size`` or
        ``model_type`` is read as an HF config (see :meth:`from_hf_config`).
        Any other unknown key is an error that names it.
        """
        if not isinstance(d, Mapping):
            raise TypeError(f"RopeSpec.from_dict needs a mapping, got {type(d).__name__}")
        if any(k in d for k in ("rope_scaling", "rope_parameters", "hidden_size", "model_type")):
            return cls.from_hf_config(d)
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise ValueError(f"unknown RopeSpec key(s) {unknown}; valid keys: {sorted(names)}")
        return cls(**dict(d))

    @classmethod
    def from_hf_config(cls, config: Mapping[str, Any], layer_type: str | None = None) -> "RopeSpec":
        """Read a Hugging Face ``config.json`` dict, either generation.

        * transformers v4: top-level ``rope_theta``, ``partial_rotary_factor``,
          ``original_max_position_embeddings`` plus ``rope_scaling`` with
          ``type``/``rope_type``.
        * transformers v5: one ``rope_parameters`` dict (optionally nested per
          layer type; pick one with ``layer_type``).
        HF's ``"su"``/``"phi3"`` alias ``longrope``; ``"mrope"`` and ``"default"`` are
        plain RoPE with ``mrope_section`` honoured.  Non-RoPE keys are ignored.
        """
        cfg = dict(config)
        if "text_config" in cfg and "hidden_size" not in cfg:
            cfg = {**cfg["text_config"], **{k: v for k, v in cfg.items() if k != "text_config"}}
        params = dict(cfg.get("rope_parameters") or {})
        if params and all(isinstance(v, Mapping) for v in params.values()):
            if layer_type is None:
                layer_type = "full_attention" if "full_attention" in params else sorted(params)[0]
            params = dict(params[layer_type])
        legacy = dict(cfg.get("rope_scaling") or {})
        merged: dict[str, Any] = {}
        for k in ("rope_theta", "partial_rotary_factor", "original_max_position_embeddings",
                  "max_position_embeddings", "head_dim"):
            if cfg.get(k) is not None:
                merged[k] = cfg[k]
        merged.update(legacy)
        merged.update(params)
        rope_type = merged.pop("rope_type", None) or merged.pop("type", None) or "default"
        merged.pop("type", None)
        rope_type = {"su": "longrope", "phi3": "longrope", "mrope": "default"}.get(rope_type, rope_type)
        if cfg.get("qk_rope_head_dim"):
            # DeepSeek-V2/V3: RoPE acts on the qk_rope_head_dim slice only (HF DeepseekV3Config sets
            # head_dim = qk_rope_head_dim); rope_interleave=True pairs (2i, 2i+1) of that slice.
            merged["head_dim"] = cfg["qk_rope_head_dim"]
            if cfg.get("rope_interleave"):
                merged["layout"] = "interleaved"
        if "head_dim" not in merged or merged["head_dim"] is None:
            try:
                merged["head_dim"] = cfg["hidden_size"] // cfg["num_attention_heads"]
            except KeyError as e:
                raise ValueError("HF config needs head_dim or hidden_size and num_attention_heads") from e
        out: dict[str, Any] = {"rope_type": rope_type}
        if "layout" in merged:
            out["layout"] = merged.pop("layout")
        names = {f.name for f in dataclasses.fields(cls)}
        for k, v in merged.items():
            if k in names and v is not None:
                out[k] = v
        if "mrope_section" in merged:
            out["mrope_section"] = merged["mrope_section"]
            out["mrope_interleaved"] = bool(merged.get("mrope_interleaved", False))
        # drop keys the chosen type does not read (HF configs carry them harmlessly)
        rt = ROPE_TYPE_RECORDS.get(rope_type)
        for k in list(out):
            if k in SCALING_KEYS and (rt is None or k not in rt.keys):
                out.pop(k)
        if rt is not None and rt.needs_original_length and \
                "original_max_position_embeddings" not in out and "max_position_embeddings" in merged:
            # HF v5 standardize_rope_params falls back to max_position_embeddings
            out["original_max_position_embeddings"] = merged["max_position_embeddings"]
        for k in ("original_max_position_embeddings", "max_position_embeddings", "head_dim"):
            if isinstance(out.get(k), float) and out[k].is_integer():
                out[k] = int(out[k])
        return cls(**out)
