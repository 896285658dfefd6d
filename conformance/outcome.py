"""Outcomes: every fact about a verdict in one place, and the one function that decides a run.

A case, a cell (adapter x variant x dtype x device) and an adapter each end in
one :class:`Outcome`.  Its members carry how severe it is (a cell shows its most
severe case), whether it fails a run, and how the terminal, the HTML report and
the pytest plugin show it.  :func:`decide` is the only place where a run's
result becomes an exit code; the CLI, the pytest plugin and the report read it.
"""

from __future__ import annotations

import dataclasses
import enum
from typing import Any, Iterable


class Outcome(str, enum.Enum):
    """value, severity (higher shows first), fails the run, symbol, colour, pytest action, regression rank, legend"""

    def __new__(cls, value: str, severity: int, fails: bool, symbol: str, colour: str, pytest: str, rank: int,
                legend: str):
        obj = str.__new__(cls, value)
        obj._value_ = value
        obj.severity, obj.fails, obj.symbol, obj.colour = severity, fails, symbol, colour
        obj.pytest, obj.rank, obj.legend = pytest, rank, legend
        return obj

    DIVERGES = ("diverges", 70, True, "DIV", "#c62828", "fail", 3, "diverges beyond the tolerance")
    ERROR = ("error", 60, True, "ERR", "#ad1457", "fail", 3, "the library or the adapter failed")
    FIXED = ("fixed", 50, True, "FIXED", "#6a1b9a", "fail", 2, "a registry entry no longer reproduces")
    UNJUDGEABLE = ("unjudgeable", 45, True, "UNJ", "#4e342e", "fail", 2,
                   "unjudgeable: the tolerance reaches the pair's size (docs/tolerance.md)")
    KNOWN = ("known", 40, False, "known", "#ef6c00", "xfail", 1, "known divergence (registry)")
    CONFORMS = ("conforms", 30, False, "ok", "#2e7d32", "pass", 0, "conforms")
    UNSUPPORTED = ("unsupported", 20, False, "-", "#9e9e9e", "skip", 0, "unsupported (declared)")
    UNAVAILABLE = ("unavailable", 10, False, "n/a", "#616161", "skip", 0, "unavailable here")

    def __str__(self) -> str:
        return self.value

    @classmethod
    def of(cls, value: "str | Outcome") -> "Outcome":
        """The member for a value read back from JSON; an unknown value is an error naming the known ones."""
        try:
            return cls(value)
        except ValueError:
            raise ValueError(f"unknown outcome {value!r}; known: {', '.join(o.value for o in cls)}") from None

    @classmethod
    def worst(cls, outcomes: Iterable["str | Outcome"], empty: "Outcome | None" = None) -> "Outcome":
        """The most severe of ``outcomes`` (``empty``, default UNSUPPORTED, when there are none)."""
        found = [cls.of(o) for o in outcomes]
        return max(found, key=lambda o: o.severity) if found else (empty or cls.UNSUPPORTED)


FAILING = tuple(o for o in Outcome if o.fails)

EXIT_OK, EXIT_FAIL, EXIT_USAGE, EXIT_NOT_CHECKED = 0, 1, 2, 3
EXIT_CODES = {
    EXIT_OK: "every judged cell conforms (or matches the known-divergence registry)",
    EXIT_FAIL: "something diverges, errors, is unjudgeable, or a known divergence got fixed",
    EXIT_USAGE: "usage or configuration error (nothing was run)",
    EXIT_NOT_CHECKED: "nothing to gate on: an adapter named explicitly judged no case, or a required adapter "
                      "is unavailable (--allow-empty / no --require turn this off)",
}


@dataclasses.dataclass(frozen=True)
class Policy:
    """What a run must achieve beyond "nothing fails" (the CLI and the pytest plugin build it).

    ``explicit``: adapters the user named (``--adapter``, an entry point, the pytest option):
    each must judge at least one case unless ``allow_empty``.  ``require``: adapters whose
    being unavailable is fatal (``--require``; ``strict`` requires every named adapter and
    also fails on registry warnings).
    """

    explicit: tuple[str, ...] = ()
    require: tuple[str, ...] = ()
    allow_empty: bool = False
    strict: bool = False


@dataclasses.dataclass
class Decision:
    """What a run means for CI: the exit code and the reasons (one line each)."""

    exit_code: int
    reasons: list[str]
    warnings: list[str] = dataclasses.field(default_factory=list)


def judged(rep: dict[str, Any]) -> int:
    """Number of cases of an adapter report that were actually judged (not unsupported / unavailable)."""
    n = 0
    for cell in rep.get("cells", []):
        for value, count in (cell.get("counts") or {}).items():
            if Outcome.of(value) not in (Outcome.UNSUPPORTED, Outcome.UNAVAILABLE):
                n += count
    return n


def decide(result: dict[str, Any], policy: Policy | None = None) -> Decision:
    """The one decision of a run's JSON result: exit code, reasons and warnings.

    1 when any cell's outcome fails the run; else 3 when an explicitly named adapter
    judged nothing (unless ``allow_empty``) or a required adapter is unavailable; else 0.
    Registry warnings (entries that matched nothing) are listed; with ``strict`` they fail
    the run (exit 1).
    """
    policy = policy or Policy()
    reasons: list[str] = []
    for rep in result.get("adapters", []):
        for cell in rep.get("cells", []):
            o = Outcome.of(cell["outcome"])
            if o.fails:
                reasons.append(f"{rep['adapter']} {cell['variant']} {cell['dtype']} {cell['device']}: {o.value}")
    warnings = list(result.get("warnings", []))
    if policy.strict and warnings:
        reasons += [f"--strict: {w}" for w in warnings]
    if reasons:
        return Decision(EXIT_FAIL, reasons, warnings)
    required = set(policy.require) | (set(policy.explicit) if policy.strict else set())
    for rep in result.get("adapters", []):
        name = rep["adapter"]
        if name in required and rep.get("unavailable"):
            reasons.append(f"{name}: required but unavailable: {rep['unavailable']}")
        elif name in policy.explicit and not policy.allow_empty and judged(rep) == 0:
            why = rep.get("unavailable") or "every case was unsupported or filtered out"
            reasons.append(f"{name}: named explicitly but judged no case ({why})")
    missing = required - {rep["adapter"] for rep in result.get("adapters", [])}
    reasons += [f"{name}: required but not run" for name in sorted(missing)]
    return Decision(EXIT_NOT_CHECKED if reasons else EXIT_OK, reasons, warnings)
