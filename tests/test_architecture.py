"""docs/architecture.md kept true: one home per concept, checked where it can be."""

from __future__ import annotations

import ast
import importlib
import re
from pathlib import Path

import pytest

from ropeconf.adapters import BUILTIN, FAMILIES, family_of
from ropeconf.conformance.config import RunConfig
from ropeconf.conformance.outcome import Outcome, decide
from ropeconf.conformance.presentation import render_matrix
from ropeconf.conformance.sources import GROUPS, SOURCES
from ropeconf.reference import RopeSpec
from ropeconf.reference.frequencies import ROPE_TYPES, SCALING_KEYS
from ropeconf.reference.variants import VARIANTS

ROOT = Path(__file__).resolve().parent.parent


def test_variant_short_labels_are_unique_and_are_the_matrix_columns():
    shorts = [v.short for v in VARIANTS.values()]
    assert len(set(shorts)) == len(shorts) and all(0 < len(s) <= 6 for s in shorts)
    cells = [{"variant": n, "dtype": "float32", "device": "cpu", "outcome": "conforms"} for n in VARIANTS]
    text = render_matrix({"adapters": [{"adapter": "a", "version": "1", "cells": cells}], "seconds": 0})
    header = text.splitlines()[0].split()
    assert header[4:] == shorts


def test_outcomes_have_distinct_symbols_and_one_decision():
    assert len({o.symbol for o in Outcome}) == len(Outcome)
    assert {o.pytest for o in Outcome} <= {"pass", "fail", "xfail", "skip"}
    for o in Outcome:
        result = {"adapters": [{"adapter": "a", "cells": [{"variant": "default", "dtype": "float32",
                                                           "device": "cpu", "outcome": o.value}]}]}
        assert decide(result).exit_code == (1 if o.fails else 0), o
        assert (o.pytest == "fail") == o.fails


def test_every_source_group_has_a_switch_and_every_switch_a_source():
    assert {s.group for s in SOURCES.values()} == set(GROUPS)
    import argparse

    ap = argparse.ArgumentParser()
    RunConfig.add_arguments(ap)
    for g in GROUPS:
        ns = ap.parse_args([f"--no-{g}"])
        assert RunConfig.from_namespace(ns).skip == (g,)


def test_run_options_are_declared_once_and_round_trip():
    cfg = RunConfig(dtypes=("float64",), devices=("cpu",), profile="dev", max_examples=3, seed=7,
                    only={"layout": ["half"]}, variants=("default",), known_files=("a.toml",), skip=("golden",),
                    timeout=5.0)
    assert RunConfig.from_dict(__import__("json").loads(__import__("json").dumps(cfg.to_dict()))) == cfg


def test_every_family_has_its_module_and_every_builtin_a_family():
    for family, members in FAMILIES.items():
        mod = importlib.import_module(f"ropeconf.adapters.{family}")
        for name, attr in members.items():
            assert hasattr(mod, attr), (family, attr)
            assert BUILTIN[name] == f"ropeconf.adapters.{family}:{attr}"
    assert all(family_of(n) for n in BUILTIN)
    for toml in (ROOT / "conformance" / "known").glob("*.toml"):
        assert toml.stem in FAMILIES, f"{toml.name}: registry files are named after a family"
    for page in (ROOT / "docs" / "findings").glob("*.md"):
        assert page.stem in FAMILIES, f"{page.name}: findings pages are named after a family"


def test_every_rope_type_record_is_complete_and_the_spec_reads_it():
    for name, rt in ROPE_TYPES.items():
        assert rt.name == name and set(rt.required) <= set(rt.keys) | {"factor"}
        assert rt.keys <= SCALING_KEYS
    assert tuple(ROPE_TYPES) == __import__("ropeconf.reference", fromlist=["ROPE_TYPES"]).ROPE_TYPES
    for name, rt in ROPE_TYPES.items():
        for key in rt.required:  # each required key, when omitted, is an error naming it
            v = next((v for v in VARIANTS.values() if v.params.get("rope_type", "default") == name), None)
            if v is None:
                continue
            d = v.spec().to_dict()
            d.pop(key, None)
            if key in ("short_factor", "long_factor"):
                continue  # checked by length in the record's own check
            with pytest.raises(ValueError, match=key):
                RopeSpec.from_dict(d)


_PRIVATE_IMPORT = re.compile(r"^\s*from\s+(\.\w*|ropeconf\.\w+(\.\w+)*)\s+import\s+(.+)$")


@pytest.mark.parametrize("package", ["conformance", "reference"])
def test_no_module_imports_another_modules_private_names(package):
    for path in sorted((ROOT / package).glob("*.py")):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and (node.level or (node.module or "").startswith("ropeconf")):
                private = [a.name for a in node.names if a.name.startswith("_") and a.name != "__version__"
                           and not (path.parent / f"{a.name}.py").exists()]  # a private module of the package
                assert not private, f"{path.name} imports private {private} from {node.module}"
            if isinstance(node, ast.Attribute) and node.attr.startswith("_") and not node.attr.startswith("__"):
                base = node.value
                if isinstance(base, ast.Name) and base.id not in ("self", "cls", "obj", "np", "os", "sys"):
                    # module._private: only the package's own private modules (_exec) may be used whole
                    assert base.id.startswith("_") or node.attr.startswith("_hypothesis") or \
                        node.attr in ("_value_",), f"{path.name}: {base.id}.{node.attr}"
