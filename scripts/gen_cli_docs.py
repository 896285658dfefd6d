"""Write docs/cli.md from the real `ropeconf --help` output (tests/test_docs.py checks it is current)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ropeconf.conformance.cli import build_parser
from ropeconf.conformance.outcome import EXIT_CODES

OUT = Path(__file__).resolve().parent.parent / "docs" / "cli.md"


def _subparsers(p: argparse.ArgumentParser):
    for a in p._actions:
        if isinstance(a, argparse._SubParsersAction):
            yield from a.choices.items()


def render() -> str:
    ap = build_parser()
    parts = ["# CLI reference", "",
             "Generated from the real `--help` by `python scripts/gen_cli_docs.py`; do not edit by hand.", "",
             "Exit codes (`ropeconf run`, `report merge`; `replay` uses 0, 1, 2 and 3 for an unavailable "
             "adapter):", "", *[f"* {code}: {text}" for code, text in EXIT_CODES.items()], "",
             "## ropeconf", "", "```", ap.format_help().rstrip(), "```", ""]

    def walk(p: argparse.ArgumentParser, prefix: str) -> None:
        for name, sp in _subparsers(p):
            parts.extend([f"## {prefix} {name}", "", "```", sp.format_help().rstrip(), "```", ""])
            walk(sp, f"{prefix} {name}")

    walk(ap, "ropeconf")
    return "\n".join(parts)


if __name__ == "__main__":
    import os

    os.environ["COLUMNS"] = "100"
    text = render()
    if "--check" in sys.argv:
        sys.exit(0 if OUT.read_text() == text else 1)
    OUT.write_text(text)
    print(f"wrote {OUT}")
