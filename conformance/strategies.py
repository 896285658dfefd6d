"""Hypothesis strategies, all in one module (the array-api-tests pattern).

A property case is drawn *within what the adapter declares*: layouts, partial
rotation and position kinds come from its capabilities, so every drawn case
is one the adapter claims to support.  Positions reach 2**20 (capped by the
variant's and the adapter's own maximum) and are biased towards the
variant's thresholds.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from hypothesis import strategies as st

from ropeconf.reference import RopeSpec
from ropeconf.reference.variants import Variant

from .adapter import Capabilities
from .tolerance import Precision, judgeable_position_limit

MAX_POSITION = 2 ** 20


@st.composite
def spec_for(draw, variant: Variant, caps: Capabilities) -> RopeSpec:
    """A spec of ``variant`` with drawn dims and layout the adapter supports."""
    layouts = [lay for lay in ("half", "interleaved") if lay in caps.layouts] or ["half"]
    layout = draw(st.sampled_from(layouts), label="layout")
    unit = 2 * max(1, variant.streams if variant.params.get("axial_axes") else 1)
    lo = max(variant.min_rotary_dim, unit)
    rotary_dim = draw(st.sampled_from([r for r in (8, 16, 32, 48, 64, 96, 128) if r >= lo and r % unit == 0]),
                      label="rotary_dim")
    head_dim = rotary_dim
    if caps.partial and draw(st.booleans(), label="partial"):
        head_dim = rotary_dim + draw(st.sampled_from([2, 8, 32, rotary_dim]), label="tail")
    return variant.spec(head_dim=head_dim, rotary_dim=rotary_dim, layout=layout)


@st.composite
def positions_for(draw, variant: Variant, spec: RopeSpec, caps: Capabilities,
                  precision: Precision | None = None) -> np.ndarray:
    """int64 positions (batch, seq[, streams]) of a kind the adapter accepts, every one judgeable.

    Positions stay below the precision's judgeable limit for the spec (where the
    tolerance would reach the pair's size and no output could be told wrong).
    """
    batch = draw(st.integers(1, 2), label="batch")
    seq = draw(st.integers(1, 12), label="seq")
    limit = judgeable_position_limit(spec, precision) if precision is not None else float("inf")
    top = int(min(MAX_POSITION, variant.max_position, caps.max_position or MAX_POSITION, limit)) - seq
    top = max(top, 0)
    anchors = [0, top] + [t + d for t in variant.thresholds(spec) for d in (-seq, -seq + 1, 0)]
    anchors = [a for a in anchors if 0 <= a <= top]
    start_st = st.one_of(st.sampled_from(anchors), st.integers(0, top))
    kinds = {"range": ["range"], "offset": ["range", "offset"],
             "arbitrary": ["range", "offset", "arbitrary"]}[caps.positions]
    kind = draw(st.sampled_from(kinds), label="positions_kind")
    ar = np.arange(seq, dtype=np.int64)
    if kind == "range":
        p = np.broadcast_to(ar, (batch, seq))
    elif kind == "offset":
        p = np.broadcast_to(draw(start_st, label="start") + ar, (batch, seq))
    else:
        rows = [np.array(draw(st.lists(start_st, min_size=seq, max_size=seq), label=f"row{b}"))
                for b in range(batch)]
        p = np.stack(rows)
    p = np.array(p, dtype=np.int64)
    if variant.streams > 1:
        shifts = [draw(st.integers(0, 64), label=f"stream{s}") for s in range(variant.streams)]
        p = np.stack([np.maximum(p - sh, 0) for sh in shifts], axis=-1)
    return p


@st.composite
def property_case(draw, variant: Variant, caps: Capabilities, precision: Precision | None = None) -> dict[str, Any]:
    spec = draw(spec_for(variant, caps))
    positions = draw(positions_for(variant, spec, caps, precision))
    heads = draw(st.integers(1, 3), label="heads")
    seed = draw(st.integers(0, 2 ** 31 - 1), label="seed")
    return {"spec": spec, "positions": positions, "heads": heads, "seed": seed}
