"""The known-divergence registry: conformance/known/<family>.toml (versioned with the suite).

Each ``[[divergence]]`` entry names the adapter(s) (fnmatch patterns against the
name the report shows: a built-in name, an entry-point name or the
``module:attribute`` an adapter was loaded by), the library and the version
range it was verified on, what it matches, the reason and the upstream
reference.  A matching diverging (or erroring) case is reported *known
divergence*; when every matched case of a cell conforms the entry is *fixed*,
which fails the run so the entry gets removed.

``match`` keys: every RopeSpec key, ``variant``, ``dtype``, ``device``, and the
case's ``role`` (query/key), ``partial`` (rotary_dim < head_dim),
``min_position`` / ``max_position`` (of the case's positions),
``negative_positions`` and ``source`` (golden, property, stateful,
metamorphic:<check>: a divergence that needs state across calls is scoped to
``source = "stateful"``).  A value is one value, a list of values, ``"*"`` (any),
an fnmatch pattern for strings, or a comparison for numbers (``">=1000"``,
``"<0"``).  Unknown entry or match keys are errors, and so is a malformed file.
When several entries match a case, the most specific one (most constrained match
keys, then a literal adapter name over a pattern) is reported.

``kind = "precision"`` marks a precision finding: a library whose arithmetic is
conventional in form but less accurate than the tolerance model assumes (a float32
``exp`` 8 ulp off, angles from a float32 running product), so that whether a drawn
case crosses the bound depends on its rounding.  Such an entry must give
``max_ratio`` (a ceiling > 1: a diverging case above it is never known under the
entry, so a real bug cannot hide behind the finding; an erroring case never is)
and ``witness``, golden cases (``{ golden = "<case id>", dtype = "<dtype>" }``)
that reproduce it deterministically.  It is *fixed* only when a witness case it
matches conforms, never because drawn cases of a cell happen to stay below the
bound.  Any entry may give ``max_ratio``.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import operator
import re
import tomllib
from pathlib import Path
from typing import Any, Callable

from .outcome import Outcome

KNOWN_DIR = Path(__file__).resolve().parent / "known"
REQUIRED = ("id", "adapter", "library", "versions", "match", "reason", "upstream")
OPTIONAL = ("magnitude", "diagnosis", "kind", "max_ratio", "witness")
KINDS = ("formula", "precision")
CELL_KEYS = ("variant", "dtype", "device")
CASE_KEYS = ("role", "partial", "min_position", "max_position", "negative_positions", "source")
STRUCTURAL_KEYS = ("rope_type", "freqs_for", "xpos", "axial_axes", "mrope_interleaved")
_CMP = re.compile(r"^\s*(>=|<=|==|!=|>|<)\s*(-?[0-9.eE+]+)\s*$")
_OPS = {">=": operator.ge, "<=": operator.le, "==": operator.eq, "!=": operator.ne, ">": operator.gt,
        "<": operator.lt}


def match_keys() -> set[str]:
    """Every key a ``match`` table may use."""
    from ropeconf.reference import RopeSpec

    return set(RopeSpec.__dataclass_fields__) | set(CELL_KEYS) | set(CASE_KEYS)


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
    diagnosis: str = ""
    kind: str = "formula"
    max_ratio: float | None = None               # a ceiling: a case above it is never known under this entry
    witness: tuple[tuple[str, str], ...] = ()    # (golden case id, dtype) that reproduce a precision finding

    def admits(self, outcome: Any, ratio: float | None) -> bool:
        """Whether a case that this entry matches may be reported known under it: within the ceiling, and
        for a precision entry only a divergence (an error is never a precision finding)."""
        if self.kind == "precision" and Outcome.of(outcome) is not Outcome.DIVERGES:
            return False
        return self.max_ratio is None or (ratio is not None and ratio <= self.max_ratio)

    def is_witness(self, source: str, case_id: str, dtype: str) -> bool:
        return source == "golden" and (case_id, dtype) in self.witness

    def names(self, adapter: str, version: str) -> bool:
        """Whether this entry is about ``adapter`` at ``version`` (before looking at any case)."""
        return any(fnmatch.fnmatchcase(adapter, pat) for pat in self.adapter) and version_in(version, self.versions)

    def applies(self, adapter: str, version: str, fields: dict[str, Any]) -> bool:
        if not self.names(adapter, version):
            return False
        for key, want in self.match.items():
            wants = want if isinstance(want, list) else [want]
            if "*" in wants:
                continue
            have = fields.get(key)
            if isinstance(have, (list, tuple)):
                have = list(have)
            if not any(_eq(have, w) for w in wants):
                return False
        return True

    def covers(self, cells: list[tuple[str, str, str]]) -> bool:
        """Whether a run over ``cells`` (variant, dtype, device) reaches this entry's scope: a cell its
        variant/dtype/device keys admit, of a variant whose structural keys (rope_type, freqs_for,
        xpos, axial_axes, mrope_interleaved: what no case source varies) it admits."""
        from ropeconf.reference.variants import VARIANTS

        for cell in cells:
            if not all(_cell_ok(self.match.get(k), v) for k, v in zip(CELL_KEYS, cell)):
                continue
            spec = VARIANTS[cell[0]].spec() if cell[0] in VARIANTS else None
            if spec is None or all(_cell_ok(self.match.get(k), getattr(spec, k)) for k in STRUCTURAL_KEYS):
                return True
        return False

    @property
    def specificity(self) -> tuple[int, int]:
        constrained = sum(1 for v in self.match.values() if v != "*" and not (isinstance(v, list) and "*" in v))
        literal = int(all(not any(ch in pat for ch in "*?[") for pat in self.adapter))
        return constrained, literal


def _cell_ok(want: Any, have: str) -> bool:
    if want is None:
        return True
    wants = want if isinstance(want, list) else [want]
    return "*" in wants or any(_eq(have, w) for w in wants)


def _eq(have: Any, want: Any) -> bool:
    if isinstance(want, str):
        m = _CMP.match(want)
        if m and isinstance(have, (int, float)) and not isinstance(have, bool):
            return _OPS[m.group(1)](have, float(m.group(2)))
        if isinstance(have, str):
            return fnmatch.fnmatchcase(have, want)
        return False
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


class RegistryError(ValueError):
    """A known-divergence file that cannot be trusted: malformed, unknown keys, duplicate ids."""


def load(paths: list[Path] | None = None) -> list[Divergence]:
    """Every entry of the given TOML files (default: conformance/known/*.toml), validated."""
    files = paths if paths is not None else sorted(KNOWN_DIR.glob("*.toml"))
    out = []
    allowed_match = match_keys()
    for f in files:
        try:
            with open(f, "rb") as fh:
                data = tomllib.load(fh)
        except OSError as e:
            raise RegistryError(f"cannot read known-divergence file {f}: {e}") from None
        except tomllib.TOMLDecodeError as e:
            raise RegistryError(f"known-divergence file {f} is not valid TOML: {e}") from None
        unknown_top = sorted(set(data) - {"divergence"})
        if unknown_top:
            raise RegistryError(f"{f}: unknown top-level key(s) {unknown_top} (entries are [[divergence]] tables)")
        for i, e in enumerate(data.get("divergence", [])):
            where = f"{f}: divergence #{i} ({e.get('id', '?')})"
            missing = [k for k in REQUIRED if k not in e]
            if missing:
                raise RegistryError(f"{where} lacks {missing}")
            unknown = sorted(set(e) - set(REQUIRED) - set(OPTIONAL))
            if unknown:
                raise RegistryError(f"{where}: unknown key(s) {unknown}; valid: {sorted(REQUIRED + OPTIONAL)}")
            if not isinstance(e["match"], dict):
                raise RegistryError(f"{where}: match must be a table")
            bad = sorted(set(e["match"]) - allowed_match)
            if bad:
                raise RegistryError(f"{where}: unknown match key(s) {bad}; valid: {sorted(allowed_match)}")
            if e.get("diagnosis"):
                from .diagnosis import unknown_names

                if unknown_names(str(e["diagnosis"])):
                    raise RegistryError(f"{where}: diagnosis {e['diagnosis']!r} names no catalogued hypothesis "
                                        f"(docs/diagnosis.md lists them; join two with '+')")
            kind, ceiling, witness = _precision_keys(e, where)
            adapters = e["adapter"] if isinstance(e["adapter"], list) else [e["adapter"]]
            out.append(Divergence(e["id"], tuple(adapters), e["library"], e["versions"], dict(e["match"]),
                                  e["reason"], e["upstream"], e.get("magnitude", ""), f.name,
                                  e.get("diagnosis", ""), kind, ceiling, witness))
    ids = [d.id for d in out]
    dup = {i for i in ids if ids.count(i) > 1}
    if dup:
        raise RegistryError(f"duplicate divergence ids: {sorted(dup)}")
    return out


def _precision_keys(e: dict[str, Any], where: str) -> tuple[str, float | None, tuple[tuple[str, str], ...]]:
    """``kind``, ``max_ratio`` and ``witness`` of one entry, validated."""
    kind = e.get("kind", "formula")
    if kind not in KINDS:
        raise RegistryError(f"{where}: kind must be one of {list(KINDS)}, got {kind!r}")
    ceiling = e.get("max_ratio")
    if ceiling is not None and (isinstance(ceiling, bool) or not isinstance(ceiling, (int, float))
                                or not ceiling > 1):
        raise RegistryError(f"{where}: max_ratio must be a number > 1 (a ceiling in multiples of the tolerance), "
                            f"got {ceiling!r}")
    raw = e.get("witness", [])
    ok = isinstance(raw, list) and all(isinstance(w, dict) and set(w) == {"golden", "dtype"}
                                       and all(isinstance(v, str) and v for v in w.values()) for w in raw)
    if not ok:
        raise RegistryError(f"{where}: witness must be a list of {{ golden = \"<case id>\", dtype = \"<dtype>\" }} "
                            f"tables, got {raw!r}")
    witness = tuple((w["golden"], w["dtype"]) for w in raw)
    if kind == "precision" and (ceiling is None or not witness):
        raise RegistryError(f"{where}: a precision entry needs max_ratio (> 1) and at least one witness golden case "
                            "(docs/adapters.md section 6)")
    if kind != "precision" and witness:
        raise RegistryError(f"{where}: witness is for kind = \"precision\" entries")
    return kind, (float(ceiling) if ceiling is not None else None), witness


def find(entries: list[Divergence], adapter: str, version: str, fields: dict[str, Any],
         admit: Callable[[Divergence], bool] | None = None) -> Divergence | None:
    """The most specific entry that matches a case (None when none does); with ``admit``, among those it admits."""
    hits = [e for e in entries if e.applies(adapter, version, fields) and (admit is None or admit(e))]
    return max(hits, key=lambda e: e.specificity) if hits else None
