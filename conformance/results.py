"""Typed results: one judged case, one cell, one adapter's report (and their JSON form).

The JSON written by ``ropeconf run --json`` is ``{"tool", "version", "config",
"seconds", "adapters": [AdapterReport.to_dict(), ...]}``; every outcome is an
:class:`~ropeconf.conformance.outcome.Outcome` value string.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any, Iterable

from .outcome import Outcome


@dataclasses.dataclass
class CaseResult:
    adapter: str
    variant: str
    dtype: str
    device: str
    source: str                      # the case source's name: golden | property | metamorphic:<check> | ...
    case_id: str
    outcome: Outcome
    max_ratio: float | None = None   # max |error| / tolerance
    max_abs_error: float | None = None
    message: str = ""
    spec: dict[str, Any] | None = None
    positions: list | None = None
    seed: int | None = None
    role: str = "query"
    worst: dict[str, Any] | None = None      # position, pair, element of the worst error
    profile: dict[str, Any] | None = None    # error vs position / frequency index (for plots)
    known_id: str | None = None
    scenario: dict[str, Any] | None = None   # the call sequence of a stateful case (replayable)

    def to_dict(self) -> dict[str, Any]:
        # shallow: the fields are JSON-ready already (asdict's deep copy of the profiles cost per case)
        d = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        d["outcome"] = Outcome.of(self.outcome).value
        if d["scenario"] is None:
            d.pop("scenario")
        return d


@dataclasses.dataclass
class CellReport:
    """One (variant, dtype, device) cell of one adapter: its outcome is that of its most severe case."""

    variant: str
    dtype: str
    device: str
    outcome: Outcome
    counts: dict[str, int] = dataclasses.field(default_factory=dict)
    max_ratio: float | None = None
    minimal: dict[str, Any] | None = None    # the smallest case with the cell's outcome (failing or known)
    message: str = ""
    diagnosis: dict[str, Any] | None = None  # why it diverges (conformance/diagnosis.py), for failing/known cells
    seconds: float | None = None             # wall time of the cell (the shard planner's costs)

    @classmethod
    def summarize(cls, variant: str, dtype: str, device: str, results: list[CaseResult]) -> "CellReport":
        counts: dict[str, int] = {}
        for r in results:
            counts[Outcome.of(r.outcome).value] = counts.get(Outcome.of(r.outcome).value, 0) + 1
        outcome = Outcome.worst(r.outcome for r in results)
        ratios = [r.max_ratio for r in results if r.max_ratio is not None]
        shown = [r for r in results if r.outcome == outcome and (outcome.fails or outcome is Outcome.KNOWN)]
        minimal = min(shown, key=lambda r: (0 if r.case_id.endswith(":minimal") else 1,
                                            len(json.dumps(r.positions or [])))) if shown else None
        return cls(variant, dtype, device, outcome, counts, max(ratios) if ratios else None,
                   minimal.to_dict() if minimal else None, minimal.message if minimal else "")

    @classmethod
    def uniform(cls, variant: str, dtype: str, device: str, outcome: Outcome, why: str) -> "CellReport":
        """A cell that never ran a case (adapter unavailable or crashed, device missing)."""
        return cls(variant, dtype, device, outcome, {outcome.value: 1} if outcome.fails else {}, message=why)

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["outcome"] = Outcome.of(self.outcome).value
        return d


@dataclasses.dataclass
class AdapterReport:
    adapter: str
    library: str = "?"
    version: str = "?"
    cells: list[CellReport] = dataclasses.field(default_factory=list)
    cases: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    seconds: float | None = None
    unavailable: str | None = None   # why the library cannot run here (every cell unavailable)
    crashed: str | None = None       # why the adapter failed outside a case (every cell error)
    warnings: list[str] = dataclasses.field(default_factory=list)  # registry entries that matched nothing
    registry_used: list[str] = dataclasses.field(default_factory=list)         # entry ids some case matched
    registry_unused: dict[str, str] = dataclasses.field(default_factory=dict)  # id -> its warning (merge redoes it)

    @classmethod
    def not_run(cls, name: str, cells: Iterable[tuple[str, str, str]], outcome: Outcome, why: str,
                library: str = "?", version: str = "?") -> "AdapterReport":
        """The report of an adapter that could not run at all: every cell ``outcome`` with ``why``."""
        rep = cls(name, library, version, [CellReport.uniform(v, dt, dev, outcome, why) for v, dt, dev in cells])
        if outcome is Outcome.UNAVAILABLE:
            rep.unavailable = why
        else:
            rep.crashed = why
        return rep

    def to_dict(self) -> dict[str, Any]:
        d = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)
             if f.name not in ("unavailable", "crashed", "warnings", "registry_used", "registry_unused")
             or getattr(self, f.name)}
        d["cells"] = [c.to_dict() for c in self.cells]
        return d
