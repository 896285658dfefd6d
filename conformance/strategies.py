"""Hypothesis strategies, all in one module (the array-api-tests pattern).

A property case is drawn *within what the adapter declares*: layouts, partial
rotation and position kinds come from its capabilities, so every drawn case
is one the adapter claims to support.

* **Specs are drawn, not fixed**: each variant's parameters (theta, factor, L0,
  YaRN's betas, mscales, attention factor and truncate, Llama 3's band factors,
  LongRoPE's factor lists, the xPos scale base, pixel max_freq) are drawn from
  their valid ranges and shrink toward the variant's canonical values, so a
  library that hard-codes one of them cannot conform.  Dims include partial
  rotation and odd head dims.
* **Positions** reach 2**20, capped by the variant's and the adapter's maximum and
  by the judgeable limit of the spec under the adapter's precision, and are
  biased towards every switch the spec implies (L0 and L0 +- 1, Llama 3's
  wavelength band edges).  Multi-stream positions are near each other, a
  regular grid, or far apart.
* **Roles**: both query and key where the spec makes them differ (xPos).
* **Scenarios** drive one live instance the way inference does (prefill then
  decode, growing past L0 then a short sequence, ragged rows, dtype switches,
  two specs alive and called interleaved); see ``scenario_for``.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from hypothesis import assume
from hypothesis import strategies as st

from ropeconf.reference import RopeSpec
from ropeconf.reference.frequencies import ROPE_TYPES
from ropeconf.reference.variants import Variant

from .adapter import Capabilities
from .tolerance import UNIT_ROUNDOFF, Precision, judgeable_position_limit

MAX_POSITION = 2 ** 20


def _around(canonical: Any, other: st.SearchStrategy) -> st.SearchStrategy:
    """``canonical`` first (hypothesis shrinks toward the first branch), else a drawn value."""
    return st.one_of(st.just(canonical), other)


@st.composite
def _log_floats(draw, lo: float, hi: float) -> float:
    """Log-uniform floats in [lo, hi] (a named strategy: hypothesis reprs of lambdas cost per draw)."""
    return float(min(max(math.exp(draw(st.floats(math.log(lo), math.log(hi)))), lo), hi))


@st.composite
def spec_params(draw, variant: Variant, n_freqs: int) -> dict[str, Any]:
    """Drawn overrides of the variant's parameters (each key shrinks to the variant's own value)."""
    base = variant.spec()
    rt = ROPE_TYPES[base.rope_type]
    out: dict[str, Any] = {}
    if base.freqs_for == "lang":
        out["rope_theta"] = draw(_around(base.rope_theta, _log_floats(100.0, 1e7)), label="rope_theta")
    if base.freqs_for == "pixel":
        out["max_freq"] = draw(_around(base.max_freq, st.floats(2.0, 64.0)), label="max_freq")
    if "factor" in rt.keys and base.factor is not None:
        out["factor"] = draw(_around(base.factor, _log_floats(0.5, 64.0)), label="factor")
    if rt.needs_original_length:
        out["original_max_position_embeddings"] = draw(_around(
            base.original_max_position_embeddings, st.integers(64, 65536)), label="original_max_position_embeddings")
    if base.rope_type == "yarn":
        slow = draw(_around(base.beta_slow, st.floats(0.25, 8.0)), label="beta_slow")
        out["beta_slow"] = slow
        out["beta_fast"] = draw(_around(max(base.beta_fast, slow), st.floats(slow, 64.0)), label="beta_fast")
        if variant.params.get("truncate", True):  # yarn-notrunc stays truncate=False: it is what it tests
            out["truncate"] = draw(st.sampled_from([True, False]), label="truncate")
        if base.mscale is not None:
            out["mscale"] = draw(_around(base.mscale, st.floats(0.1, 2.0)), label="mscale")
            out["mscale_all_dim"] = draw(_around(base.mscale_all_dim, st.floats(0.1, 2.0)), label="mscale_all_dim")
    if base.rope_type in ("yarn", "longrope"):
        out["attention_factor"] = draw(_around(base.attention_factor, st.floats(0.5, 2.0)), label="attention_factor")
    if base.rope_type == "llama3":
        lo = draw(_around(base.low_freq_factor, st.floats(0.5, 4.0)), label="low_freq_factor")
        out["low_freq_factor"] = lo
        out["high_freq_factor"] = draw(_around(max(base.high_freq_factor, lo), st.floats(lo, 16.0)),
                                       label="high_freq_factor")
    if base.rope_type == "longrope":
        for key in ("short_factor", "long_factor"):
            canonical = variant.params[key](n_freqs) if callable(variant.params[key]) else variant.params[key]
            out[key] = draw(_around(canonical, st.lists(st.floats(1.0, 8.0), min_size=n_freqs, max_size=n_freqs)),
                            label=key)
    if base.xpos:
        out["xpos_scale_base"] = draw(_around(base.xpos_scale_base, st.floats(64.0, 4096.0)), label="xpos_scale_base")
    return out


@st.composite
def spec_for(draw, variant: Variant, caps: Capabilities, randomize: bool = True) -> RopeSpec:
    """A spec of ``variant`` with drawn dims, layout and (``randomize``) parameters the adapter supports."""
    layouts = [lay for lay in ("half", "interleaved") if lay in caps.layouts] or ["half"]
    layout = draw(st.sampled_from(layouts), label="layout")
    unit = 2 * max(1, variant.streams if variant.params.get("axial_axes") else 1)
    lo = max(variant.min_rotary_dim, unit)
    rotary_dim = draw(st.sampled_from([r for r in (8, 16, 32, 48, 64, 96, 128) if r >= lo and r % unit == 0]),
                      label="rotary_dim")
    head_dim = rotary_dim
    if caps.partial and draw(st.booleans(), label="partial"):
        head_dim = rotary_dim + draw(st.sampled_from([2, 8, 1, 3, 32, rotary_dim]), label="tail")  # odd too
    params = draw(spec_params(variant, rotary_dim // 2 // max(1, variant.params.get("axial_axes", 0) or 1)),
                  label="params") if randomize else {}
    try:
        return variant.spec(head_dim=head_dim, rotary_dim=rotary_dim, layout=layout, **params)
    except ValueError:
        assume(False)  # a combination outside the valid ranges (e.g. LongRoPE with L0 < 2)
        raise


def switches(spec: RopeSpec) -> list[int]:
    """Positions where the spec's formula or state switches: L0 (length rule) and Llama 3's band edges."""
    out = []
    if spec.original_max_position_embeddings:
        out.append(int(spec.original_max_position_embeddings))
    if spec.rope_type == "llama3":
        L0 = spec.original_max_position_embeddings
        out += [int(L0 / spec.high_freq_factor), int(L0 / spec.low_freq_factor)]
    return out


def position_top(variant: Variant, spec: RopeSpec, caps: Capabilities, precision: Precision | None) -> int:
    limit = judgeable_position_limit(spec, precision) if precision is not None else float("inf")
    return int(min(MAX_POSITION, variant.max_position, caps.max_position or MAX_POSITION, limit))


@st.composite
def positions_for(draw, variant: Variant, spec: RopeSpec, caps: Capabilities,
                  precision: Precision | None = None) -> np.ndarray:
    """int64 positions (batch, seq[, streams]) of a kind the adapter accepts, every one judgeable.

    Positions stay below the precision's judgeable limit for the spec (where the
    tolerance would reach the pair's size and no output could be told wrong).
    """
    batch = draw(st.integers(1, 2), label="batch")
    seq = draw(st.integers(1, 12), label="seq")
    top = max(position_top(variant, spec, caps, precision) - seq, 0)
    anchors = [0, top] + [t + d for t in switches(spec) for d in (-seq - 1, -seq, -seq + 1, -1, 0, 1)]
    anchors = sorted({a for a in anchors if 0 <= a <= top})
    start_st = st.one_of(st.sampled_from(anchors), st.integers(0, top))
    kinds = {"range": ["range"], "offset": ["range", "offset"],
             "arbitrary": ["range", "offset", "arbitrary"]}[caps.positions]
    if variant.streams > 1:
        return draw(stream_positions(variant, batch, seq, top, start_st), label="streams")
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
    return np.array(p, dtype=np.int64)


@st.composite
def stream_positions(draw, variant: Variant, batch: int, seq: int, top: int, start_st) -> np.ndarray:
    """(batch, seq, streams): streams near each other, a row-major grid (shared by the batch), or far apart."""
    n = variant.streams
    kind = draw(st.sampled_from(["near", "grid", "far"]), label="streams_kind")
    if kind == "grid":
        dims = [1] * n
        k = 0
        while math.prod(dims) < seq:            # a grid of about seq points (the seq is redrawn to fit it)
            dims[k % n] += 1
            k += 1
        offsets = [draw(st.sampled_from([0, top // 2, max(top - d, 0)]), label=f"grid{a}") for a, d in enumerate(dims)]
        grid = np.stack(np.meshgrid(*[np.arange(d) + o for d, o in zip(dims, offsets)], indexing="ij"), axis=-1)
        return np.ascontiguousarray(np.broadcast_to(grid.reshape(1, -1, n), (batch, math.prod(dims), n)),
                                    dtype=np.int64)
    base = np.stack([np.array(draw(st.lists(start_st, min_size=seq, max_size=seq), label=f"row{b}"))
                     for b in range(batch)])
    if kind == "near":
        shifts = [draw(st.integers(0, 64), label=f"stream{s}") for s in range(n)]
        return np.stack([np.maximum(base - sh, 0) for sh in shifts], axis=-1).astype(np.int64)
    others = [np.stack([np.array(draw(st.lists(start_st, min_size=seq, max_size=seq), label=f"s{s}row{b}"))
                        for b in range(batch)]) for s in range(1, n)]
    return np.stack([base] + others, axis=-1).astype(np.int64)


def roles(spec: RopeSpec) -> st.SearchStrategy:
    """query, and key where the spec makes them differ (xPos scales them in opposite directions)."""
    return st.sampled_from(["query", "key"]) if spec.xpos else st.just("query")


@st.composite
def property_case(draw, variant: Variant, caps: Capabilities, precision: Precision | None = None) -> dict[str, Any]:
    spec = draw(spec_for(variant, caps))
    positions = draw(positions_for(variant, spec, caps, precision))
    heads = draw(st.integers(1, 3), label="heads")
    seed = draw(st.integers(0, 2 ** 31 - 1), label="seed")
    role = draw(roles(spec), label="role")
    return {"spec": spec, "positions": positions, "heads": heads, "seed": seed, "role": role}


# ----------------------------------------------------------------------------- stateful scenarios
SCENARIOS = ("decode", "ragged", "grow_then_short", "dtype_switch", "two_specs", "restart")


def _variations(spec: RopeSpec) -> list[RopeSpec]:
    """Specs that differ from ``spec`` in one parameter a cache might forget to key on."""
    out = []
    for key, mul in (("rope_theta", 50.0), ("max_freq", 2.0), ("factor", 2.0), ("xpos_scale_base", 2.0),
                     ("original_max_position_embeddings", 2)):
        v = getattr(spec, key)
        if v is None or (key == "rope_theta" and spec.freqs_for != "lang") or \
                (key == "max_freq" and spec.freqs_for != "pixel") or (key == "xpos_scale_base" and not spec.xpos):
            continue
        try:
            out.append(spec.replace(**{key: type(v)(v * mul)}))
        except ValueError:
            continue
    return out or [spec]


def scenario_kinds(variant: Variant, caps: Capabilities, other_dtypes: tuple[str, ...]) -> list[str]:
    """The scenario kinds that apply to a variant and an adapter's declaration."""
    if variant.streams > 1 or caps.positions == "range":
        kinds = ["dtype_switch", "two_specs", "restart"]  # no decoding without offsets
    else:
        kinds = ["decode", "two_specs", "dtype_switch", "restart"] + (["ragged"] if caps.positions == "arbitrary"
                                                                       else [])
        if ROPE_TYPES[variant.spec().rope_type].length_dependent:
            kinds.insert(1, "grow_then_short")
    return [k for k in kinds if k != "dtype_switch" or other_dtypes]


@st.composite
def scenario_for(draw, variant: Variant, caps: Capabilities, precision: Precision, dtype: str,
                 other_dtypes: tuple[str, ...], kind: str) -> dict[str, Any]:
    """A call sequence of one ``kind`` on live instances: ``{"kind", "instances": [specs], "calls": [...]}``.

    Each call is ``{"instance", "positions", "dtype", "role", "seed", "heads"}``;
    every call is judged against the reference for exactly that call.  The first (simplest) draw
    of every choice below is a meaningful test: hypothesis starts with it, and a ci-profile cell
    plays only two sequences of each kind.
    """
    spec = draw(spec_for(variant, caps), label="spec")
    top = max(position_top(variant, spec, caps, precision) - 16, 1)
    heads = draw(st.integers(1, 2), label="heads")
    calls: list[dict[str, Any]] = []
    instances = [spec]

    def call(pos, inst=0, dt=dtype, role="query"):
        calls.append({"instance": inst, "positions": np.asarray(pos, dtype=np.int64), "dtype": dt, "role": role,
                      "seed": len(calls) + 1, "heads": heads})

    def fresh(seq: int, start: int = 0) -> np.ndarray:
        if variant.streams > 1:
            return np.stack([np.arange(seq) + start + s for s in range(variant.streams)], axis=-1)[None]
        return (start + np.arange(seq))[None]

    if kind == "decode":
        start = draw(st.sampled_from(list(dict.fromkeys([min(top, 4096), top // 2, 0]))), label="start")
        seq = draw(st.integers(1, 8), label="prefill")
        call(fresh(seq, start))
        for k in range(draw(st.integers(1, 4), label="steps")):
            call([[start + seq + k]], role=draw(roles(spec), label=f"role{k}"))
    elif kind == "ragged":
        starts = draw(_around([min(top, 100), min(top, 7000)], st.lists(st.integers(0, top), min_size=2, max_size=3)),
                      label="starts")
        seq = draw(st.integers(1, 6), label="prefill")
        call(np.array([s + np.arange(seq) for s in starts]))
        for k in range(draw(st.integers(1, 3), label="steps")):
            call(np.array([[s + seq + k] for s in starts]))
    elif kind == "grow_then_short":
        L0 = spec.original_max_position_embeddings
        most = max(2, min(4 * L0, top) - L0)
        over = draw(_around(min(L0, most), st.integers(2, most)), label="over")  # first: twice L0
        seq = draw(st.integers(1, 6), label="seq")
        call(fresh(seq, L0 + over - seq + 1))    # max position + 1 = L0 + over + 1 > L0: the long regime
        # always: a later, shorter sequence that is still past L0 (a module that only recomputes on
        # growth keeps the longer call's frequencies here; hypothesis' first draw must show it)
        call(fresh(1, L0 + draw(st.integers(1, over - 1), label="over2")))
        short = draw(st.integers(1, 6), label="short")  # back below L0 (not at 0: no angle, no evidence)
        call(fresh(short, draw(_around(max(L0 // 2 - short, 0), st.integers(0, max(L0 - short, 0))), label="at")))
        if draw(st.booleans(), label="decode_after"):
            call([[draw(st.integers(1, L0 - 1), label="pos")]])
    elif kind == "dtype_switch":
        coarse_first = sorted(other_dtypes, key=lambda d: -UNIT_ROUNDOFF[d])  # bfloat16 shows a stale table best
        other = draw(st.sampled_from(coarse_first), label="other_dtype")
        if draw(st.sampled_from([True, False]), label="long_from_0"):
            # first: a request from 0 past 256, where bfloat16 positions start to round (a table cached
            # with positions formed in the coarse dtype); it includes the short positions, where a stale
            # table in a coarser dtype shows best because the bound is tight there
            pos = fresh(min(300, top), 0)
        else:
            pos = fresh(draw(st.integers(1, 8), label="seq"),
                        draw(st.sampled_from(list(dict.fromkeys([min(top, 100), top // 2, 0]))), label="start"))
        call(pos, dt=other)
        call(pos, dt=dtype)
        if draw(st.booleans(), label="back"):
            call(pos, dt=other)
    elif kind == "restart":
        # a new, shorter request from 0 on the same instance: a cache keyed by length, or centred on the
        # first request's length (xPos), serves the longer request's values
        longer = draw(st.sampled_from(list(dict.fromkeys([min(32, top), min(300, top), 2]))), label="longer")
        shorter = draw(_around(max(longer // 2, 1), st.integers(1, max(longer - 1, 1))), label="shorter")
        call(fresh(longer, 0))
        call(fresh(shorter, 0), role=draw(roles(spec), label="role"))
    else:  # two_specs: another spec alive in the same process, called interleaved
        second = draw(st.one_of(st.sampled_from(_variations(spec)), spec_for(variant, caps)), label="second")
        assume(second != spec)
        instances.append(second)
        top2 = max(min(top, position_top(variant, second, caps, precision) - 16), 1)
        pos = fresh(draw(st.integers(1, 8), label="seq"), draw(st.sampled_from([top2 // 2, 0]), label="start"))
        order = draw(st.sampled_from([[0, 1, 0], [1, 0, 1], [0, 1]]), label="order")
        for inst in order:
            call(pos, inst=inst)
    return {"kind": kind, "instances": instances, "calls": calls}
