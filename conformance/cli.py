"""``ropeconf``: the command line.

Exit codes (CI gating; ``outcome.EXIT_CODES``): 0 every judged cell conforms
(or matches the known-divergence registry); 1 something diverges, errors, is
unjudgeable, or a known divergence got fixed; 2 usage or configuration error
(nothing ran); 3 nothing to gate on: an adapter named explicitly judged no case,
or a required adapter (``--require``, ``--strict``) is unavailable.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time
from typing import Any

from .config import RunConfig

from .outcome import EXIT_CODES, EXIT_FAIL, EXIT_NOT_CHECKED, EXIT_OK, EXIT_USAGE, Outcome, Policy, decide
from .presentation import render_matrix

EXIT_DIVERGES = EXIT_FAIL


class UsageError(Exception):
    pass


def _positive_int(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if v < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {v}")
    return v


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="ropeconf", description="RoPE reference, golden data and conformance suite.")
    sub = ap.add_subparsers(dest="cmd", metavar="COMMAND")

    sub.add_parser("list", help="list adapters with availability, reason and version")

    r = sub.add_parser("run", help="run adapters against golden data and property cases; print the matrix")
    r.add_argument("--adapter", nargs="+", action="extend", metavar="NAME",
                   help="built-in name, entry point (group ropeconf.adapters) or module:attribute; "
                        "default: every built-in adapter")
    r.add_argument("--skip-adapter", nargs="+", action="extend", metavar="NAME",
                   help="built-in adapters to leave out of the default run (over every built-in adapter)")
    RunConfig.add_arguments(r)
    r.add_argument("--jobs", type=_positive_int, default=2,
                   help="adapters run in parallel worker processes (default 2); each worker's thread pools "
                        "(OMP/MKL/OpenBLAS/TF intra-op) get the cores divided among them unless set in the "
                        "environment")
    r.add_argument("--in-process", action="store_true", help="run adapters in this process (no isolation)")
    r.add_argument("--json", metavar="PATH", help="write the full results as JSON")
    r.add_argument("--report", metavar="PATH", help="write a self-contained HTML report")

    rp = sub.add_parser("replay", help="re-run one case (a 'minimal' case from a JSON report) and judge it")
    rp.add_argument("--adapter", required=True)
    rp.add_argument("--case", required=True, help="JSON object with spec, positions, dtype, seed[, heads, device, "
                    "role], or @FILE")

    sub.add_parser("variants", help="list the variant records and their sources")

    idf = sub.add_parser("identify", help="black-box fingerprint of an implementation: which RoPE does it compute?")
    idf.add_argument("--adapter", required=True, help="built-in name, entry point or module:attribute")
    idf.add_argument("--spec", help="the configuration to give the adapter (RopeSpec or HF config JSON, or @FILE); "
                     "default: plain RoPE, head_dim 64")
    idf.add_argument("--dtype", help="dtype to probe in (default: the most precise one the adapter declares)")
    idf.add_argument("--device", default="cpu")
    idf.add_argument("--json", metavar="PATH", help="write the result as JSON")

    g = sub.add_parser("golden", help="golden-data corpus")
    gs = g.add_subparsers(dest="golden_cmd", metavar="ACTION")
    gr = gs.add_parser("regenerate", help="regenerate the corpus atomically (bit-for-bit reproducible)")
    gr.add_argument("--out", metavar="DIR", help="target directory (default: the corpus in the package)")
    gr.add_argument("--jobs", type=int, default=2)
    gv = gs.add_parser("verify", help="check hashes and schema; non-zero exit names each bad file")
    gv.add_argument("--path", metavar="DIR")
    gv.add_argument("--recompute", action="store_true", help="also recompute every case from the reference")

    rep = sub.add_parser("report", help="compare or merge JSON results")
    rs = rep.add_subparsers(dest="report_cmd", metavar="ACTION")
    rc = rs.add_parser("compare", help="what changed between two runs, regressions first")
    rc.add_argument("old")
    rc.add_argument("new")
    rm = rs.add_parser("merge", help="merge JSON parts of a split run into one")
    rm.add_argument("parts", nargs="+")
    rm.add_argument("--json", metavar="PATH")
    rm.add_argument("--report", metavar="PATH")

    gp = sub.add_parser("gpu-parity", help="CuPy vs NumPy reference and torch CUDA vs CPU adapters (needs a GPU)")
    gp.add_argument("--adapter", nargs="*", action="extend", default=None)
    from . import parity
    parity.add_parser(sub)
    from . import offline
    offline.add_parser(sub)
    return ap


def main(argv: list[str] | None = None) -> int:
    ap = build_parser()
    try:
        args = ap.parse_args(argv)
    except SystemExit as e:
        return EXIT_USAGE if e.code not in (0, None) else EXIT_OK
    try:
        if args.cmd == "list":
            return cmd_list()
        if args.cmd == "run":
            return cmd_run(args)
        if args.cmd == "replay":
            return cmd_replay(args)
        if args.cmd == "variants":
            return cmd_variants()
        if args.cmd == "identify":
            return cmd_identify(args)
        if args.cmd == "golden":
            return cmd_golden(args, ap)
        if args.cmd == "report":
            return cmd_report(args, ap)
        if args.cmd == "gpu-parity":
            from .gpu import cmd_gpu_parity

            return cmd_gpu_parity(args)
        if args.cmd == "parity":
            from .parity import cmd_parity
            return cmd_parity(args)
        if args.cmd == "judge":
            from .offline import cmd_judge
            return cmd_judge(args)
        ap.print_help()
        return EXIT_USAGE
    except (UsageError, ValueError, TypeError, OSError) as e:
        print(f"ropeconf: error: {e}", file=sys.stderr)
        return EXIT_USAGE


# ----------------------------------------------------------------------------- list / variants
def cmd_list() -> int:
    """Availability is checked in subprocesses, one per distinct adapter environment (KERAS_BACKEND...)."""
    import subprocess

    from ropeconf.adapters import BUILTIN

    from .runner import adapter_env

    names = sorted(BUILTIN) + _entry_point_names()
    groups: dict[tuple, list[str]] = {}
    for name in names:
        groups.setdefault(tuple(sorted(adapter_env(name).items())), []).append(name)
    rows: dict[str, tuple[str, str | None]] = {}
    code = ("import json,sys\nfrom ropeconf.conformance.adapter import load_adapter\n"
            "for n in sys.argv[1:]:\n"
            "    try:\n        a=load_adapter(n); w=a.availability(); v=a.version()\n"
            "    except Exception as e:\n        v,w='?',f'{type(e).__name__}: {e}'\n"
            "    print(json.dumps([n,v,w]),flush=True)\n")
    for env, group in groups.items():
        try:
            p = subprocess.run([sys.executable, "-c", code, *group], env=dict(os.environ, **dict(env)),
                               capture_output=True, text=True, timeout=600)
            for line in p.stdout.splitlines():
                if line.startswith("["):
                    n, v, w = json.loads(line)
                    rows[n] = (v, w)
            for n in group:
                rows.setdefault(n, ("?", (p.stderr.strip().splitlines() or ["check failed"])[-1]))
        except Exception as e:
            for n in group:
                rows[n] = ("?", f"{type(e).__name__}: {e}")
    print(f"{'adapter':24} {'status':12} {'version':14} reason")
    for name in names:
        version, why = rows[name]
        print(f"{name:24} {'unavailable' if why else 'available':12} {str(version):14} {why or ''}")
    return EXIT_OK


def _entry_point_names() -> list[str]:
    import importlib.metadata

    return sorted(ep.name for ep in importlib.metadata.entry_points(group="ropeconf.adapters"))


def cmd_variants() -> int:
    from ropeconf.reference.variants import VARIANTS

    for name, v in VARIANTS.items():
        print(f"{name:20} {v.short:6} {v.source}")
    return EXIT_OK


# ----------------------------------------------------------------------------- run
def resolve_adapter_names(names: list[str]) -> None:
    """Check each adapter name's form without importing anything it names (imports happen in its worker).

    A built-in name, an installed entry point, or ``module:attribute`` whose top-level
    package exists; anything else is a usage error.
    """
    import importlib.metadata
    import importlib.util

    from ropeconf.adapters import BUILTIN

    eps = {ep.name for ep in importlib.metadata.entry_points(group="ropeconf.adapters")}
    for n in names:
        if n in BUILTIN or n in eps:
            continue
        if n.startswith("exec:"):  # a program spoken to through the line protocol (docs/protocol.md)
            from .protocol import check_command

            try:
                check_command(n[len("exec:"):])
            except ValueError as e:
                raise UsageError(str(e)) from None
            continue
        mod, sep, attr = n.partition(":")
        if not sep or not mod or not attr:
            raise UsageError(f"unknown adapter {n!r}: give a built-in name ({', '.join(sorted(BUILTIN))}), an "
                             f"entry point of group 'ropeconf.adapters', or 'module:attribute'")
        try:
            found = importlib.util.find_spec(mod.split(".")[0]) is not None
        except (ImportError, ValueError):
            found = False
        if not found:
            raise UsageError(f"adapter {n!r}: no module {mod.split('.')[0]!r} on the path (PYTHONPATH)")


def cmd_run(args: argparse.Namespace) -> int:
    from ropeconf.adapters import BUILTIN

    from . import registry, report
    from .runner import run_adapter, run_isolated

    try:
        cfg = RunConfig.from_namespace(args)
    except ValueError as e:
        raise UsageError(str(e)) from None
    for path in (args.json, args.report):  # fail before the run, not after it
        if path:
            report.check_output_path(path)
    try:  # a malformed registry is a configuration error, found before anything runs
        entries = registry.load([__import__("pathlib").Path(p) for p in cfg.known_files] if cfg.known_files
                                else None)
    except registry.RegistryError as e:
        raise UsageError(str(e)) from None
    if "golden" not in cfg.skip:
        from ropeconf.golden_data import corpus

        problems = corpus.verify(cfg.golden_dir)
        if problems:
            raise UsageError("golden data failed verification: " + "; ".join(problems[:5]))
        # a precision entry whose witness is no golden case could never be reported fixed
        ids = {c["id"] for c in corpus.read_manifest(cfg.golden_dir)["cases"]}
        bad = [f"{e.id} ({e.source}): witness {w!r}" for e in entries for w, _ in e.witness if w not in ids]
        if bad:
            raise UsageError("registry witness names no case of the golden corpus: " + "; ".join(bad[:5]))
    skip = set(args.skip_adapter or ())
    unknown_skip = sorted(skip - set(BUILTIN))
    if unknown_skip:
        raise UsageError(f"--skip-adapter: not built-in adapters: {unknown_skip}")
    explicit = tuple(args.adapter or ())
    names = list(explicit) or [n for n in sorted(BUILTIN) if n not in skip]
    resolve_adapter_names(names)
    missing = sorted(set(cfg.require) - set(names))
    if missing:
        raise UsageError(f"--require {', '.join(missing)}: not among the adapters of this run")
    policy = Policy(explicit=explicit, require=cfg.require, allow_empty=cfg.allow_empty, strict=cfg.strict)
    configs, shard_info = _shard_configs(cfg, names)
    if shard_info:
        names = [n for n in names if configs[n].cells]
    prog = _Progress()
    t0 = time.time()
    if args.in_process:
        reports = [run_adapter(n, configs.get(n, cfg), prog) for n in names]
    else:
        reports = run_isolated(names, cfg, jobs=args.jobs, progress=prog, configs=configs)
    prog.close()
    result = {"tool": "ropeconf", "version": _version(), "config": cfg.to_dict(), "seconds": time.time() - t0,
              "adapters": reports, "warnings": [w for r in reports for w in r.get("warnings", [])],
              "policy": dataclasses.asdict(policy)}
    if shard_info:
        # one shard cannot know whether the others judge a named adapter or match a registry entry:
        # those checks are the merge's (`ropeconf report merge` applies the stored policy to the whole)
        result["shard"] = shard_info
        policy = Policy(allow_empty=True)
        print(f"shard {shard_info['index']}/{shard_info['count']} (plan {shard_info['plan']}): "
              f"{shard_info['cells']} of {shard_info['total']} cells; merge every shard's --json with "
              "`ropeconf report merge` for the verdict")
    decision = decide(result, policy)
    result["decision"] = {"exit_code": decision.exit_code, "reasons": decision.reasons}
    print(render_matrix(result))
    print(render_decision(decision))
    if args.json:
        report.write_json(result, args.json)
        print(f"JSON results: {args.json}")
    if args.report:
        report.write_html(result, args.report)
        print(f"HTML report: {args.report}")
    return decision.exit_code


def _shard_configs(cfg: RunConfig, names: list[str]) -> tuple[dict[str, RunConfig], dict[str, Any] | None]:
    """Each adapter's config for this shard (only its cells of the plan) and the shard's record."""
    if not cfg.shard:
        return {}, None
    from . import shard
    from .runner import cells_of

    k, n = shard.parse(cfg.shard)
    plan = shard.plan(names, cells_of(cfg), n)
    mine = plan[k - 1]
    configs = {a: dataclasses.replace(cfg, cells=tuple(shard.cell_key(c) for b, c in mine if b == a))
               for a in names}
    return configs, {"index": k, "count": n, "plan": shard.digest(plan), "cells": len(mine),
                     "total": sum(len(s) for s in plan)}


def render_decision(decision) -> str:
    lines = [f"exit {decision.exit_code}: {EXIT_CODES[decision.exit_code]}"]
    if decision.warnings:
        lines += ["warnings:"] + [f"  {w}" for w in decision.warnings]
    if decision.exit_code != EXIT_OK:
        lines += [f"  {r}" for r in decision.reasons[:50]]
        if len(decision.reasons) > 50:
            lines.append(f"  ... and {len(decision.reasons) - 50} more")
    return "\n".join(lines)


def exit_code(result: dict[str, Any]) -> int:
    """The run's exit code (``outcome.decide``)."""
    return decide(result).exit_code


def _version() -> str:
    try:
        import importlib.metadata

        return importlib.metadata.version("rope-conformance")
    except Exception:
        return "?"


class _Progress:
    def __init__(self) -> None:
        self.tty = sys.stderr.isatty()
        self.last = 0.0
        self.state: dict[str, str] = {}

    def __call__(self, msg: str) -> None:
        name = msg.split(":", 1)[0]
        self.state[name] = msg
        now = time.time()
        if "finished" in msg:
            self._line(msg, final=True)
        elif now - self.last > (0.5 if self.tty else 15):
            self.last = now
            self._line(" | ".join(v for v in self.state.values() if "finished" not in v))

    def _line(self, text: str, final: bool = False) -> None:
        if self.tty:
            sys.stderr.write("\r\033[K" + text[:150] + ("\n" if final else ""))
        else:
            sys.stderr.write(text + "\n")
        sys.stderr.flush()

    def close(self) -> None:
        if self.tty:
            sys.stderr.write("\r\033[K")
            sys.stderr.flush()


# ----------------------------------------------------------------------------- replay
def cmd_replay(args: argparse.Namespace) -> int:
    from ropeconf.reference import RopeSpec

    from .adapter import load_adapter
    from .judge import judge, make_input
    from .runner import adapter_env

    env = adapter_env(args.adapter)
    if any(os.environ.get(k) != v for k, v in env.items()):
        # the adapter needs its own process environment (e.g. KERAS_BACKEND): re-run there
        import subprocess

        argv = [sys.executable, "-m", "ropeconf.conformance.cli", "replay", "--adapter", args.adapter,
                "--case", args.case]
        return subprocess.run(argv, env={**os.environ, **env}).returncode
    case = parse_replay_case(args.case)
    resolve_adapter_names([args.adapter])
    adapter = load_adapter(args.adapter)
    declared = dict(getattr(adapter, "env", {}) or {})
    if any(os.environ.get(k) != v for k, v in declared.items()):  # a module:attr adapter's own env
        import subprocess

        argv = [sys.executable, "-m", "ropeconf.conformance.cli", "replay", "--adapter", args.adapter,
                "--case", args.case]
        return subprocess.run(argv, env={**os.environ, **declared}).returncode
    why = adapter.availability()
    if why:
        print(f"{adapter.name}: unavailable: {why}", file=sys.stderr)
        return EXIT_NOT_CHECKED
    dtype, device, role = case["dtype"], case["device"], case["role"]
    if "scenario" in case:
        from .sources import run_scenario

        # with the cell's dtype (as a run's replay line gives it), calls in other dtypes only set up the
        # state a dtype switch leaves behind, exactly as in the run; without one, every call is judged
        cell_dtype = dtype if "dtype" in json.loads(args.case) else None
        results = run_scenario(adapter, case["scenario"], device, dtype=cell_dtype)
        if cell_dtype and not any(r.dtype == cell_dtype for r in results):
            print(f"no call of the scenario is in dtype {cell_dtype}: nothing judged", file=sys.stderr)
            return EXIT_NOT_CHECKED
        for r in results:
            print(json.dumps({"case": r.case_id, "dtype": r.dtype, "outcome": Outcome.of(r.outcome).value,
                              "max_ratio": r.max_ratio, "message": r.message}, default=str))
        return EXIT_FAIL if any(Outcome.of(r.outcome).fails for r in results) else EXIT_OK
    if "golden" in case:
        from ropeconf.golden_data import corpus

        entry = next((c for c in corpus.read_manifest()["cases"] if c["id"] == case["golden"]), None)
        if entry is None:
            raise UsageError(f"--case: no golden case {case['golden']!r} (see golden_data/manifest.json)")
        arrays = corpus.load_case(None, entry)
        spec = RopeSpec.from_dict(entry["spec"])
        key = f"expected_{dtype}" if role == "query" else f"expected_key_{dtype}"
        r = judge(adapter, spec, corpus.input_array(arrays, dtype), arrays["positions"], dtype=dtype, device=device,
                  source="golden", case_id=entry["id"], expected=arrays.get(key), role=role)
    else:
        spec, pos = case["spec"], case["positions"]
        x = make_input(spec, pos.shape[0], case["heads"], pos.shape[1], dtype, case["seed"])
        r = judge(adapter, spec, x, pos, dtype=dtype, device=device, role=role, seed=case["seed"])
    shown = {k: r.to_dict()[k] for k in ("outcome", "max_ratio", "max_abs_error", "message", "worst")}
    if Outcome.of(r.outcome) is Outcome.DIVERGES and "golden" not in case:
        from .diagnosis import diagnose

        shown["diagnosis"] = diagnose(adapter, spec, pos, dtype, device, role, case["seed"], case["heads"])
    print(json.dumps(shown, indent=1, default=str))
    return EXIT_FAIL if Outcome.of(r.outcome).fails else EXIT_OK


def parse_replay_case(text: str) -> dict[str, Any]:
    """The ``--case`` object, validated: every problem is a usage error naming the field and what it allows."""
    import numpy as np

    from ropeconf.reference import RopeSpec
    from ropeconf.reference.dtypes import DTYPES

    if text.startswith("@"):
        try:
            with open(text[1:], encoding="utf-8") as f:
                text = f.read()
        except OSError as e:
            raise UsageError(f"--case {text}: cannot read the file: {e}") from None
    try:
        case = json.loads(text)
    except json.JSONDecodeError as e:
        raise UsageError(f"--case is not valid JSON: {e}") from None
    if not isinstance(case, dict):
        raise UsageError("--case must be a JSON object with spec, positions, dtype, seed[, heads, device, role] "
                         "or golden, dtype[, device, role]")
    out = {"dtype": case.get("dtype", "float32"), "device": case.get("device", "cpu"),
           "role": case.get("role") or "query"}
    if out["dtype"] not in DTYPES:
        raise UsageError(f"--case dtype={out['dtype']!r}: must be one of {', '.join(DTYPES)}")
    if out["device"] not in ("cpu", "cuda"):
        raise UsageError(f"--case device={out['device']!r}: must be cpu or cuda")
    if out["role"] not in ("query", "key"):
        raise UsageError(f"--case role={out['role']!r}: must be query or key")
    if "golden" in case:
        if not isinstance(case["golden"], str):
            raise UsageError("--case golden must be a golden case id (a string)")
        return {**out, "golden": case["golden"]}
    if "scenario" in case:
        sc = case["scenario"]
        try:
            if not isinstance(sc, dict) or not isinstance(sc.get("calls"), list) or not sc["calls"]:
                raise ValueError("needs kind, instances and a non-empty list of calls")
            specs = [RopeSpec.from_dict(s) for s in sc["instances"]]
            for k, c in enumerate(sc["calls"]):
                if not 0 <= int(c["instance"]) < len(specs) or c.get("dtype", "float32") not in DTYPES:
                    raise ValueError(f"call {k}: instance out of range or unknown dtype")
                np.asarray(c["positions"], dtype=np.int64)
        except (KeyError, TypeError, ValueError, OverflowError) as e:
            raise UsageError(f"--case scenario: {e}") from None
        return {**out, "scenario": {"kind": sc.get("kind", "replay"), "instances": specs, "calls": sc["calls"]}}
    missing = [k for k in ("spec", "positions") if k not in case]
    if missing:
        raise UsageError(f"--case lacks {missing} (or give a golden case id as \"golden\")")
    try:
        spec = RopeSpec.from_dict(case["spec"])
    except (TypeError, ValueError) as e:
        raise UsageError(f"--case spec: {e}") from None
    try:
        pos = np.asarray(case["positions"])
        if pos.dtype == object or pos.dtype.kind not in "iu":
            raise ValueError("positions must be a nested list of integers")
        if pos.ndim != (3 if spec.n_streams > 1 else 2):
            raise ValueError(f"positions must be (batch, seq{', streams' if spec.n_streams > 1 else ''}), "
                             f"got shape {pos.shape}")
        if pos.size and (int(pos.max()) >= 2 ** 53 or int(pos.min()) <= -2 ** 53):
            raise ValueError("positions must be below 2**53 in magnitude (float64 represents them exactly)")
        pos = pos.astype(np.int64)
    except (ValueError, OverflowError) as e:
        raise UsageError(f"--case positions: {e}") from None
    seed, heads = case.get("seed") or 0, case.get("heads") or 1
    for name, v, lo in (("seed", seed, 0), ("heads", heads, 1)):
        if isinstance(v, bool) or not isinstance(v, int) or v < lo:
            raise UsageError(f"--case {name}={v!r}: must be an int >= {lo}")
    return {**out, "spec": spec, "positions": pos, "seed": seed, "heads": heads}


def cmd_identify(args: argparse.Namespace) -> int:
    """Exit 0 when a spec explains the outputs within the tolerance, 1 when none does."""
    from ropeconf.reference import RopeSpec
    from ropeconf.reference.dtypes import DTYPES

    from . import report
    from .adapter import load_adapter
    from .identify import identify, render

    spec = None
    if args.spec:
        text = args.spec
        if text.startswith("@"):
            try:
                text = open(text[1:], encoding="utf-8").read()
            except OSError as e:
                raise UsageError(f"--spec {args.spec}: cannot read the file: {e}") from None
        try:
            spec = RopeSpec.from_dict(json.loads(text))
        except (json.JSONDecodeError, TypeError, ValueError) as e:
            raise UsageError(f"--spec: {e}") from None
    if args.dtype and args.dtype not in DTYPES:
        raise UsageError(f"--dtype {args.dtype!r}: must be one of {', '.join(DTYPES)}")
    if args.json:
        report.check_output_path(args.json)
    resolve_adapter_names([args.adapter])
    adapter = load_adapter(args.adapter)
    why = adapter.availability()
    if why:
        print(f"{adapter.name}: unavailable: {why}", file=sys.stderr)
        return EXIT_NOT_CHECKED
    result = identify(adapter, spec, args.dtype, args.device)
    print(render(result))
    if args.json:
        report.write_json({"adapters": [], "identify": result}, args.json)
    return EXIT_OK if result.get("identified") else EXIT_FAIL


# ----------------------------------------------------------------------------- golden
def cmd_golden(args: argparse.Namespace, ap: argparse.ArgumentParser) -> int:
    from ropeconf.golden_data import corpus

    if args.golden_cmd == "regenerate":
        t0 = time.time()
        out = corpus.regenerate(args.out, jobs=args.jobs)
        n = len(corpus.read_manifest(out)["cases"])
        print(f"wrote {n} cases to {out} in {time.time() - t0:.1f} s")
        return EXIT_OK
    if args.golden_cmd == "verify":
        problems = corpus.verify(args.path, recompute=args.recompute)
        for p in problems:
            print(p)
        if problems:
            print(f"golden data: {len(problems)} problem(s)", file=sys.stderr)
            return EXIT_DIVERGES
        man = corpus.read_manifest(args.path)
        print(f"golden data OK: {len(man['cases'])} cases, corpus {man['corpus_version']}, "
              f"schema {man['schema_version']}" + (", recomputed" if args.recompute else ""))
        return EXIT_OK
    ap.parse_args(["golden", "--help"])
    return EXIT_USAGE


# ----------------------------------------------------------------------------- report
def cmd_report(args: argparse.Namespace, ap: argparse.ArgumentParser) -> int:
    from . import report

    if args.report_cmd == "compare":
        text, regressions = report.compare(_load_json(args.old), _load_json(args.new))
        print(text)
        return EXIT_DIVERGES if regressions else EXIT_OK
    if args.report_cmd == "merge":
        for path in (args.json, args.report):
            if path:
                report.check_output_path(path)
        try:
            merged = report.merge([_load_json(p) for p in args.parts])
        except ValueError as e:
            raise UsageError(f"report merge: {e}") from None
        if args.json:
            report.write_json(merged, args.json)
        if args.report:
            report.write_html(merged, args.report)
        print(render_matrix(merged))
        decision = decide(merged, Policy(**{k: tuple(v) if isinstance(v, list) else v
                                            for k, v in merged["policy"].items()}) if merged.get("policy") else None)
        print(render_decision(decision))
        return decision.exit_code
    ap.parse_args(["report", "--help"])
    return EXIT_USAGE


def _load_json(path: str) -> dict[str, Any]:
    from .report import load_json

    try:
        return load_json(path)
    except (OSError, ValueError) as e:
        raise UsageError(f"cannot read results {path!r}: {e}") from e


if __name__ == "__main__":
    sys.exit(main())
