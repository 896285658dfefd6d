"""One declarative record per RoPE variant (the OpInfo pattern).

Each :class:`Variant` names a variant, gives a representative spec (the
parameters published models use), says which positions are interesting for it
(its thresholds) and which mathematical properties hold.  The golden-data grid,
the hypothesis strategies and the suite's test templates all expand these
records; nothing else lists variants.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

from .spec import RopeSpec


@dataclasses.dataclass(frozen=True)
class Variant:
    name: str
    short: str                              # column label in the matrix (at most 6 characters, unique)
    params: dict[str, Any]                  # RopeSpec keys besides head_dim/rotary_dim/layout
    source: str                             # where the formula comes from (docs/variants.md)
    threshold: str | None = None            # spec key whose value is a position threshold
    relative: bool = True                   # <R_m q, R_n k> depends only on m - n
    streams: int = 1                        # trailing positions axis (axial / M-RoPE)
    min_rotary_dim: int = 2
    # the largest position golden and property cases use: beyond it the variant is not meaningful in
    # float64 (xPos overflows), or a float32-angle implementation could not be judged (its tolerance
    # reaches the pair's size, docs/tolerance.md "Judgeable positions")
    max_position: int = 2 ** 24

    def spec(self, head_dim: int = 64, rotary_dim: int | None = None, layout: str = "half",
             **overrides: Any) -> RopeSpec:
        params = {**self.params, **overrides}
        r = rotary_dim or head_dim
        for key in ("short_factor", "long_factor"):
            if key in params and callable(params[key]):
                params[key] = params[key](r // 2)
        if "mrope_section" in params and callable(params["mrope_section"]):
            params["mrope_section"] = params["mrope_section"](r // 2)
        if params.get("freqs_for") == "constant":
            params["num_freqs"] = r // 2 // max(1, params.get("axial_axes", 0) or 1)
        if params.get("freqs_for") == "custom" and callable(params.get("inv_freq")):
            params["inv_freq"] = params["inv_freq"](r // 2)
        return RopeSpec(head_dim=head_dim, rotary_dim=r, layout=layout, **params)

    def thresholds(self, spec: RopeSpec) -> list[int]:
        """Positions where this variant's formula switches (empty if none)."""
        if self.threshold is None:
            return []
        return [int(getattr(spec, self.threshold))]


def _longrope_factors(kind: str):
    # Phi-3-like factor profiles: short close to 1, long rising to ~4 (deterministic, exact doubles).
    if kind == "short":
        return lambda n: [1.0 + (0.25 * i) / n for i in range(n)]
    return lambda n: [1.0 + (3.0 * i * i) / (n * n) for i in range(n)]


def _mrope_sections(n: int) -> list[int]:
    t = n // 4 if n >= 4 else 1
    h = (n - t) // 2
    return [t, h, n - t - h]


def _custom_freqs(n: int) -> list[float]:
    # "Learned" frequencies: exact doubles with no closed form.
    return [math.ldexp(1.0, -i) * (1.0 + 1.0 / 3.0 * (i % 3)) for i in range(n)]


VARIANTS: dict[str, Variant] = {v.name: v for v in [
    Variant("default", "def", {}, "RoFormer, arXiv:2104.09864"),
    Variant("theta500k", "th5e5", {"rope_theta": 500000.0}, "Llama 3 base (large theta), arXiv:2309.16039"),
    Variant("linear", "lin", {"rope_type": "linear", "factor": 4.0}, "Position interpolation, arXiv:2306.15595"),
    Variant("ntk", "ntk", {"rope_type": "ntk", "factor": 4.0}, "NTK-aware scaling (bloc97, 2023)", min_rotary_dim=4),
    Variant("dynamic", "dyn", {"rope_type": "dynamic", "factor": 4.0, "original_max_position_embeddings": 2048},
            "Dynamic NTK (emozilla, 2023); HF _compute_dynamic_ntk_parameters",
            threshold="original_max_position_embeddings", relative=False, min_rotary_dim=4),
    Variant("yarn", "yarn", {"rope_type": "yarn", "factor": 8.0, "original_max_position_embeddings": 4096},
            "YaRN, arXiv:2309.00071; HF _compute_yarn_parameters"),
    Variant("yarn-notrunc", "yarnT", {"rope_type": "yarn", "factor": 32.0, "original_max_position_embeddings": 4096,
                             "truncate": False, "rope_theta": 150000.0}, "YaRN truncate=False (gpt-oss)"),
    Variant("yarn-deepseek", "yarnD", {"rope_type": "yarn", "factor": 40.0, "original_max_position_embeddings": 4096,
                              "mscale": 0.707, "mscale_all_dim": 1.0},
            "DeepSeek-V2 YaRN mscale ratio, arXiv:2405.04434"),
    Variant("longrope", "lrope", {"rope_type": "longrope", "factor": 32.0, "original_max_position_embeddings": 4096,
                         "short_factor": _longrope_factors("short"), "long_factor": _longrope_factors("long")},
            "LongRoPE, arXiv:2402.13753; HF _compute_longrope_parameters",
            threshold="original_max_position_embeddings", relative=False),
    Variant("longrope-position", "lropP", {"rope_type": "longrope", "factor": 32.0, "original_max_position_embeddings": 4096,
                                  "short_factor": _longrope_factors("short"),
                                  "long_factor": _longrope_factors("long"), "longrope_switch": "position"},
            "LongRoPE stitched per position (Modular MAX)", threshold="original_max_position_embeddings",
            relative=False),
    Variant("llama3", "ll3", {"rope_type": "llama3", "factor": 8.0, "original_max_position_embeddings": 8192,
                       "low_freq_factor": 1.0, "high_freq_factor": 4.0, "rope_theta": 500000.0},
            "Llama 3.1 apply_scaling (meta-llama/llama-models)"),
    # pixel frequencies reach pi * max_freq / 2 ~ 15.7: float32 angles are judgeable up to ~1.3e5
    Variant("pixel", "pix", {"freqs_for": "pixel", "max_freq": 10.0}, "rotary-embedding-torch freqs_for='pixel'",
            max_position=2 ** 16),
    Variant("constant", "const", {"freqs_for": "constant"}, "rotary-embedding-torch freqs_for='constant'"),
    Variant("custom", "cust", {"freqs_for": "custom", "inv_freq": _custom_freqs}, "explicit / learned inv_freq"),
    # xPos scales grow like zeta^(+-seq_len/(2*B)): past ~5e5 tokens they overflow float64.
    Variant("xpos", "xpos", {"xpos": True}, "xPos, arXiv:2212.10554; rotary-embedding-torch get_scale",
            relative=True, max_position=2 ** 15),
    Variant("axial2d", "ax2d", {"axial_axes": 2, "freqs_for": "pixel", "max_freq": 10.0},
            "Axial 2-D RoPE, arXiv:2403.13298; rotary-embedding-torch get_axial_freqs", streams=2,
            min_rotary_dim=4, max_position=2 ** 16),
    Variant("mrope", "mrope", {"mrope_section": _mrope_sections, "rope_theta": 1000000.0},
            "M-RoPE (Qwen2-VL), arXiv:2409.12191", streams=3, min_rotary_dim=6),
    Variant("mrope-interleaved", "mropI", {"mrope_section": _mrope_sections, "mrope_interleaved": True,
                                  "rope_theta": 5000000.0},
            "Interleaved M-RoPE (Qwen3-VL apply_interleaved_mrope)", streams=3, min_rotary_dim=6),
    # appended last: the golden case seeds follow the record order
    Variant("axial2d-lang", "ax2dL", {"axial_axes": 2},
            "Axial 2-D RoPE on the geometric schedule (rotary-embedding-torch get_axial_freqs, freqs_for='lang')",
            streams=2, min_rotary_dim=4),
]}
