"""Reports: compare two runs, merge split runs, write JSON and HTML (checked paths, atomic, strict JSON).

JSON results are strict JSON (RFC 8259): a non-finite number (an infinite error
ratio, a NaN output) is written as the string ``"NaN"``, ``"Infinity"`` or
``"-Infinity"``; :func:`load_json` reads them back as floats.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from pathlib import Path
from typing import Any

from .outcome import Outcome


def _cells(result: dict[str, Any]) -> dict[tuple[str, str, str, str], dict[str, Any]]:
    return {(r["adapter"], c["variant"], c["dtype"], c["device"]): {**c, "version": r.get("version")}
            for r in result["adapters"] for c in r["cells"]}


def compare(old: dict[str, Any], new: dict[str, Any]) -> tuple[str, int]:
    """Text of what changed between two runs (regressions first) and the number of regressions."""
    a, b = _cells(old), _cells(new)
    regress, improve, other = [], [], []
    for key in sorted(set(a) | set(b)):
        o, n = a.get(key), b.get(key)
        oo, no = (o or {}).get("outcome", "absent"), (n or {}).get("outcome", "absent")
        if oo == no:
            continue
        line = f"{' '.join(key)}: {oo} -> {no}"
        if o and n and o.get("version") != n.get("version"):
            line += f" (version {o.get('version')} -> {n.get('version')})"
        if n and n.get("message"):
            line += f": {n['message'][:200]}"
        ro, rn = (Outcome.of(v).rank if v != "absent" else 0 for v in (oo, no))
        (regress if rn > ro else improve if rn < ro else other).append(line)
    out = []
    for title, rows in (("Regressions", regress), ("Improvements", improve), ("Other changes", other)):
        if rows:
            out.append(f"{title} ({len(rows)}):")
            out += [f"  {r}" for r in rows]
    if not out:
        out.append("No changes.")
    return "\n".join(out), len(regress)


def merge(parts: list[dict[str, Any]]) -> dict[str, Any]:
    """One result from several partial runs (the shards of ``--shard K/N``, a CI job matrix).

    Later parts win per cell; cells come out in matrix order.  Sharded parts must form whole
    plans (every shard once, ``shard.check_parts``).  Registry warnings are redone: an entry
    that one part matched is not "unused" because another part's cells missed it.  The run
    policies (named and required adapters) are joined, so ``decide`` judges the whole.
    """
    from ropeconf.reference.dtypes import DTYPES
    from ropeconf.reference.variants import VARIANTS

    from .shard import check_parts

    if not parts:
        raise ValueError("report merge needs at least one JSON part")
    check_parts(parts)
    by_adapter: dict[str, dict[str, Any]] = {}
    used: dict[str, set[str]] = {}
    unused: dict[str, dict[str, str]] = {}
    ran: set[str] = set()   # adapters some part could run
    cfg = parts[-1].get("config") or {}  # the matrix order of the run: its --variants and --dtype order first
    order = {v: i for i, v in enumerate(dict.fromkeys([*(cfg.get("variants") or []), *VARIANTS]))}
    dorder = {d: i for i, d in enumerate(dict.fromkeys([*(cfg.get("dtypes") or []), *DTYPES]))}
    for p in parts:
        for rep in p.get("adapters", []):
            cur = by_adapter.setdefault(rep["adapter"], {**rep, "cells": [], "cases": [], "seconds": 0.0})
            keyed = {(c["variant"], c["dtype"], c["device"]): c for c in cur["cells"]}
            for c in rep["cells"]:
                keyed[(c["variant"], c["dtype"], c["device"])] = c
            cur["cells"] = sorted(keyed.values(), key=lambda c: (order.get(c["variant"], len(order)), c["variant"],
                                                                  dorder.get(c["dtype"], 99), c["device"]))
            cur["cases"] += rep.get("cases", [])
            for k in ("version", "library"):
                cur[k] = rep.get(k)  # the latest part that ran this adapter describes it
            cur["seconds"] += rep.get("seconds") or 0.0  # the adapter's time over every part that ran it
            # fail closed: a crash in any part stays on record; "unavailable" only while no part ran it
            cur["crashed"] = cur.get("crashed") or rep.get("crashed")
            if not rep.get("unavailable"):
                ran.add(rep["adapter"])
            cur["unavailable"] = None if rep["adapter"] in ran else (rep.get("unavailable") or cur.get("unavailable"))
            used.setdefault(rep["adapter"], set()).update(rep.get("registry_used", []))
            unused.setdefault(rep["adapter"], {}).update(rep.get("registry_unused", {}))
    stale = {text for a, ids in unused.items() for i, text in ids.items() if i in used.get(a, set())}
    for a, rep in by_adapter.items():
        rep["registry_used"] = sorted(used.get(a, set()))
        rep["registry_unused"] = {i: t for i, t in unused.get(a, {}).items() if t not in stale}
        rep["warnings"] = list(dict.fromkeys(w for p in parts for r in p.get("adapters", [])
                                             if r["adapter"] == a for w in r.get("warnings", []) if w not in stale))
    warnings = [w for p in parts for w in p.get("warnings", []) if w not in stale]
    policies = [p["policy"] for p in parts if p.get("policy")]
    out = {"tool": "ropeconf", "version": parts[-1].get("version"), "merged_from": len(parts),
           "seconds": sum(p.get("seconds", 0) for p in parts), "config": parts[-1].get("config", {}),
           "adapters": list(by_adapter.values()), "warnings": list(dict.fromkeys(warnings))}
    if policies:
        out["policy"] = {"explicit": sorted({a for q in policies for a in q.get("explicit", [])}),
                         "require": sorted({a for q in policies for a in q.get("require", [])}),
                         "allow_empty": all(q.get("allow_empty", False) for q in policies),
                         "strict": any(q.get("strict", False) for q in policies)}
    return out


_NONFINITE = {"NaN": math.nan, "Infinity": math.inf, "-Infinity": -math.inf}


def _strict(obj: Any) -> Any:
    if isinstance(obj, float) and not math.isfinite(obj):
        return "NaN" if math.isnan(obj) else ("Infinity" if obj > 0 else "-Infinity")
    if isinstance(obj, dict):
        return {k: _strict(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_strict(v) for v in obj]
    return obj


def _relaxed(obj: Any) -> Any:
    if isinstance(obj, str) and obj in _NONFINITE:
        return _NONFINITE[obj]
    if isinstance(obj, dict):
        return {k: _relaxed(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_relaxed(v) for v in obj]
    return obj


def check_output_path(path: str) -> None:
    """Raise ValueError unless ``path`` can be written: its directory exists and is writable, and it is
    not a directory itself.  Checked before a run, so a typo does not cost the run."""
    p = Path(path)
    if p.is_dir():
        raise ValueError(f"output path {path!r} is a directory")
    parent = p.parent if str(p.parent) else Path(".")
    if not parent.is_dir():
        raise ValueError(f"output path {path!r}: directory {str(parent)!r} does not exist")
    if not os.access(parent, os.W_OK):
        raise ValueError(f"output path {path!r}: directory {str(parent)!r} is not writable")


def _atomic_write(path: str, text: str) -> None:
    """Write to a temporary file beside ``path`` and rename it over: readers (and a concurrent run writing
    the same path) see the old file or a whole new one, never a mix."""
    p = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{p.name}.", suffix=".tmp", dir=p.parent if str(p.parent) else ".")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, p)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_json(result: dict[str, Any], path: str) -> None:
    _atomic_write(path, json.dumps(_strict(result), indent=1, allow_nan=False) + "\n")


def load_json(path: str) -> dict[str, Any]:
    """A results file written by :func:`write_json` (or an older one with bare NaN/Infinity tokens)."""
    with open(path, encoding="utf-8") as f:
        data = json.load(f)
    if not isinstance(data, dict) or not isinstance(data.get("adapters"), list):
        raise ValueError("not a ropeconf results file (no 'adapters' list)")
    return _relaxed(data)


def write_html(result: dict[str, Any], path: str) -> None:
    from .html import render

    _atomic_write(path, render(result))
