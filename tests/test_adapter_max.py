"""Modular MAX adapter (adapters/max.py).

Compiling one MAX graph costs ~35 s of CPU plus ~20 s per layer in it, cold (a few
seconds with a warm $MODULAR_CACHE_DIR), so this module compiles exactly TWO graphs.
For ``max``: float32, head_dim 64, a bundle of two variants (default RoPE and theta
500000), each applied in both layouts (4 outputs); that one compiled model must serve
every batch / heads / seq / start position (symbolic dims), both layouts and both
variants, each from its own output.  For ``max-fused``: the pipelines' kernel
``fused_qk_ragged_rope`` on default RoPE, float32, head_dim 64 (ragged rows at
different KV-cache offsets, query and key).  The tests
that compile are marked ``slow`` (deselect with ``-m "not slow"``); they run by
default.  The declared limits need no compile (and no ``max``).

Bound used for float32 (u = 2**-24; phi = p * omega_j the exact angle; |pair| the
norm of the expected output pair, which the rotation preserves):

* MAX forms omega_j = float32(float64 theta**(-2j/d)): |d omega| <= u omega; p < 2**24
  is exact in float32; the float32 product rounds once: |d phi| <= (2u + u**2) |phi|.
* float32 cos/sin of the rounded angle: <= 2 ulp each (<= 2u absolute per value, 2 values).
* the rotation a*c - b*s in float32: 2 products + 1 sum <= 3*sqrt(2) u |pair|.

  |err| <= |pair| * u * (2.0001 |phi| + 4 + 4.25)  ->  we assert
  |err| <= |pair| * u * (4 |phi| + 16)           (each term doubled: MAX's range
  reduction for |phi| up to 2**20 rad is not documented).

At p ~ 2**20, phi_0 ~ 2**20 rad, so the bound allows |pair| * 0.25 there; the
measured error is ~|pair| * 0.03 (the float32 angle rounding, as in every peer).
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import numpy as np
import pytest

from ropeconf.adapters.max import (TABLE_POSITIONS, MaxRotary, cache_dir, canonical_specs, max_seq_len_for,
                                   prepare_environment, table_key)
from ropeconf.conformance.judge import make_input
from ropeconf.conformance.tolerance import pair_norm
from ropeconf.reference import RopeSpec, apply, inv_freq

U32 = 2.0 ** -24
SPEC = RopeSpec(head_dim=64)  # default RoPE, half layout
THETA = RopeSpec(head_dim=64, rope_theta=500000.0)  # the theta500k variant: the bundle's second table


def _bound(spec: RopeSpec, expected: np.ndarray, positions: np.ndarray) -> np.ndarray:
    """|pair| * u * (4 |phi| + 16) per element (module doc)."""
    omega, _ = inv_freq(spec)
    phi = np.abs(positions[..., None].astype(np.float64) * omega)           # (batch, seq, d/2)
    phi = (np.concatenate([phi, phi], axis=-1) if spec.layout == "half" else np.repeat(phi, 2, axis=-1))[:, None]
    return pair_norm(expected, spec.rotary_dim, spec.layout) * U32 * (4.0 * phi + 16.0)


@pytest.fixture(scope="module")
def compiled():
    pytest.importorskip("max", reason="Modular MAX is not installed (pip install max; see requirements/peers.txt)")
    adapter = MaxRotary()
    adapter.bundle_size = 2  # bundle 0 = [default, theta500k]: 2 layers x 2 layouts in one graph
    assert adapter.availability() is None
    assert [table_key(s) for s in adapter.bundles(64)[0]] == [table_key(SPEC), table_key(THETA)]
    adapter.compiled(SPEC, "float32")  # the one compile of this module
    return adapter


def _check(adapter: MaxRotary, batch: int, heads: int, seq: int, start: int, seed: int,
           spec: RopeSpec = SPEC) -> float:
    pos = np.broadcast_to(start + np.arange(seq, dtype=np.int64), (batch, seq)).copy()
    x = make_input(spec, batch, heads, seq, "float32", seed)
    y = np.asarray(adapter.run(x, pos, spec, dtype="float32"))
    ref = np.asarray(apply(spec, x.astype(np.float64), pos))
    assert y.shape == ref.shape
    err = np.abs(y - ref)
    tol = _bound(spec, ref, pos)
    worst = float(np.max(err / tol))
    assert worst <= 1.0, f"max |err| {err.max():.3g} is {worst:.3g} x the bound (start {start})"
    return float(err.max())


@pytest.mark.slow
def test_default_float32_short_positions(compiled):
    err = _check(compiled, batch=2, heads=3, seq=16, start=0, seed=1)
    assert err < 1e-5  # a few float32 ulps of |x| ~ 4


@pytest.mark.slow
def test_default_float32_long_positions(compiled):
    # the last 16 positions the table covers: 2**20 - 16 .. 2**20 - 1
    _check(compiled, batch=2, heads=2, seq=16, start=TABLE_POSITIONS - 16, seed=2)


@pytest.mark.slow
def test_one_compile_serves_every_shape_and_start(compiled):
    for i, (b, h, s, start) in enumerate([(1, 1, 1, 0), (3, 2, 5, 777), (1, 4, 9, 65536)]):
        _check(compiled, b, h, s, start, seed=10 + i)
    assert len(compiled.compile_seconds) == 1, compiled.compile_seconds


@pytest.mark.slow
@pytest.mark.parametrize("spec", [SPEC.replace(layout="interleaved"), THETA, THETA.replace(layout="interleaved")],
                         ids=["default-interleaved", "theta500k-half", "theta500k-interleaved"])
def test_bundle_serves_each_variant_and_layout_from_its_own_output(compiled, spec):
    # a wrong output index would rotate with the other theta or the other pairing: errors of O(|x|)
    for start in (0, 1000, TABLE_POSITIONS - 16):
        err = _check(compiled, 2, 2, 16, start, seed=20 + start % 7, spec=spec)
        if start == 0:
            assert err < 1e-5
    assert len(compiled.compile_seconds) == 1, compiled.compile_seconds


# ---------------------------------------------------------------------------------- routing (no compile)
def test_canonical_specs_bundle_into_few_graphs():
    from ropeconf.reference.variants import VARIANTS

    a = MaxRotary()
    specs = canonical_specs(64)
    # every variant's canonical spec MAX supports is in a bundle, in both layouts (golden + metamorphic cases)
    wanted = {table_key(v.spec(head_dim=64, rotary_dim=64)) for v in VARIANTS.values()
              if a.why_unsupported(v.spec(head_dim=64, rotary_dim=64), "float32", "cpu") is None}
    assert {table_key(s) for s in specs} == wanted
    graphs = set()
    for s in specs:
        for layout in ("half", "interleaved"):
            members, layouts, index = a.route(s.replace(layout=layout))
            assert layouts == ("half", "interleaved")
            assert table_key(members[index // 2]) == table_key(s) and layouts[index % 2] == layout
            graphs.add(tuple(table_key(m) for m in members))
    assert len(graphs) == -(-len(wanted) // a.bundle_size)
    # longrope's two switches share MAX's one table
    lr = VARIANTS["longrope"].spec(head_dim=64, rotary_dim=64)
    assert a.route(lr)[:2] == a.route(lr.replace(longrope_switch="position"))[:2]


def test_other_specs_get_a_graph_of_their_own():
    a = MaxRotary()
    for spec in (RopeSpec(head_dim=64, rope_theta=77.0), RopeSpec(head_dim=32, rope_theta=77.0, layout="interleaved")):
        assert a.route(spec) == ((spec,), (spec.layout,), 0)
    a.bundle_size = 0
    assert a.route(SPEC) == ((SPEC,), ("half",), 0)


# ---------------------------------------------------------------------------------- no compile
@pytest.mark.parametrize("spec,dtype,device,positions,what", [
    (RopeSpec(head_dim=64, rotary_dim=32), "float32", "cpu", None, "partial rotation"),
    (RopeSpec(rope_type="ntk", factor=4.0), "float32", "cpu", None, "rope_type=ntk"),
    (RopeSpec(xpos=True), "float32", "cpu", None, "xpos"),
    (RopeSpec(axial_axes=2, freqs_for="pixel"), "float32", "cpu", None, "freqs_for=pixel"),
    (RopeSpec(head_dim=12, mrope_section=(2, 2, 2)), "float32", "cpu", None, "mrope_section"),
    (RopeSpec(freqs_for="constant", num_freqs=32), "float32", "cpu", None, "freqs_for=constant"),
    (SPEC, "float64", "cpu", None, "dtype=float64"),
    (SPEC, "float32", "cpu", np.array([[0, 1, 2], [5, 6, 7]]), "arbitrary positions"),
    (SPEC, "float32", "cpu", np.array([[3, 7, 9]]), "arbitrary positions"),
    (SPEC, "float32", "cpu", np.array([[TABLE_POSITIONS - 1, TABLE_POSITIONS]]), "above max_position"),
    (SPEC, "float32", "cpu", np.array([[-2, -1]]), "negative positions"),
    (RopeSpec(rope_type="yarn", factor=8.0, original_max_position_embeddings=4096, attention_factor=1.2),
     "float32", "cpu", None, "yarn attention_factor"),
    (RopeSpec(rope_type="longrope", factor=8.0, original_max_position_embeddings=4096, attention_factor=1.0,
              short_factor=[1.0] * 32, long_factor=[2.0] * 32), "float32", "cpu", None,
     "longrope attention_factor"),
])
def test_declared_unsupported(spec, dtype, device, positions, what):
    why = MaxRotary().why_unsupported(spec, dtype, device, positions)
    assert why is not None and what.split()[0] in why, why


@pytest.mark.parametrize("spec,positions", [
    (SPEC, np.array([[0, 1, 2], [0, 1, 2]])),
    (SPEC, np.array([[100, 101], [100, 101]])),                    # offset: one start for every row
    (SPEC.replace(layout="interleaved"), np.array([[TABLE_POSITIONS - 2, TABLE_POSITIONS - 1]])),
    (RopeSpec(rope_type="linear", factor=4.0), None),
    (RopeSpec(rope_type="dynamic", factor=4.0, original_max_position_embeddings=2048), None),
    (RopeSpec(rope_type="yarn", factor=40.0, original_max_position_embeddings=4096, mscale=0.707,
              mscale_all_dim=1.0), None),
    (RopeSpec(rope_type="llama3", factor=8.0, original_max_position_embeddings=8192, low_freq_factor=1.0,
              high_freq_factor=4.0), None),
])
def test_declared_supported(spec, positions):
    assert MaxRotary().why_unsupported(spec, "float32", "cpu", positions) is None
    assert MaxRotary().why_unsupported(spec, "bfloat16", "cpu", positions) is None


def test_cuda_needs_an_accelerator():
    assert MaxRotary().why_unsupported(SPEC, "float32", "cuda") is None  # declared; availability decides
    why = MaxRotary().device_unavailable("cuda")
    if importlib.util.find_spec("max") is None:
        assert why is not None
    else:
        from max.driver import accelerator_count

        assert (why is None) == (accelerator_count() > 0)


def test_run_refuses_arbitrary_positions_before_compiling():
    a = MaxRotary()
    x = np.zeros((2, 1, 3, 64), dtype=np.float32)
    with pytest.raises(ValueError, match="arbitrary positions"):
        a.run(x, np.array([[0, 1, 2], [4, 5, 6]]), SPEC, dtype="float32")
    assert a.compile_seconds == {}


def test_table_sizes_cover_max_position():
    assert MaxRotary.capabilities.max_position == TABLE_POSITIONS - 1
    assert max_seq_len_for(SPEC) * 2 >= TABLE_POSITIONS                     # 2 * max_seq_len rows
    yarn = RopeSpec(rope_type="yarn", factor=8.0, original_max_position_embeddings=4096)
    assert max_seq_len_for(yarn) >= TABLE_POSITIONS                         # max_seq_len rows only
    big = RopeSpec(rope_type="longrope", factor=2.0, original_max_position_embeddings=2 * TABLE_POSITIONS,
                   short_factor=[1.0] * 32, long_factor=[2.0] * 32)
    assert 2 * max_seq_len_for(big) > big.original_max_position_embeddings  # stitched table needs L0 < rows


def test_compile_cache_kept_out_of_home(monkeypatch, tmp_path):
    monkeypatch.delenv("MODULAR_CACHE_DIR", raising=False)
    monkeypatch.setenv("ROPECONF_CACHE_DIR", str(tmp_path))
    prepare_environment()
    assert os.environ["MODULAR_CACHE_DIR"] == str(tmp_path / "modular")
    assert (tmp_path / "modular").is_dir()
    monkeypatch.delenv("ROPECONF_CACHE_DIR")
    assert not str(cache_dir()).startswith(str(Path.home()))
    # an explicit MODULAR_CACHE_DIR wins
    monkeypatch.setenv("MODULAR_CACHE_DIR", str(tmp_path / "mine"))
    prepare_environment()
    assert os.environ["MODULAR_CACHE_DIR"] == str(tmp_path / "mine")


# ---------------------------------------------------------------------------------- fused path (one compile)
@pytest.fixture(scope="module")
def fused():
    pytest.importorskip("max", reason="Modular MAX is not installed (pip install max; see requirements/peers.txt)")
    from ropeconf.adapters.max import MaxFusedRotary

    adapter = MaxFusedRotary()
    assert adapter.availability() is None
    adapter.compiled_fused(SPEC, "float32")  # the one compile of the fused path
    return adapter


@pytest.mark.slow
@pytest.mark.parametrize("role", ["query", "key"])
def test_fused_ragged_rows_at_their_cache_offsets(fused, role):
    # three requests at different KV-cache offsets, one straddling a 128-token page, one near 2**20
    starts = [5, 126, TABLE_POSITIONS - 16]
    pos = np.array([s + np.arange(6) for s in starts], dtype=np.int64)
    x = make_input(SPEC, 3, 2, 6, "float32", 31)
    assert fused.why_unsupported(SPEC, "float32", "cpu", pos) is None
    y = np.asarray(fused.run(x, pos, SPEC, dtype="float32", role=role))
    ref = np.asarray(apply(SPEC, x.astype(np.float64), pos, role=role))
    err = np.abs(y - ref)
    worst = float(np.max(err / _bound(SPEC, ref, pos)))
    assert worst <= 1.0, f"max |err| {err.max():.3g} is {worst:.3g} x the bound ({role})"
    assert float(err[:2].max()) < 1e-4  # the short offsets: a few float32 ulps


@pytest.mark.slow
def test_fused_prefill_then_decode_reuses_one_compile(fused):
    n = len(fused.compile_seconds)
    for k, (start, seq) in enumerate([(0, 7), (7, 1), (8, 1), (4096, 3)]):
        pos = (start + np.arange(seq, dtype=np.int64))[None]
        x = make_input(SPEC, 1, 3, seq, "float32", 40 + k)
        y = np.asarray(fused.run(x, pos, SPEC, dtype="float32"))
        ref = np.asarray(apply(SPEC, x.astype(np.float64), pos))
        assert np.max(np.abs(y - ref) / _bound(SPEC, ref, pos)) <= 1.0
    assert len(fused.compile_seconds) == n


def test_fused_declares_contiguous_rows_only():
    from ropeconf.adapters.max import MaxFusedRotary

    a = MaxFusedRotary()
    assert a.why_unsupported(SPEC, "float32", "cpu", np.array([[5, 6, 7], [900, 901, 902]])) is None
    assert "start + 0..S-1" in a.why_unsupported(SPEC, "float32", "cpu", np.array([[5, 7, 9]]))
    assert a.why_unsupported(SPEC, "bfloat16", "cpu") is not None
    assert a.capabilities.max_position == TABLE_POSITIONS - 1
