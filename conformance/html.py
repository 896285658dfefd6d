"""The self-contained HTML report: matrix, per-divergence details, plots (inline PNG, no network)."""

from __future__ import annotations

import base64
import html
import io
import json
from typing import Any

from .outcome import Outcome
from .presentation import diagnosis_line, replay_case, replay_command

CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:24px;color:#212121;max-width:1600px}
h1{font-size:22px;margin:0 0 4px} h2{font-size:18px;margin-top:28px;border-bottom:1px solid #ddd}
.meta{color:#666;font-size:13px} table{border-collapse:collapse;font-size:12px}
th,td{border:1px solid #e0e0e0;padding:3px 6px;text-align:center;white-space:nowrap}
th{background:#fafafa;position:sticky;top:0} td.name{text-align:left;font-weight:600}
td.cell a{color:#fff;text-decoration:none;display:block} .legend span{display:inline-block;padding:2px 8px;
margin-right:6px;color:#fff;border-radius:3px;font-size:12px} pre{background:#f5f5f5;padding:8px;overflow:auto;
font-size:12px;white-space:pre-wrap} .detail{border:1px solid #e0e0e0;border-radius:6px;padding:8px 12px;margin:10px 0}
.detail h3{font-size:14px;margin:2px 0 6px} img{max-width:100%;border:1px solid #eee}
.summary span{margin-right:14px}
"""


def _e(s: Any) -> str:
    return html.escape(str(s))


def _anchor(*parts: str) -> str:
    return "c-" + "-".join("".join(ch if ch.isalnum() else "_" for ch in p) for p in parts)


def render(result: dict[str, Any]) -> str:
    from ropeconf.reference.variants import VARIANTS

    adapters = result.get("adapters", [])
    variants = [v for v in VARIANTS if any(c["variant"] == v for r in adapters for c in r["cells"])]
    counts: dict[str, int] = {}
    for r in adapters:
        for c in r["cells"]:
            counts[c["outcome"]] = counts.get(c["outcome"], 0) + 1
    out = ["<!doctype html><html><head><meta charset='utf-8'><title>RoPE conformance report</title>",
           f"<style>{CSS}</style></head><body>",
           "<h1>RoPE conformance report</h1>",
           f"<div class='meta'>ropeconf {_e(result.get('version', '?'))} · {len(adapters)} adapters · "
           f"{_e(round(result.get('seconds', 0), 1))} s · config: {_e(json.dumps(result.get('config', {}).get('dtypes', '')))}"
           "</div>",
           "<p class='summary'>" + "".join(f"<span><b style='color:{Outcome.of(k).colour}'>{_e(k)}</b> {n}</span>"
                                         for k, n in sorted(counts.items())) + "</p>",
           "<div class='legend'>" + "".join(f"<span style='background:{o.colour}'>{_e(o.symbol)} {_e(o.legend)}</span>"
                                          for o in Outcome) + "</div>",
           "<h2 id='matrix'>Matrix: library × variant × dtype × device</h2>", _matrix(adapters, variants)]
    out.append("<h2>Error vs position</h2><p class='meta'>Max |error| per token against the float64 reference, "
               "relative to the norm of its rotated pair, with the tolerance envelope (dashed). Float32 angle "
               "error grows with position; bf16 positions collapse.</p>")
    out.append(_plots(adapters))
    out.append("<h2>Details</h2>")
    out.append(_details(adapters))
    # lets a headless browser (tests/test_report_html.py) confirm that every plot decoded and rendered
    out.append("<script>window.addEventListener('load',function(){var i=[].slice.call(document.images);"
               "document.body.setAttribute('data-images-loaded',String(i.length>0&&i.every(function(m){"
               "return m.complete&&m.naturalWidth>0;})));});</script>")
    out.append("</body></html>")
    return "\n".join(out)


def _matrix(adapters: list[dict[str, Any]], variants: list[str]) -> str:
    rows = ["<table><tr><th>library</th><th>version</th><th>dtype</th><th>device</th>" +
            "".join(f"<th>{_e(v)}</th>" for v in variants) + "</tr>"]
    for r in adapters:
        by: dict[tuple[str, str], dict[str, dict]] = {}
        for c in r["cells"]:
            by.setdefault((c["dtype"], c["device"]), {})[c["variant"]] = c
        for (dt, dev), cells in by.items():
            tds = []
            for v in variants:
                c = cells.get(v)
                if not c:
                    tds.append("<td></td>")
                    continue
                o = Outcome.of(c["outcome"])
                title = _e(c.get("message") or o.value)
                ratio = c.get("max_ratio")
                shown = o is Outcome.DIVERGES or o is Outcome.KNOWN
                txt = _e(o.symbol) + (f"<br><small>{ratio:.2g}×</small>" if shown and ratio else "")
                tds.append(f"<td class='cell' style='background:{o.colour}' title='{title}'>"
                           f"<a href='#{_anchor(r['adapter'], v, dt, dev)}'>{txt}</a></td>")
            rows.append(f"<tr><td class='name'>{_e(r['adapter'])}</td><td>{_e(r.get('version', '?'))}</td>"
                        f"<td>{_e(dt)}</td><td>{_e(dev)}</td>" + "".join(tds) + "</tr>")
    rows.append("</table>")
    return "\n".join(rows)


def _details(adapters: list[dict[str, Any]]) -> str:
    out = []
    for r in adapters:
        if r.get("unavailable") or r.get("crashed"):
            out.append(f"<div class='detail'><h3>{_e(r['adapter'])}: unavailable</h3><pre>"
                       f"{_e(r.get('unavailable') or r.get('crashed'))}</pre></div>")
        for c in r["cells"]:
            o = Outcome.of(c["outcome"])
            aid = _anchor(r["adapter"], c["variant"], c["dtype"], c["device"])
            head = (f"<div class='detail' id='{aid}'><h3><span style='color:{o.colour}'>{_e(o.value)}</span> "
                    f"{_e(r['adapter'])} · {_e(c['variant'])} · {_e(c['dtype'])} · {_e(c['device'])}</h3>")
            body = [f"<div class='meta'>cases: {_e(json.dumps(c.get('counts', {})))}; max error "
                    f"{_e(_fmt(c.get('max_ratio')))} × tolerance</div>"]
            if c.get("message"):
                body.append(f"<p>{_e(c['message'])}</p>")
            why = diagnosis_line(c.get("diagnosis"))
            if why:
                body.append(f"<p class='diagnosis'><b>Diagnosis.</b> {_e(why)}</p>")
            m = c.get("minimal")
            if m and (o.fails or o is Outcome.KNOWN):
                case = replay_case(m, c["dtype"], c["device"])
                body.append("<p>Smallest failing case" + (f" (known divergence <b>{_e(m.get('known_id'))}</b>)"
                                                         if m.get("known_id") else "") + ":</p>")
                body.append(f"<pre>{_e(json.dumps({k: m.get(k) for k in ('spec', 'positions', 'seed', 'worst')}, indent=1))}</pre>")
                if case is not None:
                    body.append(f"<p>Replay:</p><pre>{_e(replay_command(r['adapter'], case))}</pre>")
            out.append(head + "".join(body) + "</div>")
    return "\n".join(out)


def _fmt(v: Any) -> str:
    return "?" if v is None else f"{v:.3g}"


def _plots(adapters: list[dict[str, Any]]) -> str:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except Exception as e:  # the report still renders; say why there are no plots
        return f"<p class='meta'>Plots unavailable: {_e(type(e).__name__)}: {_e(e)} (pip install matplotlib)</p>"
    series: dict[tuple[str, str], list[tuple[float, float, float]]] = {}
    pairs: dict[tuple[str, str], dict[int, float]] = {}
    for r in adapters:
        for case in r.get("cases", []):
            prof = case.get("profile") or {}
            pos, err, tol = prof.get("position"), prof.get("rel_by_token"), prof.get("reltol_by_token")
            if not pos or not err or not tol or len(pos) != len(err):
                continue
            key = (r["adapter"], case["dtype"])
            series.setdefault(key, []).extend(zip(pos, err, tol))
            for j, v in enumerate(prof.get("ratio_by_pair") or []):
                d = pairs.setdefault(key, {})
                d[j] = max(d.get(j, 0.0), v)
    if not series:
        return "<p class='meta'>No judged cases with error profiles.</p>"
    imgs = []
    dtypes = sorted({k[1] for k in series})
    for dt in dtypes:
        fig, ax = plt.subplots(figsize=(9, 5))
        env: dict[float, float] = {}
        for (name, d), pts in sorted(series.items()):
            if d != dt:
                continue
            pts = [(max(p, 0.5), max(e, 1e-18), t) for p, e, t in pts if e < 1e299]
            if not pts:
                continue
            pts.sort()
            ax.scatter([p for p, _, _ in pts], [e for _, e, _ in pts], s=6, label=name, alpha=0.6)
            for p, _, t in pts:
                env[p] = max(env.get(p, 0.0), t)
        if env:
            xs = sorted(env)
            ax.plot(xs, [env[x] for x in xs], "k--", lw=1, label="tolerance (max over cases)")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("position")
        ax.set_ylabel("max |error| / |pair| per token")
        ax.set_title(f"error vs position, {dt}")
        ax.legend(fontsize=7, ncol=2)
        imgs.append(_png(fig, plt))
    fig, ax = plt.subplots(figsize=(9, 4))
    for (name, d), by in sorted(pairs.items()):
        js = sorted(by)
        ax.plot(js, [max(by[j], 1e-6) for j in js], marker=".", lw=0.8, label=f"{name} {d}")
    ax.axhline(1.0, color="k", ls="--", lw=1)
    ax.set_yscale("log")
    ax.set_xlabel("frequency (pair) index")
    ax.set_ylabel("max error / tolerance")
    ax.set_title("error per frequency index")
    ax.legend(fontsize=6, ncol=3)
    imgs.append(_png(fig, plt))
    return "\n".join(f"<p><img alt='plot' src='data:image/png;base64,{i}'></p>" for i in imgs)


def _png(fig: Any, plt: Any) -> str:
    buf = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buf, format="png", dpi=90)
    plt.close(fig)
    return base64.b64encode(buf.getvalue()).decode()
