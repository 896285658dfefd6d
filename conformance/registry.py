"""The known-divergence registry: conformance/known/*.toml (versioned with the suite).

Each ``[[divergence]]`` entry names the adapter(s), the library and the version
range it was verified on, what it matches (spec keys, ``variant``, ``dtype``,
``device``; a string, a list, or ``"*"``), the reason and the upstream
reference.  A matching diverging case is reported *known divergence*; a
matching case that conforms is reported *fixed*, which fails the run so the
entry gets removed (an expected failure that alarms when fixed).
"""

from __future__ import annotations

import dataclasses
import fnmatch
import tomllib
from pathlib import Path
from typing import Any

KNOWN_DIR = Path(__file__).resolve().parent / "known"
REQUIRED = ("id", "adapter", "library", "versions", "match", "reason", "upstream")


@dataclasses.dataclass(frozen=True)
class Divergence:
    id: str
    adapter: tuple[str, ...]
    library: str
    versions: str
    match: dict[str, Any]
    reason: str
    upstream: str
    magnitude: str = ""
    source: str = ""

    def applies(self, adapter: str, version: str, fields: dict[str, Any]) -> bool:
        if not any(fnmatch.fnmatchcase(adapter, pat) for pat in self.adapter):
            return False
        if not version_in(version, self.versions):
            return False
        for key, want in self.match.items():
            have = fields.get(key)
            wants = want if isinstance(want, list) else [want]
            if "*" in wants:
                continue
            if isinstance(have, (list, tuple)):
                have = list(have)
            if not any(_eq(have, w) for w in wants):
                return False
        return True


def _eq(have: Any, want: Any) -> bool:
    if isinstance(want, str) and isinstance(have, str):
        return fnmatch.fnmatchcase(have, want)
    return have == want


def version_in(version: str, spec: str) -> bool:
    if not spec or spec == "*":
        return True
    try:
        from packaging.specifiers import SpecifierSet
        from packaging.version import Version

        return Version(version) in SpecifierSet(spec)
    except Exception:
        return False


def load(paths: list[Path] | None = None) -> list[Divergence]:
    """Every entry of the given TOML files (default: conformance/known/*.toml)."""
    files = paths if paths is not None else sorted(KNOWN_DIR.glob("*.toml"))
    out = []
    for f in files:
        with open(f, "rb") as fh:
            data = tomllib.load(fh)
        for i, e in enumerate(data.get("divergence", [])):
            missing = [k for k in REQUIRED if k not in e]
            if missing:
                raise ValueError(f"{f}: divergence #{i} lacks {missing}")
            adapters = e["adapter"] if isinstance(e["adapter"], list) else [e["adapter"]]
            out.append(Divergence(e["id"], tuple(adapters), e["library"], e["versions"], dict(e["match"]),
                                  e["reason"], e["upstream"], e.get("magnitude", ""), f.name))
    ids = [d.id for d in out]
    dup = {i for i in ids if ids.count(i) > 1}
    if dup:
        raise ValueError(f"duplicate divergence ids: {sorted(dup)}")
    return out


def find(entries: list[Divergence], adapter: str, version: str, fields: dict[str, Any]) -> Divergence | None:
    for e in entries:
        if e.applies(adapter, version, fields):
            return e
    return None
