"""The golden-data corpus: the case grid (cases as code), its writer and its verifier.

Grid (docs/golden-data.md): every variant record in
``ropeconf.reference.variants.VARIANTS`` x layout (half, interleaved) x dims
((head 64, rotary 64), (head 96, rotary 64): partial, non-power-of-two head)
x position range (short, around the variant's threshold, long up to 2**20,
scattered per batch row).  Inputs are seeded normal draws, stored in float64
and rounded to float32/float16/bfloat16; the expected output for each input
dtype is the float64 reference applied to that dtype's rounded input.

Files: ``cases/<id>.npz`` (uncompressed, fixed zip timestamps, so regeneration
is bit-for-bit reproducible) and ``manifest.json`` with schema and corpus
versions, per-case spec/shapes/seed/reference version and every file's SHA-256.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import stat
import tempfile
import zipfile
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from ropeconf.reference.dtypes import DTYPES, round_to  # noqa: F401  (round_to: public re-export)

SCHEMA_VERSION = 2        # 2: the manifest declares case_count; verify checks every file's structure
CORPUS_VERSION = "1.2.0"  # 1.1.0: llama3 specs carry low/high_freq_factor; 1.2.0: axial2d-lang, streams far apart
_SEED_SALT = 1            # part of every case's RNG seed: the arrays depend on it, never on SCHEMA_VERSION
DEFAULT_DIR = Path(__file__).resolve().parent
INPUT_DTYPES = DTYPES
BATCH, HEADS, SEQ = 2, 1, 8
DIMS = ((64, 64), (96, 64))
LAYOUTS = ("half", "interleaved")
LONG = 2 ** 20
_ZIP_TIME = (1980, 1, 1, 0, 0, 0)


def _positions(kind: str, variant, spec, rng: np.random.Generator) -> np.ndarray | None:
    """int64 positions (BATCH, SEQ[, streams]) for a range kind, or None when n/a."""
    seq = np.arange(SEQ, dtype=np.int64)
    th = variant.thresholds(spec)
    top = min(LONG, variant.max_position)
    if kind == "short":
        p = np.broadcast_to(seq, (BATCH, SEQ))
    elif kind == "below":          # max position + 1 == threshold: still "short" regime
        if not th:
            return None
        p = np.broadcast_to(th[0] - SEQ + seq, (BATCH, SEQ))
    elif kind == "above":          # max position + 1 == threshold + 1: first "long" regime
        if not th:
            return None
        p = np.broadcast_to(th[0] - SEQ + 1 + seq, (BATCH, SEQ))
    elif kind == "long":
        p = np.broadcast_to(top - SEQ + seq, (BATCH, SEQ))
    elif kind == "scattered":      # different, unsorted positions per batch row
        p = rng.integers(0, top, size=(BATCH, SEQ), dtype=np.int64)
    elif kind == "far":            # streams far apart: the first near the top, the others near 0
        if variant.streams == 1:
            return None
        base = top - SEQ + np.arange(SEQ, dtype=np.int64)
        return np.stack([np.broadcast_to(base, (BATCH, SEQ))] +
                        [np.broadcast_to(np.arange(SEQ, dtype=np.int64) * s, (BATCH, SEQ))
                         for s in range(1, variant.streams)], axis=-1).astype(np.int64)
    else:
        raise ValueError(kind)
    p = np.array(p, dtype=np.int64)
    if variant.streams > 1:        # (t, h, w)-like coordinates: distinct per stream
        p = np.stack([p // (s + 1) + s for s in range(variant.streams)], axis=-1)
    return p


POSITION_KINDS = ("short", "below", "above", "long", "scattered")
# Kinds added later draw their seeds from their own counter, so that the earlier cases keep theirs.
LATER_KINDS = {"far": 10 ** 6}


def case_grid() -> list[dict[str, Any]]:
    """The fixed, documented list of cases (id, variant, spec dict, seed, position kind)."""
    from ropeconf.reference.variants import VARIANTS

    cases = []
    seed = 0
    later = dict(LATER_KINDS)
    for vname, variant in VARIANTS.items():
        for head, rot in DIMS:
            for layout in LAYOUTS:
                spec = variant.spec(head_dim=head, rotary_dim=rot, layout=layout)
                for kind in POSITION_KINDS + tuple(LATER_KINDS):
                    if kind in later:
                        later[kind] += 1
                        seed_k = later[kind]
                    else:
                        seed += 1
                        seed_k = seed
                    rng = np.random.default_rng([_SEED_SALT, seed_k])
                    pos = _positions(kind, variant, spec, rng)
                    if pos is None:
                        continue
                    cid = f"{vname}__{layout}__d{head}r{rot}__{kind}"
                    cases.append({"id": cid, "variant": vname, "spec": spec.to_dict(), "seed": seed_k,
                                  "positions_kind": kind, "positions": pos})
    return cases


def _bf16_bits(x: np.ndarray) -> np.ndarray:
    import ml_dtypes

    return x.astype(ml_dtypes.bfloat16).view(np.uint16)


def compute_case(case: dict[str, Any]) -> dict[str, np.ndarray]:
    """All arrays of one case, from the reference."""
    from ropeconf.reference import RopeSpec, apply, cos_sin, xpos_scale

    spec = RopeSpec.from_dict(case["spec"])
    rng = np.random.default_rng([_SEED_SALT, case["seed"], 7])
    x = rng.standard_normal((BATCH, HEADS, SEQ, spec.head_dim))
    pos = case["positions"]
    arrays: dict[str, np.ndarray] = {"positions": pos}
    c, s = cos_sin(spec, pos)
    arrays["cos"], arrays["sin"] = c, s
    if spec.xpos:
        arrays["xpos_scale_query"] = xpos_scale(spec, pos, role="query")
    for dt in INPUT_DTYPES:
        xr = round_to(x, dt)
        arrays[f"x_{dt}"] = xr.view(np.uint16) if dt == "bfloat16" else xr
        arrays[f"expected_{dt}"] = apply(spec, xr.astype(np.float64), pos)
        if spec.xpos:
            arrays[f"expected_key_{dt}"] = apply(spec, xr.astype(np.float64), pos, role="key")
    return arrays


def _npz_bytes(arrays: dict[str, np.ndarray]) -> bytes:
    """A deterministic .npz: stored (no compression), sorted names, fixed timestamps."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_STORED) as zf:
        for name in sorted(arrays):
            info = zipfile.ZipInfo(f"{name}.npy", date_time=_ZIP_TIME)
            info.external_attr = 0o644 << 16
            arr = io.BytesIO()
            np.lib.format.write_array(arr, np.ascontiguousarray(arrays[name]), allow_pickle=False)
            zf.writestr(info, arr.getvalue())
    return buf.getvalue()


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _manifest(entries: list[dict[str, Any]]) -> dict[str, Any]:
    from ropeconf.reference import REFERENCE_VERSION

    return {
        "schema_version": SCHEMA_VERSION,
        "corpus_version": CORPUS_VERSION,
        "reference_version": REFERENCE_VERSION,
        "generator": "ropeconf golden regenerate",
        "layout": {"x": "(batch, heads, seq, head_dim)", "positions": "(batch, seq[, streams]) int64",
                   "bfloat16": "stored as uint16 bit patterns", "expected": "float64"},
        "input_dtypes": list(INPUT_DTYPES),
        "case_count": len(entries),
        "cases": entries,
    }


def _dump_json(obj: Any) -> bytes:
    return (json.dumps(obj, indent=1, sort_keys=True) + "\n").encode()


def build(jobs: int = 1) -> tuple[dict[str, bytes], bytes]:
    """Every case file's bytes and the manifest bytes (nothing written)."""
    cases = case_grid()
    if jobs > 1:
        from concurrent.futures import ProcessPoolExecutor

        with ProcessPoolExecutor(jobs) as ex:
            blobs = list(ex.map(_case_blob, cases, chunksize=8))
    else:
        blobs = [_case_blob(c) for c in cases]
    files, entries = {}, []
    for case, blob in zip(cases, blobs):
        fname = f"cases/{case['id']}.npz"
        files[fname] = blob
        entries.append({"id": case["id"], "variant": case["variant"], "file": fname, "spec": case["spec"],
                        "seed": case["seed"], "positions_kind": case["positions_kind"],
                        "shapes": {"x": [BATCH, HEADS, SEQ, case["spec"]["head_dim"]],
                                   "positions": list(case["positions"].shape)},
                        "sha256": _sha256(blob)})
    return files, _dump_json(_manifest(entries))


def _case_blob(case: dict[str, Any]) -> bytes:
    return _npz_bytes(compute_case(case))


def regenerate(out: str | os.PathLike | None = None, jobs: int = 1) -> Path:
    """Write the corpus: build it in a temp dir beside ``out``, then swap it in.

    The swap is three renames (old ``cases/`` aside, new ``cases/`` in, new
    ``manifest.json`` over the old one); :func:`recover` completes or undoes a swap
    that was interrupted, and runs first here, in :func:`verify` and in
    :func:`read_manifest`, so an interrupted regeneration never leaves a corpus
    without ``cases/`` or with a manifest that does not describe them.  Stale temp
    dirs of earlier interrupted runs are removed.  Only ``cases/`` and
    ``manifest.json`` are replaced; other files in ``out`` (this module) stay.
    """
    out = Path(out) if out else DEFAULT_DIR
    out.mkdir(parents=True, exist_ok=True)
    recover(out)
    files, manifest = build(jobs)
    tmp = Path(tempfile.mkdtemp(prefix=".golden-tmp-", dir=out))
    try:
        for name, blob in files.items():
            p = tmp / name
            p.parent.mkdir(parents=True, exist_ok=True)
            p.write_bytes(blob)
        (tmp / "manifest.json").write_bytes(manifest)
        old = out / ".golden-old"
        (tmp / _SWAP).write_text("swapping")       # marks the temp dir as the one the swap takes from
        if (out / "cases").exists():
            os.rename(out / "cases", old)
        os.rename(tmp / "cases", out / "cases")
        os.replace(tmp / "manifest.json", out / "manifest.json")
        if old.exists():
            shutil.rmtree(old)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


_SWAP = "SWAP-IN-PROGRESS"


def recover(path: str | os.PathLike | None = None) -> list[str]:
    """Complete or undo an interrupted :func:`regenerate` swap; remove stale temp dirs.  Returns what it did."""
    path = Path(path) if path else DEFAULT_DIR
    done: list[str] = []
    old = path / ".golden-old"
    swaps = sorted(p for p in path.glob(".golden-tmp-*") if (p / _SWAP).exists())
    if old.exists():
        if not (path / "cases").exists():
            os.rename(old, path / "cases")   # stopped after moving the old cases aside: put them back
            done.append("restored the previous cases/ (the swap had stopped half-way)")
        else:
            pending = next((s / "manifest.json" for s in swaps if (s / "manifest.json").exists()), None)
            if pending is not None:          # new cases in place, their manifest not yet: move it in
                os.replace(pending, path / "manifest.json")
                done.append("completed an interrupted swap (moved the new manifest.json in)")
            shutil.rmtree(old, ignore_errors=True)
    for stale in path.glob(".golden-tmp-*"):
        shutil.rmtree(stale, ignore_errors=True)
        done.append(f"removed stale {stale.name}")
    return done


def read_manifest(path: str | os.PathLike | None = None) -> dict[str, Any]:
    path = Path(path) if path else DEFAULT_DIR
    with open(path / "manifest.json", "rb") as f:
        return json.load(f)


def verify(path: str | os.PathLike | None = None, recompute: bool = False) -> list[str]:
    """Problems found (empty when the corpus is intact).  Nothing in the manifest is trusted further than
    checked: schema and declared case count, every case's fields and spec, file paths (relative, inside
    ``cases/``, regular files), SHA-256, and each npz's structure (opened with ``allow_pickle=False``:
    the expected array names, dtypes and shapes for its spec).  No file is left unlisted.

    With ``recompute`` every case is also recomputed from the reference; stored and
    recomputed arrays must agree to 4 ulp of the pair norm (exact on the
    platform that generated them; libm's last bit may differ elsewhere).
    """
    path = Path(path) if path else DEFAULT_DIR
    if (path / ".golden-old").exists() or any(path.glob(".golden-tmp-*")):
        return [f"an interrupted regeneration left {path}/.golden-old or .golden-tmp-*: run "
                f"`ropeconf golden regenerate` (it recovers) before using this corpus"]
    try:
        man = read_manifest(path)
    except FileNotFoundError:
        return [f"missing: {path / 'manifest.json'}"]
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        return [f"bad manifest.json: {e}"]
    if not isinstance(man, dict):
        return ["bad manifest.json: not a JSON object"]
    problems: list[str] = []
    if man.get("schema_version") != SCHEMA_VERSION:
        problems.append(f"schema_version {man.get('schema_version')!r} != supported {SCHEMA_VERSION}")
    for key in ("corpus_version", "reference_version", "cases", "case_count"):
        if key not in man:
            problems.append(f"manifest.json lacks {key!r}")
    cases = man.get("cases")
    if not isinstance(cases, list) or not cases:
        return problems + ["manifest.json lists no cases: an empty corpus checks nothing"]
    if man.get("case_count") != len(cases):
        problems.append(f"manifest.json declares case_count={man.get('case_count')!r} but lists {len(cases)} cases")
    cases_dir = (path / "cases").resolve()
    listed: dict[str, dict] = {}
    for i, case in enumerate(cases):
        bad = _case_entry_problem(case)
        if bad:
            problems.append(f"manifest case #{i}: {bad}")
            continue
        f = case["file"]
        target = (path / f).resolve()
        if Path(f).is_absolute() or ".." in Path(f).parts or cases_dir not in target.parents:
            problems.append(f"manifest case {case['id']}: file {f!r} is not a relative path inside cases/")
            continue
        if f in listed:
            problems.append(f"manifest case {case['id']}: file {f!r} listed twice")
            continue
        listed[f] = case
    ids = [c.get("id") for c in cases if isinstance(c, dict)]
    if len(set(ids)) != len(ids):
        problems.append("manifest.json repeats case ids")
    on_disk = {p.relative_to(path).as_posix() for p in (path / "cases").glob("**/*") if not p.is_dir()} \
        if (path / "cases").is_dir() else set()
    for f in sorted(on_disk - set(listed)):
        problems.append(f"unexpected: {f}")
    for f, case in sorted(listed.items()):
        fp = path / f
        try:
            st = os.lstat(fp)
        except FileNotFoundError:
            problems.append(f"missing: {f}")
            continue
        if not stat.S_ISREG(st.st_mode):
            problems.append(f"not a regular file: {f}")
            continue
        if _sha256(fp.read_bytes()) != case["sha256"]:
            problems.append(f"bad hash: {f}")
            continue
        try:
            arrays = load_case(path, case)
        except Exception as e:  # noqa: BLE001 - a file that passes its hash but does not load is a problem
            problems.append(f"unreadable: {f}: {type(e).__name__}: {e}")
            continue
        problems += [f"{f}: {p}" for p in _structure_problems(case, arrays)]
        if recompute:
            problems += _recompare(case, arrays)
    return problems


def _case_entry_problem(case: Any) -> str | None:
    from ropeconf.reference import RopeSpec
    from ropeconf.reference.variants import VARIANTS

    if not isinstance(case, dict):
        return "not an object"
    missing = [k for k in ("id", "variant", "file", "spec", "seed", "shapes", "sha256") if k not in case]
    if missing:
        return f"lacks {missing}"
    if not isinstance(case["file"], str) or not isinstance(case["sha256"], str):
        return "file and sha256 must be strings"
    if case["variant"] not in VARIANTS:
        return f"unknown variant {case['variant']!r}"
    try:
        RopeSpec.from_dict(case["spec"])
    except (TypeError, ValueError) as e:
        return f"invalid spec: {e}"
    shapes = case["shapes"]
    if not isinstance(shapes, dict) or not all(isinstance(shapes.get(k), list) for k in ("x", "positions")):
        return "shapes must give x and positions"
    return None


def expected_arrays(case: dict[str, Any]) -> dict[str, tuple[str, tuple[int, ...]]]:
    """Name -> (dtype, shape) of every array a case's npz must hold (and nothing else)."""
    from ropeconf.reference import RopeSpec

    spec = RopeSpec.from_dict(case["spec"])
    x, pos = tuple(case["shapes"]["x"]), tuple(case["shapes"]["positions"])
    table = (pos[:-1] if spec.n_streams > 1 else pos) + (spec.n_pairs,)
    out = {"positions": ("int64", pos), "cos": ("float64", table), "sin": ("float64", table)}
    for dt in INPUT_DTYPES:
        out[f"x_{dt}"] = ("uint16" if dt == "bfloat16" else dt, x)
        out[f"expected_{dt}"] = ("float64", x)
        if spec.xpos:
            out[f"expected_key_{dt}"] = ("float64", x)
    if spec.xpos:
        out["xpos_scale_query"] = ("float64", table)
    return out


def _structure_problems(case: dict[str, Any], arrays: dict[str, np.ndarray]) -> list[str]:
    want = expected_arrays(case)
    out = [f"lacks array {k}" for k in sorted(set(want) - set(arrays))]
    out += [f"unexpected array {k}" for k in sorted(set(arrays) - set(want))]
    for k in sorted(set(want) & set(arrays)):
        dt, shape = want[k]
        if arrays[k].dtype != np.dtype(dt) or tuple(arrays[k].shape) != shape:
            out.append(f"array {k} is {arrays[k].dtype}{list(arrays[k].shape)}, expected {dt}{list(shape)}")
    return out


def _recompare(case: dict[str, Any], stored: dict[str, np.ndarray]) -> list[str]:
    fresh = compute_case({**case, "positions": stored["positions"]})
    out = []
    for name, arr in fresh.items():
        old = stored.get(name)
        if old is None:
            out.append(f"recompute: {case['file']} lacks array {name}")
            continue
        a, b = np.asarray(arr, dtype=np.float64), np.asarray(old, dtype=np.float64)
        if name.startswith("x_") or name == "positions":
            ok = np.array_equal(np.asarray(arr), np.asarray(old))
        else:
            ok = a.shape == b.shape and bool(np.all(np.abs(a - b) <= 4 * 2.0 ** -52 * np.maximum(1.0, np.abs(b))))
        if not ok:
            out.append(f"recompute mismatch: {case['file']} array {name}")
    return out


def load_case(path: str | os.PathLike | None, case: dict[str, Any]) -> dict[str, np.ndarray]:
    """The arrays of one case (``allow_pickle=False``; its file must lie inside ``cases/``)."""
    path = Path(path) if path else DEFAULT_DIR
    f = Path(case["file"])
    if f.is_absolute() or ".." in f.parts or (path / "cases").resolve() not in (path / f).resolve().parents:
        raise ValueError(f"golden case file {case['file']!r} is not a relative path inside cases/")
    with np.load(path / f, allow_pickle=False) as z:
        return {k: z[k] for k in z.files}


def input_array(arrays: dict[str, np.ndarray], dtype: str) -> np.ndarray:
    """The stored input in ``dtype`` (bfloat16 rebuilt from its bit pattern)."""
    x = arrays[f"x_{dtype}"]
    if dtype == "bfloat16":
        import ml_dtypes

        return x.view(ml_dtypes.bfloat16)
    return x


def iter_cases(path: str | os.PathLike | None = None) -> Iterator[tuple[dict[str, Any], dict[str, np.ndarray]]]:
    man = read_manifest(path)
    for case in man["cases"]:
        yield case, load_case(path, case)
