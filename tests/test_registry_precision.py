"""Registry entries of kind "precision": a ceiling that a real bug cannot hide under, and *fixed* decided by
deterministic witness cases only (drawn cases may or may not cross the bound), both ways on toy libraries."""

from __future__ import annotations

import textwrap

import pytest

from ropeconf.conformance import registry
from ropeconf.conformance.adapter import FunctionAdapter
from ropeconf.conformance.cli import exit_code
from ropeconf.conformance.config import RunConfig
from ropeconf.conformance.outcome import Outcome
from ropeconf.conformance.results import CaseResult
from ropeconf.conformance.runner import Classifier, run_adapter

WITNESS = "default__half__d64r64__long"  # the toy's 8-ulp exp crosses the bound here (1.04x), short cases stay below


def _toml(tmp_path, *, kind='kind = "precision"', ceiling="max_ratio = 1.5",
          witness=f'witness = [{{ golden = "{WITNESS}", dtype = "float32" }}]'):
    p = tmp_path / "known.toml"
    p.write_text(textwrap.dedent(f"""
        [[divergence]]
        id = "toy-exp-precision"
        adapter = "*"
        library = "toy-rope"
        versions = "*"
        match = {{ dtype = "float32", rope_type = "default" }}
        reason = "float32 exp 8 ulp high"
        upstream = "tests/toy_pkg/toy_rope/precision.py"
        {kind}
        {ceiling}
        {witness}
        """))
    return p


def _run(fn, name, known, **kw):
    cfg = RunConfig(dtypes=("float32",), variants=("default",), known_files=(str(known),), max_examples=8,
                    diagnose=False, **kw)
    return run_adapter(FunctionAdapter(fn, name), cfg)


def test_precision_finding_is_known_and_a_formula_bug_above_the_ceiling_still_diverges(tmp_path):
    from toy_rope.precision import inaccurate_exp_adapter, theta_bug_adapter

    known = _toml(tmp_path)
    rep = _run(inaccurate_exp_adapter, "toy-exp", known)
    cell, cases = rep["cells"][0], rep["cases"]
    assert cell["outcome"] == "known", cell
    golden = {c["case_id"]: c for c in cases if c["source"] == "golden"}
    assert golden[WITNESS]["outcome"] == "known" and 1 < golden[WITNESS]["max_ratio"] <= 1.5
    # the short golden cases stay below the bound: matched, conforming, and no reason for "fixed"
    assert golden["default__half__d64r64__short"]["outcome"] == "conforms"
    assert exit_code({"adapters": [rep]}) == 0

    # the same entry cannot absorb a real bug: theta 10001 for 10000 is ~95x, far above the 1.5x ceiling
    rep = _run(theta_bug_adapter, "toy-theta-bug", known)
    assert rep["cells"][0]["outcome"] == "diverges"
    over = [c for c in rep["cases"] if c["outcome"] == "diverges"]
    assert over and all(c["max_ratio"] > 1.5 for c in over)
    assert all("above the ceiling 1.5x of precision entry toy-exp-precision" in c["message"] for c in over)
    assert exit_code({"adapters": [rep]}) == 1


def test_precision_entry_is_fixed_only_by_its_witness(tmp_path):
    from toy_rope import rope_adapter

    known = _toml(tmp_path)
    # a conventional implementation: the witness conforms, so the entry no longer reproduces
    rep = _run(rope_adapter, "toy-accurate", known)
    assert rep["cells"][0]["outcome"] == "fixed"
    assert {c["case_id"] for c in rep["cases"] if c["outcome"] == "fixed"} == {WITNESS}
    assert exit_code({"adapters": [rep]}) == 1
    # without the golden cases the cell has matched cases that all conform but no witness: not fixed ...
    rep = _run(rope_adapter, "toy-accurate", known, skip=("golden",))
    assert rep["cells"][0]["outcome"] == "conforms"
    # ... where a formula entry of the same scope is (its matched cases all conform)
    formula = _toml(tmp_path, kind="", ceiling="", witness="")
    rep = _run(rope_adapter, "toy-accurate", formula, skip=("golden",))
    assert rep["cells"][0]["outcome"] == "fixed"


def test_precision_entry_never_covers_an_error_and_any_entry_may_carry_a_ceiling():
    e = registry.Divergence("p", ("a",), "l", "*", {"dtype": "float32"}, "r", "u", kind="precision",
                            max_ratio=2.0, witness=(("g", "float32"),))
    f = registry.Divergence("f", ("a",), "l", "*", {"dtype": "float32"}, "r", "u", max_ratio=10.0)

    def case(outcome, ratio):
        return CaseResult("a", "default", "float32", "cpu", "property", "c", outcome, ratio,
                          spec={"head_dim": 8}, positions=[[0, 1]])

    for entries, outcome, ratio, want in [
            ([e], Outcome.DIVERGES, 1.9, Outcome.KNOWN), ([e], Outcome.DIVERGES, 2.1, Outcome.DIVERGES),
            ([e], Outcome.ERROR, None, Outcome.ERROR), ([f], Outcome.ERROR, None, Outcome.ERROR),
            ([f], Outcome.DIVERGES, 9.0, Outcome.KNOWN), ([f], Outcome.DIVERGES, 11.0, Outcome.DIVERGES),
            ([e, f], Outcome.DIVERGES, 5.0, Outcome.KNOWN)]:  # above e's ceiling, within f's: known under f
        r = Classifier(entries, "a", "1")(case(outcome, ratio))
        assert r.outcome is want, (entries, outcome, ratio)
    assert Classifier([e, f], "a", "1")(case(Outcome.DIVERGES, 5.0)).known_id == "f"


@pytest.mark.parametrize("kind,ceiling,witness,err", [
    ('kind = "precision"', "", 'witness = [{ golden = "g", dtype = "float32" }]', "needs max_ratio"),
    ('kind = "precision"', "max_ratio = 2.0", "", "needs max_ratio"),
    ('kind = "precision"', "max_ratio = 1.0", 'witness = [{ golden = "g", dtype = "float32" }]', "number > 1"),
    ('kind = "precision"', "max_ratio = 2.0", 'witness = ["g"]', "witness must be a list"),
    ('kind = "exactness"', "", "", "kind must be one of"),
    ("", "", 'witness = [{ golden = "g", dtype = "float32" }]', "witness is for"),
])
def test_precision_keys_are_validated(tmp_path, kind, ceiling, witness, err):
    with pytest.raises(registry.RegistryError, match=err):
        registry.load([_toml(tmp_path, kind=kind, ceiling=ceiling, witness=witness)])


def test_shipped_precision_witnesses_are_golden_cases_their_entry_matches():
    """A witness that is no golden case, or that its own entry does not match, could never show the entry fixed."""
    import dataclasses

    from ropeconf.conformance.sources import spec_fields
    from ropeconf.golden_data import corpus

    cases = {c["id"]: (c, arrays) for c, arrays in corpus.iter_cases(None)}
    precision = [e for e in registry.load() if e.kind == "precision"]
    assert precision  # MLX and ggml register theirs this way
    for e in precision:
        any_version = dataclasses.replace(e, versions="*")  # the match alone, whatever version is installed
        for case_id, dtype in e.witness:
            assert case_id in cases, (e.id, case_id)
            c, arrays = cases[case_id]
            fields = spec_fields(c["spec"], c["variant"], dtype, "cpu", arrays["positions"], "query", "golden")
            assert any_version.applies(e.adapter[0], "0", fields), (e.id, case_id, dtype)


def test_a_witness_that_is_no_golden_case_is_a_usage_error(tmp_path, toy_env):
    """A misspelt witness would leave a precision entry that can never be reported fixed: refused (exit 2)."""
    import subprocess
    import sys

    from ropeconf.conformance.outcome import EXIT_USAGE

    known = _toml(tmp_path, witness='witness = [{ golden = "default__half__d64r64__lnog", dtype = "float32" }]')
    r = subprocess.run([sys.executable, "-m", "ropeconf.conformance.cli", "run", "--adapter",
                        "toy_rope.precision:inaccurate_exp_adapter", "--variants", "default", "--dtype", "float32",
                        "--known", str(known)], capture_output=True, text=True, env=toy_env, timeout=300)
    assert r.returncode == EXIT_USAGE and "default__half__d64r64__lnog" in r.stderr + r.stdout, r.stderr
