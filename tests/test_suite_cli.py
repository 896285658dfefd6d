"""The CLI, the runner's isolation, the registry and the pytest plugin, on toy adapters."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest

from ropeconf.conformance import registry
from ropeconf.conformance.adapter import FunctionAdapter, load_adapter
from ropeconf.conformance.runner import RunConfig, parse_only, run_adapter, run_isolated

FAST = ["--variants", "default,linear", "--profile", "ci", "--max-examples", "3"]


def ropeconf(*args, env=None, timeout=300):
    return subprocess.run([sys.executable, "-m", "ropeconf.conformance.cli", *args], capture_output=True,
                          text=True, env=env, timeout=timeout)


def test_run_conforming_adapter_exits_0(tmp_path, toy_env):
    r = ropeconf("run", "--adapter", "toy_rope:rope_adapter", *FAST, "--json", str(tmp_path / "r.json"), env=toy_env)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "ok" in r.stdout and "default" in r.stdout
    res = json.loads((tmp_path / "r.json").read_text())
    cells = {(c["variant"], c["dtype"]): c["outcome"] for c in res["adapters"][0]["cells"]}
    assert cells[("default", "float32")] == "conforms"
    assert cells[("linear", "float32")] == "unsupported"  # declared, not passed


def test_run_diverging_adapter_exits_1_with_replayable_minimal_case(tmp_path, toy_env):
    out = tmp_path / "r.json"
    r = ropeconf("run", "--adapter", "toy_rope:buggy_adapter", *FAST, "--json", str(out), env=toy_env)
    assert r.returncode == 1, r.stdout + r.stderr
    assert "DIV" in r.stdout and "ropeconf replay" in r.stdout
    res = json.loads(out.read_text())
    cell = next(c for c in res["adapters"][0]["cells"] if c["variant"] == "default" and c["dtype"] == "bfloat16")
    assert cell["outcome"] == "diverges" and cell["max_ratio"] > 1
    line = next(ln for ln in r.stdout.splitlines() if "ropeconf replay" in ln and "bfloat16" in ln)
    case = line.split("--case '", 1)[1].rstrip("'")
    rr = ropeconf("replay", "--adapter", "toy_rope:buggy_adapter", "--case", case, env=toy_env)
    assert rr.returncode == 1 and '"diverges"' in rr.stdout


def test_minimal_property_case_is_shrunk(toy_env):
    cfg = RunConfig(dtypes=("bfloat16",), variants=("default",), skip=("golden", "metamorphic"), max_examples=30)
    from toy_rope import buggy_adapter

    rep = run_adapter(FunctionAdapter(buggy_adapter, "buggy"), cfg)
    m = rep["cells"][0]["minimal"]
    assert m["case_id"].endswith(":minimal")
    pos = m["positions"]
    # shrinking reaches a small case: one batch row, few tokens
    assert len(pos) == 1 and len(pos[0]) <= 2


@pytest.mark.parametrize("args", [["run", "--dtype", "float8"], ["run", "--device", "tpu"],
                                  ["run", "--adapter", "no_such_adapter_xyz"], ["run", "--only", "layout"],
                                  ["run", "--variants", "nope"], ["frobnicate"]])
def test_usage_errors_exit_2(args, toy_env):
    r = ropeconf(*args, env=toy_env)
    assert r.returncode == 2, r.stdout + r.stderr


def test_only_restricts_cases():
    assert parse_only("rope_type=default,layout=half|interleaved") == \
        {"rope_type": ["default"], "layout": ["half", "interleaved"]}
    from toy_rope import rope_adapter

    cfg = RunConfig(dtypes=("float32",), variants=("default",), skip=("properties", "metamorphic"),
                    only={"head_dim": ["96"]})
    rep = run_adapter(FunctionAdapter(rope_adapter, "toy"), cfg)
    assert rep["cases"] and all(c["spec"]["head_dim"] == 96 for c in rep["cases"])


def test_isolation_crash_hang_and_missing_library_do_not_stop_the_run(toy_env):
    cfg = RunConfig(dtypes=("float32",), variants=("default",), skip=("golden", "metamorphic"), max_examples=2,
                    timeout=20)
    names = ["toy_rope.faulty:crashing_adapter", "toy_rope.faulty:hanging_adapter",
             "toy_rope.faulty:raising_adapter", "toy_rope.faulty:MissingLibraryAdapter", "toy_rope:rope_adapter"]
    reps = run_isolated(names, cfg, jobs=2)
    out = {r["adapter"]: r["cells"][0] for r in reps}
    assert out[names[0]]["outcome"] == "error" and "exited with status 139" in out[names[0]]["message"]
    assert out[names[1]]["outcome"] == "error" and "timed out" in out[names[1]]["message"]
    assert out[names[2]]["outcome"] == "error" and "kernel not implemented" in out[names[2]]["message"]
    assert out[names[3]]["outcome"] == "unavailable" and "no_such_module_for_ropeconf" in out[names[3]]["message"]
    assert out[names[4]]["outcome"] == "conforms"


def _registry(tmp_path, match):
    p = tmp_path / "k.toml"
    p.write_text(textwrap.dedent(f"""
        [[divergence]]
        id = "toy-bf16-positions"
        adapter = "buggy*"
        library = "toy-rope"
        versions = "*"
        match = {match}
        reason = "positions formed in bfloat16"
        upstream = "tests/toy_pkg"
        """))
    return p


def test_registry_known_and_fixed(tmp_path):
    from toy_rope import buggy_adapter, rope_adapter

    known = _registry(tmp_path, '{ dtype = "bfloat16", rope_type = "default" }')
    cfg = RunConfig(dtypes=("bfloat16",), variants=("default",), known_files=(str(known),), max_examples=3)
    rep = run_adapter(FunctionAdapter(buggy_adapter, "buggy"), cfg)
    assert rep["cells"][0]["outcome"] == "known"
    # the same entry against a correct implementation: it no longer reproduces -> "fixed", which fails a run
    rep = run_adapter(FunctionAdapter(rope_adapter, "buggy-but-fixed"), cfg)
    assert rep["cells"][0]["outcome"] == "fixed"
    from ropeconf.conformance.cli import exit_code

    assert exit_code({"adapters": [rep]}) == 1


def test_registry_schema_is_enforced(tmp_path):
    p = tmp_path / "bad.toml"
    p.write_text('[[divergence]]\nid = "x"\nadapter = "a"\n')
    with pytest.raises(ValueError, match="lacks"):
        registry.load([p])


def test_shipped_registry_loads():
    entries = registry.load()
    for e in entries:
        assert e.reason and e.upstream and e.versions


def test_load_adapter_forms():
    from toy_rope import rope_adapter

    # the name an adapter was loaded by is its name in reports, replay commands and the registry
    assert load_adapter("toy_rope:rope_adapter").name == "toy_rope:rope_adapter"
    assert load_adapter(rope_adapter).capabilities.layouts == ("half",)
    with pytest.raises(ValueError, match="no attribute"):
        load_adapter("toy_rope:nope")


def test_list_reports_availability_and_reasons(toy_env):
    r = ropeconf("list", env=toy_env, timeout=600)
    assert r.returncode == 0
    assert "adapter" in r.stdout and "zeta" in r.stdout


def test_report_compare_puts_regressions_first(tmp_path):
    from ropeconf.conformance.report import compare, merge

    cell = {"variant": "default", "dtype": "float32", "device": "cpu"}
    old = {"adapters": [{"adapter": "a", "version": "1", "cells": [{**cell, "outcome": "conforms"},
                                                                     {**cell, "dtype": "bfloat16", "outcome": "diverges"}]}]}
    new = {"adapters": [{"adapter": "a", "version": "2", "cells": [{**cell, "outcome": "diverges", "message": "m"},
                                                                     {**cell, "dtype": "bfloat16", "outcome": "conforms"}]}]}
    text, n = compare(old, new)
    assert n == 1 and text.index("Regressions") < text.index("Improvements")
    assert "version 1 -> 2" in text
    merged = merge([old, {"adapters": [{"adapter": "b", "version": "1", "cells": [{**cell, "outcome": "conforms"}]}]}])
    assert [a["adapter"] for a in merged["adapters"]] == ["a", "b"]
    (tmp_path / "o.json").write_text(json.dumps(old))
    (tmp_path / "n.json").write_text(json.dumps(new))
    r = ropeconf("report", "compare", str(tmp_path / "o.json"), str(tmp_path / "n.json"))
    assert r.returncode == 1 and "Regressions (1)" in r.stdout


pytest_plugins = ["pytester"]


def test_pytest_plugin_gates_and_writes_junit(pytester, toy_env):
    pytester.syspathinsert(str(__import__("toy_rope").__path__[0] + "/.."))
    junit = pytester.path / "rope.xml"
    args = ["--pyargs", "ropeconf.conformance",
            "--ropeconf-variants=default,linear", "--ropeconf-dtype=float32", "--ropeconf-max-examples=3",
            "-p", "no:cacheprovider", "-p", "no:randomly"]
    ok = pytester.runpytest_subprocess(*args, "--ropeconf-adapter=toy_rope:rope_adapter", f"--junitxml={junit}")
    ok.assert_outcomes(passed=2, skipped=1)  # default cell, the adapter as a whole; linear is unsupported
    assert junit.exists() and "testcase" in junit.read_text()
    bad = pytester.runpytest_subprocess(*args, "--ropeconf-adapter=toy_rope:buggy_adapter",
                                        "--ropeconf-dtype=bfloat16")
    bad.assert_outcomes(failed=1, passed=1, skipped=1)
    bad.stdout.fnmatch_lines(["*diverges*", "*ropeconf replay*"])
    # an adapter named here that judges nothing (every cell unsupported) fails, unless --ropeconf-allow-empty
    empty = pytester.runpytest_subprocess(*args, "--ropeconf-adapter=toy_rope:rope_adapter",
                                          "--ropeconf-variants=linear")
    empty.assert_outcomes(failed=1, skipped=1)
    empty.stdout.fnmatch_lines(["*named explicitly but judged no case*"])
    allowed = pytester.runpytest_subprocess(*args, "--ropeconf-adapter=toy_rope:rope_adapter",
                                            "--ropeconf-variants=linear", "--ropeconf-allow-empty")
    allowed.assert_outcomes(passed=1, skipped=1)


def _planted(fn):
    from toy_rope import rope_adapter

    def adapter(x, positions, spec):
        return fn(x, positions, spec, rope_adapter)

    adapter.ropeconf_capabilities = rope_adapter.ropeconf_capabilities
    return FunctionAdapter(adapter, "planted")


@pytest.mark.parametrize("bug,check", [
    # output scaled by 1.001: not a rotation any more
    (lambda x, p, s, f: (f(x, p, s).astype(float) * 1.001).astype(x.dtype), "norm_preservation"),
    # ignores where the chunk starts (always rotates from position 0)
    (lambda x, p, s, f: f(x, p - p[:, :1], s), "offset_composition"),
    # angle grows with p**2 / 4096: q.k then depends on absolute positions
    (lambda x, p, s, f: f(x, p + p * p // 4096, s), "relative_invariance"),
], ids=["norm", "offset", "relative"])
def test_metamorphic_checks_catch_planted_bugs(bug, check):
    cfg = RunConfig(dtypes=("float32",), variants=("default",), skip=("golden", "properties"))
    rep = run_adapter(_planted(bug), cfg)
    outcomes = {c["source"]: c["outcome"] for c in rep["cases"]}
    assert outcomes[f"metamorphic:{check}"] == "diverges", outcomes
    from toy_rope import rope_adapter

    good = run_adapter(FunctionAdapter(rope_adapter, "toy"), cfg)
    assert {c["outcome"] for c in good["cases"]} == {"conforms"}


def test_parallel_workers_share_the_cores_unless_the_user_sized_the_pools(tmp_path, toy_env):
    """Two workers on the machine each get cores // 2 threads (OMP/MKL/OpenBLAS/TF): sized to the whole
    machine they oversubscribe it.  A value the user exported wins."""
    from ropeconf.conformance.runner import worker_threads

    assert worker_threads(2, 30, cpus=2) == 1 and worker_threads(2, 30, cpus=16) == 8
    assert worker_threads(4, 1, cpus=16) == 16 and worker_threads(8, 30, cpus=2) == 1
    env = {k: v for k, v in toy_env.items() if k != "OMP_NUM_THREADS"}
    want = worker_threads(2, 2)
    args = ["run", "--adapter", "toy_rope.envcheck:threads_adapter", "toy_rope:rope_adapter", "--jobs", "2",
            "--variants", "default", "--dtype", "float32", "--max-examples", "2"]
    r = ropeconf(*args, env={**env, "TOY_ROPE_THREADS": str(want)})
    assert r.returncode == 0, r.stdout + r.stderr
    r = ropeconf(*args, env={**env, "TOY_ROPE_THREADS": "7", "OMP_NUM_THREADS": "7"})
    assert r.returncode == 0, r.stdout + r.stderr
    # and the check can fail: a worker that does not get what the adapter expects errors
    r = ropeconf(*args, env={**env, "TOY_ROPE_THREADS": str(want + 5)})
    assert r.returncode == 1 and "OMP_NUM_THREADS" in r.stdout, r.stdout
