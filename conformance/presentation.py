"""How a run's JSON result is shown in a terminal: the matrix, and the replay command of a failing case.

Both the CLI and the pytest plugin build replay commands here, so a replay
always carries every field of the case (spec, positions, seed, heads, role,
dtype, device, or the golden case id).
"""

from __future__ import annotations

import json
import shlex
from typing import Any

from ropeconf.reference.variants import VARIANTS

from .outcome import Outcome


def replay_case(minimal: dict[str, Any] | None, dtype: str, device: str) -> dict[str, Any] | None:
    """The ``ropeconf replay --case`` object of a cell's minimal case (None when it cannot be replayed)."""
    m = minimal or {}
    if m.get("scenario"):
        return {"scenario": m["scenario"], "device": device}
    if m.get("source") == "golden":
        return {"golden": m["case_id"], "dtype": dtype, "device": device, "role": m.get("role") or "query"}
    if m.get("spec") is None or m.get("positions") is None:
        return None
    return {"spec": m["spec"], "positions": m["positions"], "dtype": dtype, "device": device,
            "seed": m.get("seed"), "heads": (m.get("worst") or {}).get("heads", 1), "role": m.get("role") or "query"}


def replay_command(adapter: str, case: dict[str, Any]) -> str:
    return f"ropeconf replay --adapter {shlex.quote(adapter)} --case {shlex.quote(json.dumps(case, separators=(',', ':')))}"


def diagnosis_line(d: dict[str, Any] | None) -> str | None:
    """One line saying why a cell diverges (conformance/diagnosis.py), or None without a diagnosis."""
    if not d:
        return None
    ex = d.get("explained_by") or []
    if ex:
        parts = [f"{e['description']} [{e['hypothesis']}; {e.get('confirmed', '')}]" for e in ex[:2]]
        hint = next((h for e in ex for h in e.get("hints", [])), "")
        on = f" (on case {d['case_id']})" if d.get("case_id") else ""
        return "explained by: " + "; or ".join(parts) + (f" -> {hint}" if hint else "") + on
    if d.get("note"):
        return f"diagnosis: {d['note']}"
    st = d.get("structure") or {}
    bits = [f"pairs {st['pairs']}" if st.get("pairs") not in (None, []) else "",
            f"relative error up to {st['relative_error_max']:.3g}" if st.get("relative_error_max") else "",
            ("constant across tokens" if st.get("relative_error_spread", 1) < 0.05 else "")]
    g = st.get("grows_with_position")
    if g is not None:
        bits.append("grows with position" if g > 0.8 else "does not grow with position" if g < 0.3 else "")
    if st.get("tail_changed"):
        bits.append("the pass-through tail changed")
    return "no catalogued convention explains it: " + ", ".join(b for b in bits if b)


def render_matrix(result: dict[str, Any]) -> str:
    """The terminal matrix: one row per adapter x dtype x device, one column per variant."""
    variants = [v for v in VARIANTS if any(c["variant"] == v for r in result["adapters"] for c in r["cells"])]
    short = {v: VARIANTS[v].short for v in variants}
    head = f"{'adapter':18} {'version':10} {'dtype':8} {'dev':4} " + " ".join(f"{short[v]:>6}" for v in variants)
    lines = [head, "-" * len(head)]
    details = []
    for rep in result["adapters"]:
        rows: dict[tuple[str, str], dict[str, dict]] = {}
        for c in rep["cells"]:
            rows.setdefault((c["dtype"], c["device"]), {})[c["variant"]] = c
        for (dt, dev), cells in rows.items():
            vals = [Outcome.of(cells[v]["outcome"]).symbol if v in cells else "" for v in variants]
            lines.append(f"{rep['adapter'][:18]:18} {str(rep.get('version', '?'))[:10]:10} {dt:8} {dev:4} "
                         + " ".join(f"{s:>6}" for s in vals))
            for v in variants:
                c = cells.get(v)
                if c and (Outcome.of(c["outcome"]).fails or c["outcome"] == Outcome.KNOWN):
                    details.append((rep["adapter"], v, dt, dev, c))
    lines.append("")
    lines.append(" | ".join(f"{o.symbol} {o.legend}" for o in Outcome))
    lines.append("columns: " + ", ".join(f"{short[v]}={v}" for v in variants))
    unavailable = [(r["adapter"], r.get("unavailable") or r.get("crashed")) for r in result["adapters"]
                   if r.get("unavailable") or r.get("crashed")]
    if unavailable:
        lines.append("")
        lines.append("Unavailable adapters:")
        lines += [f"  {a}: {why[:300]}" for a, why in unavailable]
    failing = [d for d in details if d[4]["outcome"] != Outcome.KNOWN]
    if failing:
        lines.append("")
        lines.append("Divergences and errors (smallest failing case; replay with `ropeconf replay`):")
        for a, v, dt, dev, c in failing:
            lines.append(f"  {a} {v} {dt} {dev}: {c['outcome']}: {c.get('message', '')[:300]}")
            why = diagnosis_line(c.get("diagnosis"))
            if why:
                lines.append("      " + why[:400])
            case = replay_case(c.get("minimal"), dt, dev)
            if case is not None:
                lines.append("      " + replay_command(a, case))
    known = [d for d in details if d[4]["outcome"] == Outcome.KNOWN]
    if known:
        lines.append("")
        lines.append("Known divergences (registry):")
        seen = set()
        for a, v, dt, dev, c in known:
            kid = (c.get("minimal") or {}).get("known_id")
            key = (a, kid, v)
            if key in seen:
                continue
            seen.add(key)
            how = (f"max {_fmt_ratio(c.get('max_ratio'))} x tolerance" if c.get("max_ratio") is not None
                   else f"raises: {c.get('message', '')[:120]}")
            lines.append(f"  {a} {v} {dt}: {kid} ({how})")
            ex = (c.get("diagnosis") or {}).get("explained_by") or []
            if ex:
                lines.append(f"      explained by: {ex[0]['description']} [{ex[0]['hypothesis']}]")
    lines.append("")
    lines.append(f"{sum(len(r['cells']) for r in result['adapters'])} cells, "
                 f"{len(result['adapters'])} adapters, {result.get('seconds', 0):.1f} s")
    return "\n".join(lines)


def _fmt_ratio(r: float | None) -> str:
    return "?" if r is None else f"{r:.3g}"
