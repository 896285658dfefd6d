"""Offline judging: ``ropeconf judge`` for an implementation that cannot run as a process under the suite.

The implementer exports a golden case's inputs (``--export DIR``: ``x.npy``,
``positions.npy``, ``spec.json``, ``case.json``), computes the output with their
own code, and hands back the output file (``--output out.npy``); it is judged
against the case's stored float64 expected output under the same tolerance model
and with the same outcomes as ``ropeconf run`` (docs/protocol.md).  The files
follow the exec protocol's conventions (``conformance/protocol.py``): little-endian
version-1.0 ``.npy``, bfloat16 as uint16 bits.

Exit codes as ``ropeconf run`` (``outcome.EXIT_*``): 0 conforms; 1 diverges, error
(the output is missing, unreadable, of another shape or dtype) or unjudgeable;
2 usage (an unknown case id, a corpus that fails its hash, bad options).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np

from ropeconf.reference import FREQS_FOR, ROPE_TYPES, RopeSpec
from ropeconf.reference.dtypes import DTYPES

from .adapter import Adapter, Capabilities, Numerics
from .outcome import EXIT_CODES, EXIT_FAIL, EXIT_OK, EXIT_USAGE, Outcome
from .protocol import read_array, write_array, write_case
from .results import CaseResult


class OfflineError(ValueError):
    """A usage problem of ``ropeconf judge`` (exit 2): unknown case, corpus damaged, bad options."""


def add_parser(sub: Any) -> None:
    j = sub.add_parser("judge", help="offline: export a golden case's inputs, or judge an output file computed "
                                     "from them (docs/protocol.md)")
    j.add_argument("--golden", required=True, metavar="CASE_ID",
                   help="golden case id (golden_data/manifest.json, e.g. default__half__d64r64__long)")
    act = j.add_mutually_exclusive_group(required=True)
    act.add_argument("--export", metavar="DIR",
                     help="write the case's inputs to DIR: x.npy, positions.npy, spec.json, case.json")
    act.add_argument("--output", metavar="NPY", help="the output your implementation computed (.npy) to judge")
    j.add_argument("--dtype", default="float32", choices=DTYPES,
                   help="dtype of the input and output (default float32; bfloat16 as uint16 bits)")
    j.add_argument("--role", default="query", choices=("query", "key"),
                   help="query or key (differ only for xPos cases)")
    j.add_argument("--golden-dir", metavar="DIR", help="the corpus (default: the one in the package)")
    for name, what in (("angle", "the dtype your angles are formed in"),
                       ("compute", "the dtype your cos/sin are rounded to"),
                       ("output", "the dtype your output is in, if not --dtype")):
        j.add_argument(f"--{name}-dtype", choices=DTYPES, help=f"{what} (docs/tolerance.md; default conventional)")
    j.add_argument("--json", metavar="PATH", help="write the judged case as JSON")


def find_case(case_id: str, golden_dir: str | None = None) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """The manifest entry and arrays of one golden case, its file checked against the manifest's SHA-256."""
    from ropeconf.golden_data import corpus

    try:
        man = corpus.read_manifest(golden_dir)
    except (OSError, ValueError) as e:
        raise OfflineError(f"cannot read the golden manifest: {e}") from None
    entry = next((c for c in man.get("cases", []) if isinstance(c, dict) and c.get("id") == case_id), None)
    if entry is None:
        near = sorted(c["id"] for c in man.get("cases", []) if case_id.split("__")[0] in c.get("id", ""))[:8]
        raise OfflineError(f"--golden: no golden case {case_id!r} (ids are listed in golden_data/manifest.json"
                           + (f"; e.g. {', '.join(near)}" if near else "") + ")")
    path = Path(golden_dir) if golden_dir else corpus.DEFAULT_DIR
    try:
        arrays = corpus.load_case(path, entry)
        blob = (path / entry["file"]).read_bytes()
    except (OSError, ValueError) as e:
        raise OfflineError(f"golden case {case_id}: {e}") from None
    if hashlib.sha256(blob).hexdigest() != entry.get("sha256"):
        raise OfflineError(f"golden case {case_id}: {entry['file']} does not match its SHA-256 in the manifest "
                           "(`ropeconf golden verify`)")
    entry = {**entry, "corpus_version": man.get("corpus_version")}
    return entry, arrays


def expected_key(spec: RopeSpec, dtype: str, role: str) -> str:
    """The stored expected array of a role: xPos cases store the key's; for any other spec both roles agree."""
    return f"expected_key_{dtype}" if role == "key" and spec.xpos else f"expected_{dtype}"


def export_case(case_id: str, directory: str, dtype: str = "float32", role: str = "query",
                golden_dir: str | None = None) -> list[Path]:
    """Write the inputs of a golden case for an implementation to read; returns the files written."""
    from ropeconf.golden_data.corpus import input_array

    entry, arrays = find_case(case_id, golden_dir)
    spec = RopeSpec.from_dict(entry["spec"])
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    paths = write_case(d, input_array(arrays, dtype), arrays["positions"], spec, dtype)
    meta = {"id": case_id, "variant": entry["variant"], "dtype": dtype, "role": role, "device": "cpu",
            "corpus_version": entry.get("corpus_version"), "positions_kind": entry.get("positions_kind"),
            "x": {"file": "x.npy", "npy_dtype": np.dtype("<u2").str if dtype == "bfloat16" else
                  np.dtype(dtype).newbyteorder("<").str, "shape": list(arrays[f"x_{dtype}"].shape),
                  "bfloat16": "uint16 bit patterns" if dtype == "bfloat16" else None},
            "positions": {"file": "positions.npy", "npy_dtype": "<i8", "shape": list(arrays["positions"].shape)},
            "spec": "spec.json (RopeSpec.to_full_dict(): every key of its rope_type, defaults filled in)",
            "output": {"file": "out.npy", "shape": list(arrays[f"x_{dtype}"].shape),
                       "npy_dtype": "<u2 (bfloat16 bits)" if dtype == "bfloat16" else
                       np.dtype(dtype).newbyteorder("<").str},
            "judge": f"ropeconf judge --golden {case_id} --dtype {dtype} --role {role} --output {d / 'out.npy'}"}
    (d / "case.json").write_text(json.dumps(meta, indent=1) + "\n", encoding="utf-8")
    return [paths["x"], paths["positions"], paths["spec"], d / "case.json"]


class OutputFile(Adapter):
    """The 'adapter' of an offline judgement: its output is a file already computed (read here, checked by
    the same judge as every adapter's output)."""

    capabilities = Capabilities(rope_types=tuple(ROPE_TYPES), layouts=("half", "interleaved"), dtypes=DTYPES,
                                freqs_for=tuple(FREQS_FOR), partial=True, xpos=True, axial=True, mrope=True)

    def __init__(self, path: str, precision: Numerics):
        self.path, self.precision = path, precision
        self.name = f"file:{path}"
        self.distribution = "offline"

    def version(self) -> str:
        return "-"

    def call(self, x, positions, spec, *, dtype, device="cpu", role="query"):
        read_as = self.precision.output_dtype or dtype
        try:
            return read_array(self.path, read_as)
        except FileNotFoundError:
            raise FileNotFoundError(f"no output file {self.path}") from None
        except (OSError, ValueError) as e:
            raise ValueError(f"{self.path} is not a readable .npy: {e}") from None


def judge_output(case_id: str, output: str, dtype: str = "float32", role: str = "query",
                 golden_dir: str | None = None, precision: Numerics | None = None) -> CaseResult:
    """Judge an output file computed from a golden case's inputs (outcome as for any adapter's case)."""
    from ropeconf.golden_data.corpus import input_array

    from .judge import judge

    entry, arrays = find_case(case_id, golden_dir)
    spec = RopeSpec.from_dict(entry["spec"])
    adapter = OutputFile(output, precision or Numerics())
    return judge(adapter, spec, input_array(arrays, dtype), arrays["positions"], dtype=dtype, device="cpu",
                 role=role, variant=entry["variant"], source="golden", case_id=case_id,
                 expected=arrays[expected_key(spec, dtype, role)])


def cmd_judge(args: argparse.Namespace) -> int:
    if args.json:
        from .report import check_output_path

        check_output_path(args.json)  # before judging: a typo is a usage error (exit 2)
    try:
        if args.export:
            files = export_case(args.golden, args.export, args.dtype, args.role, args.golden_dir)
            print(f"wrote {', '.join(str(f) for f in files)}")
            print(f"compute {Path(args.export) / 'out.npy'} from them, then: ropeconf judge --golden {args.golden} "
                  f"--dtype {args.dtype} --role {args.role} --output {Path(args.export) / 'out.npy'}")
            return EXIT_OK
        precision = Numerics(angle_dtype=args.angle_dtype, compute_dtype=args.compute_dtype,
                             output_dtype=args.output_dtype)
        r = judge_output(args.golden, args.output, args.dtype, args.role, args.golden_dir, precision)
    except OfflineError as e:
        print(f"ropeconf judge: error: {e}", file=sys.stderr)
        return EXIT_USAGE
    d = r.to_dict()
    shown = {k: d.get(k) for k in ("case_id", "dtype", "role", "outcome", "max_ratio", "max_abs_error", "message",
                                   "worst")}
    print(json.dumps(shown, indent=1, default=str))
    if args.json:
        from .report import write_json

        write_json({"adapters": [], "judge": d}, args.json)
    code = EXIT_FAIL if Outcome.of(r.outcome).fails else EXIT_OK
    print(f"{Outcome.of(r.outcome).value}: exit {code}: {EXIT_CODES[code]}")
    return code
