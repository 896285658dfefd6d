"""Write docs/findings.md: the summary table of every known divergence in conformance/known/*.toml.

tests/test_docs.py checks it is current (python scripts/gen_findings.py --check).
"""

from __future__ import annotations

import sys
from pathlib import Path

from ropeconf.adapters import FAMILIES
from ropeconf.conformance import registry

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "docs" / "findings.md"
# a family's registry file conformance/known/<family>.toml has its page at docs/findings/<family>.md
PAGES = {f"{family}.toml": f"findings/{family}.md" for family in FAMILIES
         if (ROOT / "docs" / "findings" / f"{family}.md").exists()}

INTRO = """# Findings

Divergences that rope-conformance found in real libraries, each verified in the
library's own installed source before it was called a divergence (rather than
an adapter bug). Every one is an entry of the versioned known-divergence
registry (`conformance/known/*.toml`): a run reports matching cases as
*known divergence*, and as *FIXED* (failing the run) once the library no
longer diverges. Each library's page has the analysis, the magnitude and a
minimal repro command; the pages also record what was checked and found
conforming. "diagnosis" names the catalogued convention that explains the
entry (docs/diagnosis.md), checked again by every run that meets it; empty
where no catalogued convention explains it. A *precision* entry (a library
right in form but less accurate than the tolerance model's libm) covers cases
only up to its ceiling (`≤ Nx`, a multiple of the tolerance) and is FIXED only
when its witness golden case conforms (docs/adapters.md, section 6).

Generated from the registry by `python scripts/gen_findings.py`.

| id | library (versions) | matches | diagnosis | magnitude | details |
|---|---|---|---|---|---|
"""


def _cell(text: str, n: int = 160) -> str:
    t = " ".join(str(text).split()).replace("|", "\\\\|")
    return t if len(t) <= n else t[: n - 1] + "…"


def render() -> str:
    rows = []
    for e in registry.load():
        match = ", ".join(f"{k}={v}" for k, v in e.match.items() if v != "*")
        if e.kind == "precision":
            match = f"precision ≤ {e.max_ratio:g}x: {match}"
        elif e.max_ratio is not None:
            match = f"≤ {e.max_ratio:g}x: {match}"
        page = PAGES.get(e.source, "")
        rows.append(f"| `{e.id}` | {e.library} ({_cell(e.versions, 40)}) | {_cell(match, 120)} | "
                    f"{f'`{e.diagnosis}`' if e.diagnosis else ''} | {_cell(e.magnitude or e.reason)} | {f'[{page}]({page})' if page else ''} |")
    return INTRO + "\n".join(rows) + "\n"


if __name__ == "__main__":
    unknown = [a for a in sys.argv[1:] if a != "--check"]
    if unknown:
        sys.exit(f"usage: python scripts/gen_findings.py [--check]  (unknown: {' '.join(unknown)}); "
                 "writes docs/findings.md, or with --check exits 1 if it is stale")
    text = render()
    if "--check" in sys.argv:
        sys.exit(0 if OUT.read_text() == text else 1)
    OUT.write_text(text)
    print(f"wrote {OUT} ({text.count(chr(10)) - INTRO.count(chr(10))} entries)")
