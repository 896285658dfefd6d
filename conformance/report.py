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
    """One result from several partial runs (a CI job matrix); later parts win per cell."""
    if not parts:
        raise ValueError("report merge needs at least one JSON part")
    by_adapter: dict[str, dict[str, Any]] = {}
    for p in parts:
        for rep in p.get("adapters", []):
            cur = by_adapter.setdefault(rep["adapter"], {**rep, "cells": [], "cases": []})
            keyed = {(c["variant"], c["dtype"], c["device"]): c for c in cur["cells"]}
            for c in rep["cells"]:
                keyed[(c["variant"], c["dtype"], c["device"])] = c
            cur["cells"] = list(keyed.values())
            cur["cases"] += rep.get("cases", [])
            for k in ("version", "library", "unavailable", "crashed", "seconds"):
                cur[k] = rep.get(k)  # the latest part that ran this adapter describes it
    warnings = [w for p in parts for w in p.get("warnings", [])]
    return {"tool": "ropeconf", "version": parts[-1].get("version"), "merged_from": len(parts),
            "seconds": sum(p.get("seconds", 0) for p in parts), "config": parts[-1].get("config", {}),
            "adapters": list(by_adapter.values()), "warnings": list(dict.fromkeys(warnings))}


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
