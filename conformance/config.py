"""Run options, declared once: :class:`RunConfig`.

Each field carries its command-line flag, help text and parser in its metadata;
``ropeconf run``'s flags, the pytest plugin's ``--ropeconf-*`` options and the
worker process's decoding are all derived from these fields.  Adding an option
is one field here.
"""

from __future__ import annotations

import argparse
import dataclasses
import re
from typing import Any, Callable

from ropeconf.reference.dtypes import DTYPES

PROFILES = {
    # hypothesis examples per (adapter, variant, dtype, device) cell
    "ci": 8,
    "dev": 40,
    "thorough": 400,
}
DEVICES = ("cpu", "cuda")


def _csv(text: str) -> tuple[str, ...]:
    return tuple(v.strip() for v in str(text).split(",") if v.strip())


def _choices(name: str, allowed: tuple[str, ...]) -> Callable[[str], tuple[str, ...]]:
    def parse(text: str) -> tuple[str, ...]:
        vals = _csv(text)
        bad = [v for v in vals if v not in allowed]
        if bad or not vals:
            raise ValueError(f"{name} {text!r}: each must be one of {', '.join(allowed)}")
        return vals
    return parse


def parse_only(text: str | None) -> dict[str, list[str]]:
    """``rope_type=default,layout=half`` -> {"rope_type": ["default"], "layout": ["half"]}.

    Repeated keys accumulate (``layout=half,layout=interleaved``); ``|`` also
    separates values (``dtype=float32|bfloat16``).  Keys are RopeSpec keys, ``variant``,
    ``dtype`` and ``device``; an unknown key, or a value that no case can have (an
    unknown rope_type, layout, variant..., a number that is not one), is an error.
    """
    out: dict[str, list[str]] = {}
    if not text:
        return out
    for item in str(text).split(","):
        if not item.strip():
            continue
        key, sep, val = item.partition("=")
        if not sep or not key.strip() or not val.strip():
            raise ValueError(f"--only expects key=value[,key=value...], got {item!r}")
        out.setdefault(key.strip(), []).extend(v.strip() for v in val.split("|"))
    for key, vals in out.items():
        _check_only(key, vals)
    return out


def _check_only(key: str, vals: list[str]) -> None:
    import typing

    from ropeconf.reference import FREQS_FOR, LAYOUTS, ROPE_TYPES, RopeSpec
    from ropeconf.reference.spec import LONGROPE_SWITCH
    from ropeconf.reference.variants import VARIANTS

    enums = {"variant": tuple(VARIANTS), "dtype": DTYPES, "device": DEVICES, "rope_type": ROPE_TYPES,
             "layout": LAYOUTS, "freqs_for": FREQS_FOR, "longrope_switch": LONGROPE_SWITCH}
    fields = RopeSpec.__dataclass_fields__
    if key not in enums and key not in fields:
        raise ValueError(f"--only: unknown key {key!r}; keys: variant, dtype, device or a spec key "
                         f"({', '.join(sorted(fields))})")
    if key in enums:
        bad = [v for v in vals if v not in enums[key]]
        if bad:
            raise ValueError(f"--only {key}={'|'.join(bad)} matches nothing: {key} is one of {', '.join(enums[key])}")
        return
    hint = typing.get_type_hints(RopeSpec)[key]
    for v in vals:
        if v == "None" and "None" in str(hint):
            continue
        if hint is bool or str(hint).startswith("bool"):
            ok = v in ("True", "False")
        elif "int" in str(hint) or "float" in str(hint):
            try:
                float(v)
                ok = True
            except ValueError:
                ok = False
        else:
            ok = True
        if not ok:
            raise ValueError(f"--only {key}={v!r} matches nothing: {key} is {hint}")


def _variants(text: str) -> tuple[str, ...]:
    from ropeconf.reference.variants import VARIANTS

    vals = _csv(text)
    unknown = [v for v in vals if v not in VARIANTS]
    if unknown or not vals:
        raise ValueError(f"--variants: unknown {unknown or text!r}; known: {', '.join(VARIANTS)}")
    return vals


def _positive_int(name: str) -> Callable[[str], int]:
    def parse(text: str) -> int:
        v = int(text)
        if v < 1:
            raise ValueError(f"{name} must be >= 1, got {v}")
        return v
    return parse


def _positive_float(name: str) -> Callable[[str], float]:
    def parse(text: str) -> float:
        v = float(text)
        if not v > 0:
            raise ValueError(f"{name} must be > 0, got {text}")
        return v
    return parse


def _memory(text: str) -> str:
    """'auto', 'off' or a size like 8G / 512M / 1073741824 (bytes), validated."""
    t = str(text).strip()
    if t.lower() in ("auto", "off"):
        return t.lower()
    memory_bytes(t)
    return t


def memory_bytes(text: str) -> int:
    m = re.fullmatch(r"\s*([0-9]+(?:\.[0-9]+)?)\s*([kKmMgGtT]?)[iI]?[bB]?\s*", str(text))
    if not m:
        raise ValueError(f"--memory-limit {text!r}: give a size like 8G, 512M or a number of bytes, or 'off'")
    n = float(m.group(1)) * 1024 ** " KMGT".index((m.group(2) or " ").upper())
    if n < 64 * 2 ** 20:
        raise ValueError(f"--memory-limit {text!r} is below 64M: a worker cannot even import NumPy")
    return int(n)


def _shard(text: str) -> str:
    from .shard import parse

    k, n = parse(text)
    return f"{k}/{n}"


def _opt(flag: str, help: str, parse: Callable[[str], Any] | None = None, metavar: str | None = None,
         choices: tuple[str, ...] | None = None, nargs: str | None = None, flag_type: str = "value") -> dict[str, Any]:
    return {"flag": flag, "help": help, "parse": parse, "metavar": metavar, "choices": choices, "nargs": nargs,
            "type": flag_type}


@dataclasses.dataclass
class RunConfig:
    dtypes: tuple[str, ...] = dataclasses.field(default=("float32", "bfloat16"), metadata=_opt(
        "--dtype", f"comma list of {','.join(DTYPES)} (default float32,bfloat16)", _choices("--dtype", DTYPES),
        metavar="DTYPE"))
    devices: tuple[str, ...] = dataclasses.field(default=("cpu",), metadata=_opt(
        "--device", "cpu, cuda or cpu,cuda (default cpu)", _choices("--device", DEVICES), metavar="DEVICE"))
    profile: str = dataclasses.field(default="ci", metadata=_opt(
        "--profile", "hypothesis examples per cell: " + ", ".join(f"{k} {v}" for k, v in PROFILES.items())
        + " (default ci)", choices=tuple(PROFILES)))
    max_examples: int | None = dataclasses.field(default=None, metadata=_opt(
        "--max-examples", "override the profile's examples per cell", _positive_int("--max-examples")))
    seed: int | None = dataclasses.field(default=None, metadata=_opt(
        "--seed", "hypothesis seed (default: derandomized, reproducible)", int))
    database: str | None = dataclasses.field(default=None, metadata=_opt(
        "--database", "persist hypothesis examples (failing cases replay first)", metavar="DIR"))
    golden_dir: str | None = dataclasses.field(default=None, metadata=_opt(
        "--golden-dir", "golden corpus to use (default: the installed one)", metavar="DIR"))
    only: dict[str, list[str]] = dataclasses.field(default_factory=dict, metadata=_opt(
        "--only", "restrict cases, e.g. rope_type=default,layout=half (keys: any spec key, variant, dtype, "
        "device; '|' separates values)", parse_only, metavar="K=V,..."))
    variants: tuple[str, ...] | None = dataclasses.field(default=None, metadata=_opt(
        "--variants", "comma list of variant records (default all; see `ropeconf variants`)", _variants))
    known_files: tuple[str, ...] | None = dataclasses.field(default=None, metadata=_opt(
        "--known", "known-divergence TOML files (default conformance/known/*.toml)",
        lambda v: _csv(",".join(v) if isinstance(v, (list, tuple)) else v), metavar="TOML", nargs="+"))
    skip: tuple[str, ...] = dataclasses.field(default=(), metadata={"help": "case-source groups not to run"})
    timeout: float = dataclasses.field(default=900.0, metadata=_opt(
        "--timeout", "seconds before an adapter's worker is killed (default 900)", _positive_float("--timeout")))
    case_timeout: float = dataclasses.field(default=300.0, metadata=_opt(
        "--case-timeout", "seconds one adapter call may take before its worker is killed and that case is "
        "reported as hung (default 300)", _positive_float("--case-timeout")))
    memory_limit: str = dataclasses.field(default="auto", metadata=_opt(
        "--memory-limit", "address-space limit of each worker, e.g. 8G, 512M, 'off' (default auto: 3/4 of "
        "this machine's memory on CPU runs, off with --device cuda)", _memory, metavar="SIZE"))
    require: tuple[str, ...] = dataclasses.field(default=(), metadata=_opt(
        "--require", "adapters whose being unavailable fails the run (exit 3), comma separated", _csv,
        metavar="NAME"))
    strict: bool = dataclasses.field(default=False, metadata=_opt(
        "--strict", "every adapter named with --adapter is required, and registry warnings (entries that "
        "matched nothing) fail the run", flag_type="switch"))
    diagnose: bool = dataclasses.field(default=True, metadata=_opt(
        "--diagnose", "diagnose every diverging or known cell: which catalogued convention explains it "
        "(docs/diagnosis.md; --no-diagnose skips it)", flag_type="bool"))
    allow_empty: bool = dataclasses.field(default=False, metadata=_opt(
        "--allow-empty", "an adapter named explicitly may judge zero cases (default: that exits 3)",
        flag_type="switch"))
    shard: str | None = dataclasses.field(default=None, metadata=_opt(
        "--shard", "run only shard K of N of the (adapter, variant, dtype, device) cells, split by measured "
        "cost; `ropeconf report merge` joins the N parts (docs/ci.md)", _shard, metavar="K/N"))
    cells: tuple[str, ...] | None = dataclasses.field(default=None, metadata={
        "help": "the 'variant|dtype|device' cells this adapter runs (set per adapter by --shard)"})

    # ------------------------------------------------------------------ derived
    @property
    def examples(self) -> int:
        return self.max_examples or PROFILES[self.profile]

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "RunConfig":
        """The inverse of :meth:`to_dict` (JSON turns tuples into lists)."""
        names = {f.name: f for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - set(names))
        if unknown:
            raise ValueError(f"unknown RunConfig key(s) {unknown}")
        kw = {k: (tuple(v) if isinstance(v, list) and k != "only" else v) for k, v in d.items()}
        return cls(**kw)

    # ------------------------------------------------------------------ command-line forms
    @classmethod
    def add_arguments(cls, parser: Any, prefix: str = "", pytest: bool = False) -> None:
        """Add one option per field to an argparse parser (or a pytest option group with ``pytest=True``)."""
        from .sources import GROUPS

        add = parser.addoption if pytest else parser.add_argument
        for f in dataclasses.fields(cls):
            m = f.metadata
            if "flag" not in m:
                continue
            flag = "--" + prefix + m["flag"][2:]
            kw: dict[str, Any] = {"dest": (prefix.replace("-", "_") + f.name) if not pytest else None,
                                  "default": None, "help": m["help"]}
            if m.get("type") == "switch":
                kw.update(action="store_true", default=False)
            elif m.get("type") == "bool":
                kw.update(action=argparse.BooleanOptionalAction, default=None)
            if m.get("metavar"):
                kw["metavar"] = m["metavar"]
            if m.get("choices"):
                kw["choices"] = list(m["choices"])
            if m.get("nargs"):
                kw["nargs"] = m["nargs"]
            if pytest:
                kw.pop("dest")
            add(flag, **kw)
        for group, help_ in GROUPS.items():
            kw = {"action": "store_true", "default": False, "help": f"skip {help_}"}
            if not pytest:
                kw["dest"] = prefix.replace("-", "_") + f"no_{group}"
            add(f"--{prefix}no-{group}", **kw)

    @classmethod
    def from_options(cls, get: Callable[[str], Any], prefix: str = "") -> "RunConfig":
        """Build from parsed options; ``get(name)`` returns the value of field/flag ``name`` (None if unset).

        Every value is validated by its field's parser; a bad one raises ValueError naming the flag.
        """
        from .sources import GROUPS

        kw: dict[str, Any] = {}
        for f in dataclasses.fields(cls):
            m = f.metadata
            if "flag" not in m:
                continue
            raw = get(f.name)
            if raw is None or (m.get("type") == "switch" and not raw):
                continue
            parse = m.get("parse")
            try:
                kw[f.name] = parse(raw) if parse else raw
            except (TypeError, ValueError) as e:
                msg = str(e)
                raise ValueError(msg if m["flag"] in msg else f"{m['flag']}: {msg}") from None
        kw["skip"] = tuple(g for g in GROUPS if get(f"no_{g}"))
        return cls(**kw)

    @classmethod
    def option_name(cls, name: str, prefix: str = "") -> str:
        """The flag of field (or ``no_<group>`` switch) ``name``: ``dtypes`` -> ``--<prefix>dtype``."""
        if name.startswith("no_"):
            return f"--{prefix}no-{name[3:]}"
        return "--" + prefix + cls.__dataclass_fields__[name].metadata["flag"][2:]

    @classmethod
    def from_namespace(cls, ns: argparse.Namespace) -> "RunConfig":
        return cls.from_options(lambda name: getattr(ns, name, None))
