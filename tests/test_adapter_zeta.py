"""zetascale adapter (adapters/zeta.py): loading, mapping, declared limits, the rotate_half breakage.

zetascale lives in its own tox environment (`tox -e zeta`); everything but
``test_unavailable_without_zeta`` runs only there:

    tox -e zeta

(that venv also needs this project importable and its test tools: ``pip install --no-deps -e .``
plus requirements/base.txt and requirements/test.txt).
"""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="torch not installed (zetascale adapter needs a torch venv)")
pytest.importorskip("einops", reason="einops not installed (zeta's rope.py imports it)")

from ropeconf.adapters.zeta import ZetaRotary, load_rope  # noqa: E402
from ropeconf.conformance import registry  # noqa: E402
from ropeconf.conformance.judge import judge, make_input  # noqa: E402
from ropeconf.conformance.tolerance import Precision, angle_magnitude, bound, pair_norm  # noqa: E402
from ropeconf.reference import RopeSpec, apply, cos_sin  # noqa: E402

HAVE_ZETA = importlib.util.find_spec("zeta") is not None
# `pytest.importorskip("zeta")` cannot be used: `import zeta` runs zeta/__init__.py, which fails
# without torchvision & co. even where zetascale is installed (see adapters/zeta.py).
needs_zeta = pytest.mark.skipif(not HAVE_ZETA, reason="zetascale not installed: run in .venv-zeta "
                                                       "(run: tox -e zeta)")
U32 = 2.0 ** -24
LIB_TEXT = r"too many values to unpack \(expected 2\)"


def _pos(start=0, seq=16, batch=2):
    return np.broadcast_to(start + np.arange(seq, dtype=np.int64), (batch, seq)).copy()


def _run(spec, pos, dtype="float32", role="query", seed=0):
    x = make_input(spec, pos.shape[0], 2, pos.shape[1], dtype, seed)
    y = np.asarray(ZetaRotary().run(x, pos, spec, dtype=dtype, role=role), dtype=np.float64)
    return x, y, np.asarray(apply(spec, x.astype(np.float64), pos, role=role))


def test_unavailable_without_zeta():
    why = ZetaRotary().availability()
    if HAVE_ZETA:
        assert why is None
    else:
        assert why is not None and "No module named 'zeta'" in why and "tox -e zeta" in why


@needs_zeta
def test_loaded_from_installed_file_and_version():
    ad = ZetaRotary()
    assert ad.version() == "2.8.8"
    mod = load_rope()
    assert mod.__file__.endswith("zeta/nn/embeddings/rope.py")
    assert hasattr(mod, "RotaryEmbedding") and hasattr(mod, "apply_rotary_pos_emb")


@needs_zeta
@pytest.mark.parametrize("head_dim", [6, 8, 64, 128])
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_rotate_half_failure_surfaces_with_library_text(head_dim, dtype):
    spec = RopeSpec(head_dim=head_dim)
    pos = _pos(seq=8)
    x = make_input(spec, 2, 2, 8, dtype, 0)
    with pytest.raises(ValueError, match=LIB_TEXT) as info:
        ZetaRotary().run(x, pos, spec, dtype=dtype)
    last = info.traceback[-1]
    assert str(last.path).endswith("rope.py") and last.name == "rotate_half"  # raised inside zeta
    r = judge(ZetaRotary(), spec, x, pos, dtype=dtype)
    assert r.outcome == "error" and "too many values to unpack (expected 2)" in r.message
    e = registry.find(registry.load(), "zeta", "2.8.8", {**spec.to_dict(), "xpos": False, "dtype": dtype,
                                                          "device": "cpu"})
    assert e is not None and e.id == "zeta-rotate-half-wrong-axis"


@needs_zeta
def test_rotate_half_at_width_4_is_not_a_rotation():
    mod = load_rope()
    assert mod.rotate_half(torch.tensor([1.0, 2.0, 3.0, 4.0])).tolist() == [-2.0, -4.0, 1.0, 3.0]  # HALF: [-3,-4,1,2]
    spec = RopeSpec(head_dim=4)
    pos = _pos()
    x, y, ref = _run(spec, pos)
    assert np.abs(y - ref).max() > 1.0                                 # a divergence, not an error
    np.testing.assert_allclose(y[:, :, 0], x[:, :, 0], rtol=0, atol=0)  # position 0: sin = 0, exact
    # exactly the source's formula: out = t*cos + [-x1, -x3, x0, x2]*sin with HALF cos/sin
    c, s = (a[:, None] for a in cos_sin(spec, pos))
    x0, x1, x2, x3 = (x[..., i].astype(np.float64) for i in range(4))
    emu = np.stack([x0 * c[..., 0] - x1 * s[..., 0], x1 * c[..., 1] - x3 * s[..., 1],
                    x2 * c[..., 0] + x0 * s[..., 0], x3 * c[..., 1] + x2 * s[..., 1]], axis=-1)
    assert np.abs(y - emu).max() <= 64 * U32 * np.abs(x).max() * 2
    norm_in = np.hypot(x0, x2)
    norm_out = np.hypot(y[..., 0], y[..., 2])
    assert (norm_out / norm_in).max() > 1.2 and (norm_out / norm_in).min() < 0.8  # not norm-preserving


MAPPED = {
    "default": RopeSpec(head_dim=4),
    "theta500k": RopeSpec(head_dim=4, rope_theta=500000.0),
    "linear4": RopeSpec(head_dim=4, rope_type="linear", factor=4.0),
    "ntk4": RopeSpec(head_dim=4, rope_type="ntk", factor=4.0),
    "xpos": RopeSpec(head_dim=4, xpos=True),
    "xpos-base8": RopeSpec(head_dim=4, xpos=True, xpos_scale_base=8.0),
}


@needs_zeta
@pytest.mark.parametrize("role", ["query", "key"])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("name", sorted(MAPPED))
def test_mapping_correct_where_rotate_half_is_right(name, dtype, role):
    """At head_dim 4 output features 1 and 2 pair with the right partner (x3 and x0), so they check the
    frequency, interpolation, NTK base, xPos scale and key-role mapping against the reference.

    Bound 64 u32 |pair| at positions < 16: omega in float32 (pow + division, <= 3 u), p * omega (+1 u),
    |phi| <= 15 rad (omega <= 1): |d phi| <= 60 u; cos/sin and the rotation add a few u.  float64 input
    too: zeta's inv_freq is a float32 buffer, so the angle is float32 for every input dtype."""
    spec = MAPPED[name]
    _, y, ref = _run(spec, _pos(), dtype, role)
    pn = pair_norm(ref, spec.rotary_dim, spec.layout)
    err = np.abs(y - ref)[..., 1:3]
    assert np.all(err <= 64 * U32 * pn[..., 1:3]), err.max()


@needs_zeta
def test_offset_positions_via_right_aligned_freqs():
    """positions start..start+S-1 = forward(start + S), last S rows (features 1, 2; tolerance model)."""
    spec = MAPPED["default"]
    pos = _pos(start=100000)
    x, y, ref = _run(spec, pos)
    from ropeconf.reference import angles

    phi = angle_magnitude(np.asarray(angles(spec, pos)), 4, 4, "half")[:, None]
    tol = bound(ref, np.broadcast_to(phi, ref.shape), 4, "half", Precision.conventional("float32", "float32"))
    assert np.all(np.abs(y - ref)[..., 1:3] <= tol[..., 1:3])
    assert np.abs(y - ref).max() > 1.0


@needs_zeta
def test_xpos_offset_fails_in_library():
    spec = RopeSpec(head_dim=64, xpos=True)
    x = make_input(spec, 1, 1, 8, "float32", 0)
    with pytest.raises(RuntimeError, match=r"size of tensor a \(8\) must match the size of tensor b \(1008\)"):
        ZetaRotary().run(x, _pos(start=1000, seq=8, batch=1), spec, dtype="float32")


@needs_zeta
def test_dim2_zero_division():
    spec = RopeSpec(head_dim=2)
    x = make_input(spec, 1, 1, 4, "float32", 0)
    with pytest.raises(ZeroDivisionError):
        ZetaRotary().run(x, _pos(seq=4, batch=1), spec, dtype="float32")


@needs_zeta
def test_low_precision_output_is_not_cast_back():
    mod = load_rope()
    freqs, scale = mod.RotaryEmbedding(4)(4, "cpu")
    out = mod.apply_rotary_pos_emb(torch.ones(1, 1, 4, 4, dtype=torch.bfloat16), freqs, scale)
    assert out.dtype == torch.float32


UNSUPPORTED = [
    (RopeSpec(head_dim=64, layout="interleaved"), None, "layout=interleaved"),
    (RopeSpec(head_dim=96, rotary_dim=64), None, "partial rotation"),
    (RopeSpec(head_dim=64), np.array([[3, 1, 2]]), "arbitrary positions"),
    (RopeSpec(head_dim=64, rope_type="yarn", factor=8.0, original_max_position_embeddings=4096), None, "yarn"),
    (RopeSpec(head_dim=64, freqs_for="pixel"), None, "freqs_for=pixel"),
    (RopeSpec(head_dim=64, axial_axes=2), None, "axial"),
    (RopeSpec(head_dim=64, mrope_section=(8, 12, 12)), None, "mrope_section"),
    (RopeSpec(head_dim=64, rope_type="linear", factor=0.5), None, "interpolation_factor >= 1"),
    (RopeSpec(head_dim=64, xpos=True, xpos_center=3.0), None, "xpos_center"),
]


@pytest.mark.parametrize("spec,positions,needle", UNSUPPORTED, ids=[u[2] for u in UNSUPPORTED])
def test_unsupported_is_declared(spec, positions, needle):
    why = ZetaRotary().why_unsupported(spec, "float32", "cpu", positions)
    assert why and needle in why


def test_known_entries_load():
    entries = [e for e in registry.load() if e.source == "zeta.toml"]
    assert {e.id for e in entries} >= {"zeta-rotate-half-wrong-axis", "zeta-dim2-zerodivision",
                                       "zeta-xpos-scale-not-sliced"}
    assert all(e.adapter == ("zeta",) and registry.version_in("2.8.8", e.versions) for e in entries)
