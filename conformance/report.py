"""Reports: compare two runs, merge split runs, write the HTML report (filled in below)."""

from __future__ import annotations

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
    return {"tool": "ropeconf", "version": parts[-1].get("version"), "merged_from": len(parts),
            "seconds": sum(p.get("seconds", 0) for p in parts), "config": parts[-1].get("config", {}),
            "adapters": list(by_adapter.values())}


def write_html(result: dict[str, Any], path: str) -> None:
    from .html import render

    with open(path, "w", encoding="utf-8") as f:
        f.write(render(result))
