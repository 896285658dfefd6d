"""Golden data: reproducible, verified, atomic, small, and independently correct."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from ropeconf.golden_data import corpus

REPO_GOLDEN = Path(corpus.__file__).resolve().parent


@pytest.fixture(scope="module")
def fresh(tmp_path_factory):
    out = tmp_path_factory.mktemp("golden")
    corpus.regenerate(out, jobs=1)
    return out


def _tree_bytes(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.glob("**/*"))
            if p.is_file() and not p.name.endswith(".py") and "__pycache__" not in p.parts}


def test_regeneration_is_bit_for_bit_reproducible(fresh, tmp_path):
    corpus.regenerate(tmp_path, jobs=2)  # also: parallel == serial
    assert _tree_bytes(fresh) == _tree_bytes(tmp_path)


def test_committed_corpus_matches_regeneration(fresh):
    # the corpus in git is exactly what the generator produces (same platform libm)
    committed = _tree_bytes(REPO_GOLDEN)
    assert committed == _tree_bytes(fresh)


def test_committed_corpus_verifies_and_recomputes():
    assert corpus.verify(REPO_GOLDEN) == []
    assert corpus.verify(REPO_GOLDEN, recompute=True) == []


def test_size_limit_and_format():
    total = sum(p.stat().st_size for p in (REPO_GOLDEN / "cases").glob("*.npz"))
    assert total <= 30 * 2 ** 20
    man = corpus.read_manifest(REPO_GOLDEN)
    assert man["schema_version"] == corpus.SCHEMA_VERSION and man["corpus_version"]
    case = man["cases"][0]
    with np.load(REPO_GOLDEN / case["file"], allow_pickle=False) as z:
        for dt in corpus.INPUT_DTYPES:
            assert f"x_{dt}" in z.files and f"expected_{dt}" in z.files
            assert z[f"expected_{dt}"].dtype == np.float64
    for key in ("spec", "shapes", "seed", "sha256", "positions_kind"):
        assert key in case
    assert man["reference_version"]


def test_grid_covers_every_variant_layout_dims_and_range():
    from ropeconf.reference.variants import VARIANTS

    man = corpus.read_manifest(REPO_GOLDEN)
    seen = {(c["variant"], c["spec"]["layout"], c["spec"]["head_dim"], c["positions_kind"]) for c in man["cases"]}
    for v in VARIANTS:
        for lay in corpus.LAYOUTS:
            for head, _ in corpus.DIMS:
                for kind in ("short", "long", "scattered"):
                    assert (v, lay, head, kind) in seen
    longest = max(int(np.max(corpus.load_case(REPO_GOLDEN, c)["positions"])) for c in man["cases"]
                  if c["positions_kind"] == "long")
    assert longest == 2 ** 20 - 1
    thresholds = [c for c in man["cases"] if c["positions_kind"] in ("below", "above")]
    assert {c["variant"] for c in thresholds} >= {"dynamic", "longrope", "longrope-position"}


def test_inputs_are_the_rounded_float64_inputs():
    import ml_dtypes

    man = corpus.read_manifest(REPO_GOLDEN)
    arrays = corpus.load_case(REPO_GOLDEN, man["cases"][3])
    x64 = arrays["x_float64"]
    assert np.array_equal(arrays["x_float32"], x64.astype(np.float32))
    assert np.array_equal(arrays["x_float16"], x64.astype(np.float16))
    assert np.array_equal(corpus.input_array(arrays, "bfloat16").astype(np.float64),
                          x64.astype(ml_dtypes.bfloat16).astype(np.float64))


def _copy(tmp_path: Path) -> Path:
    dst = tmp_path / "g"
    shutil.copytree(REPO_GOLDEN, dst, ignore=shutil.ignore_patterns("*.py", "__pycache__"))
    return dst


def test_verify_names_bad_missing_and_unexpected_files(tmp_path):
    g = _copy(tmp_path)
    man = corpus.read_manifest(g)
    bad, gone = man["cases"][0]["file"], man["cases"][1]["file"]
    data = bytearray((g / bad).read_bytes())
    data[-9] ^= 1
    (g / bad).write_bytes(bytes(data))
    (g / gone).unlink()
    (g / "cases" / "intruder.npz").write_bytes(b"x")
    problems = corpus.verify(g)
    assert f"bad hash: {bad}" in problems
    assert f"missing: {gone}" in problems
    assert "unexpected: cases/intruder.npz" in problems
    r = subprocess.run([sys.executable, "-m", "ropeconf.conformance.cli", "golden", "verify", "--path", str(g)],
                       capture_output=True, text=True)
    assert r.returncode == 1 and bad in r.stdout and gone in r.stdout and "intruder" in r.stdout


def test_verify_rejects_unknown_schema(tmp_path):
    g = _copy(tmp_path)
    man = json.loads((g / "manifest.json").read_text())
    man["schema_version"] = 99
    (g / "manifest.json").write_text(json.dumps(man))
    assert any("schema_version" in p for p in corpus.verify(g))


def test_recompute_catches_a_wrong_expected_value_with_a_valid_hash(tmp_path):
    g = _copy(tmp_path)
    man = corpus.read_manifest(g)
    case = man["cases"][5]
    arrays = corpus.load_case(g, case)
    arrays["expected_float32"] = arrays["expected_float32"] * (1 + 2 ** -40)
    blob = corpus._npz_bytes(arrays)
    (g / case["file"]).write_bytes(blob)
    case["sha256"] = corpus._sha256(blob)
    (g / "manifest.json").write_text(json.dumps(man))
    assert corpus.verify(g) == []
    assert any("expected_float32" in p for p in corpus.verify(g, recompute=True))


def test_interrupted_regeneration_leaves_the_old_corpus(tmp_path, monkeypatch):
    g = _copy(tmp_path)
    before = _tree_bytes(g)
    calls = {"n": 0}
    real = corpus.compute_case

    def flaky(case):
        calls["n"] += 1
        if calls["n"] == 50:
            raise KeyboardInterrupt
        return real(case)

    monkeypatch.setattr(corpus, "compute_case", flaky)
    with pytest.raises(KeyboardInterrupt):
        corpus.regenerate(g, jobs=1)
    assert _tree_bytes(g) == before
    assert not list(g.glob(".golden-tmp-*"))


def test_corpus_agrees_with_the_mpmath_oracle():
    """Every variant's stored expected outputs, checked against the independent oracle (tests/oracle.py)."""
    from mpmath import mpf
    from oracle import oracle_apply

    from ropeconf.reference import RopeSpec

    man = corpus.read_manifest(REPO_GOLDEN)
    picked = {}
    for c in man["cases"]:
        if c["positions_kind"] in ("long", "above", "scattered"):
            picked.setdefault((c["variant"], c["spec"]["layout"]), c)
    assert len(picked) >= 2 * 18
    for case in picked.values():
        spec = RopeSpec.from_dict(case["spec"])
        arrays = corpus.load_case(REPO_GOLDEN, case)
        pos = arrays["positions"]
        seq_len = int(pos.max()) + 1
        for dt in ("float64", "bfloat16"):
            x = corpus.input_array(arrays, dt).astype(np.float64)
            y = arrays[f"expected_{dt}"]
            for b, s in ((0, 0), (1, pos.shape[1] - 1)):
                want = oracle_apply(spec, x[b, 0, s].tolist(), pos[b, s].tolist(), seq_len=seq_len)
                scale = max(float(abs(v)) for v in want) or 1.0
                err = max(float(abs(mpf(float(g)) - w)) for g, w in zip(y[b, 0, s], want))
                assert err <= 16 * 2.0 ** -53 * scale, (case["id"], dt, err / (2.0 ** -53 * scale))
