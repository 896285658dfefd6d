"""Bugs that live in state, keys and parameter values (tests/toy_pkg/toy_rope/stateful.py).

Each planted bug must be caught by ``ropeconf run`` with its variant run alone, and the
correct toy must be cleared; a failing call sequence is shrunk and replayable.
"""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from ropeconf.conformance.config import RunConfig
from ropeconf.conformance.outcome import EXIT_FAIL, EXIT_OK
from ropeconf.conformance.runner import run_adapter
from ropeconf.conformance.sources import run_scenario
from ropeconf.reference import RopeSpec

T = "toy_rope.stateful:"


def ropeconf(*args, env=None, timeout=600):
    return subprocess.run([sys.executable, "-m", "ropeconf.conformance.cli", *args], capture_output=True,
                          text=True, env=env, timeout=timeout)


@pytest.mark.parametrize("adapter, variant, how", [
    ("CacheWithoutTheta", "theta500k", "two_specs"),          # 1. cache keyed without theta
    ("CacheIgnoresDtype", "default", "dtype_switch"),         # 2. a reused module ignores the dtype
    ("HardcodedBetaFast", "yarn", "property"),                # 3. a parameter value the variant never varied
    ("key_side_xpos_bug", "xpos", "key"),                     # 4. the key role
    ("DynamicNeverResets", "dynamic", "grow_then_short"),     # 5. dynamic state that never resets
])
def test_each_planted_bug_is_caught_with_its_variant_alone(adapter, variant, how, tmp_path, toy_env):
    out = tmp_path / "r.json"
    r = ropeconf("run", "--adapter", T + adapter, "--variants", variant, "--dtype", "float32", "--json", str(out),
                 env=toy_env)
    assert r.returncode == EXIT_FAIL, r.stdout + r.stderr
    rep = json.loads(out.read_text())["adapters"][0]
    cell = rep["cells"][0]
    assert cell["outcome"] == "diverges"
    failing = [c for c in rep["cases"] if c["outcome"] == "diverges"]
    if how == "key":  # golden, property and stateful cases fail in the key role only
        judged = [c for c in failing if not c["source"].startswith("metamorphic")]
        assert judged and all(c["role"] == "key" for c in judged), [(c["source"], c["role"]) for c in judged]
    elif how == "property":
        assert any(c["source"] == "property" for c in failing)
    else:
        stateful = [c for c in failing if c["source"] == "stateful"]
        assert stateful and any(c["scenario"]["kind"] == how for c in stateful), [c["case_id"] for c in failing]


def test_the_correct_toy_is_cleared(tmp_path, toy_env):
    out = tmp_path / "r.json"
    r = ropeconf("run", "--adapter", T + "CorrectToy", "--variants", "default,theta500k,dynamic,yarn,xpos",
                 "--dtype", "float32,bfloat16", "--json", str(out), env=toy_env)
    assert r.returncode == EXIT_OK, r.stdout + r.stderr
    cases = json.loads(out.read_text())["adapters"][0]["cases"]
    sources = {c["source"] for c in cases}
    assert {"golden", "property", "stateful"} <= sources
    kinds = {c["scenario"]["kind"] for c in cases if c["source"] == "stateful"}
    assert kinds == {"decode", "ragged", "grow_then_short", "dtype_switch", "two_specs", "restart"}
    assert {c["role"] for c in cases if c["variant"] == "xpos"} == {"query", "key"}


def test_a_failing_sequence_is_shrunk_and_replays(tmp_path, toy_env):
    out = tmp_path / "r.json"
    r = ropeconf("run", "--adapter", T + "DynamicNeverResets", "--variants", "dynamic", "--dtype", "float32",
                 "--no-golden", "--no-properties", "--json", str(out), env=toy_env)
    assert r.returncode == EXIT_FAIL
    line = next(ln for ln in r.stdout.splitlines() if "ropeconf replay" in ln and "scenario" in ln)
    case = line.split("--case '", 1)[1].rstrip("'")
    scenario = json.loads(case)["scenario"]
    assert scenario["kind"] == "grow_then_short" and len(scenario["calls"]) <= 3  # shrunk: grow, then short
    rr = ropeconf("replay", "--adapter", T + "DynamicNeverResets", "--case", case, env=toy_env)
    assert rr.returncode == EXIT_FAIL and '"diverges"' in rr.stdout
    rc = ropeconf("replay", "--adapter", T + "CorrectToy", "--case", case, env=toy_env)
    assert rc.returncode == EXIT_OK and '"diverges"' not in rc.stdout


def test_every_call_is_judged_for_exactly_that_call():
    """The second call of a grow-then-short sequence is judged at its own length (the state must reset)."""
    from toy_rope.stateful import CorrectToy, DynamicNeverResets

    spec = RopeSpec(head_dim=64, rope_type="dynamic", factor=4.0, original_max_position_embeddings=256)
    scenario = {"kind": "grow_then_short", "instances": [spec],
                "calls": [{"instance": 0, "positions": [list(range(600, 604))], "dtype": "float32"},
                          {"instance": 0, "positions": [list(range(100, 104))], "dtype": "float32"}]}
    good = run_scenario(CorrectToy(), scenario, "cpu")
    bad = run_scenario(DynamicNeverResets(), scenario, "cpu")
    assert [r.outcome for r in good] == ["conforms", "conforms"]
    assert [r.outcome for r in bad] == ["conforms", "diverges"]


def test_a_broken_case_source_is_an_error_not_a_pass(monkeypatch):
    from ropeconf.conformance import strategies

    def broken(*a, **k):
        raise RuntimeError("strategy bug")

    monkeypatch.setattr(strategies, "scenario_for", broken)
    from toy_rope.stateful import CorrectToy

    rep = run_adapter(CorrectToy(), RunConfig(variants=("default",), dtypes=("float32",),
                                              skip=("golden", "properties", "metamorphic")))
    assert rep["cells"][0]["outcome"] == "error"
    assert any("the case source stateful" in c["message"] for c in rep["cases"])


def test_function_adapters_receive_role_and_the_full_dict():
    from ropeconf.conformance.adapter import FunctionAdapter

    seen = []

    def f(x, positions, spec, role="query"):
        seen.append((role, sorted(spec)))
        return x

    a = FunctionAdapter(f)
    spec = RopeSpec(head_dim=8, rope_type="llama3", factor=8.0, original_max_position_embeddings=64,
                    low_freq_factor=1.0, high_freq_factor=4.0)
    a.call(np.zeros((1, 1, 1, 8), np.float32), np.zeros((1, 1), np.int64), spec, dtype="float32", role="key")
    role, keys = seen[0]
    assert role == "key" and {"low_freq_factor", "high_freq_factor", "rope_theta", "factor"} <= set(keys)
    assert "beta_fast" not in keys  # another rope type's key


def test_env_applies_to_module_attr_adapters(tmp_path, toy_env):
    """A module:attr adapter's ropeconf_env reaches its worker before the module is imported again."""
    out = tmp_path / "r.json"
    r = ropeconf("run", "--adapter", "toy_rope.envcheck:rope_adapter", "--variants", "default", "--dtype", "float32",
                 "--max-examples", "2", "--json", str(out), env=toy_env)
    assert r.returncode == EXIT_OK, r.stdout + r.stderr
    assert json.loads(out.read_text())["adapters"][0]["cells"][0]["outcome"] == "conforms"


def test_replay_of_a_dtype_switch_judges_the_cells_dtype_and_never_nothing(toy_env):
    """A run's replay line names the cell's dtype: the coarse set-up call is made, not judged, and the
    stale table shows in the judged call; a dtype no call has judges nothing and exits 3, never 0."""
    from ropeconf.conformance.outcome import EXIT_NOT_CHECKED

    spec = {"head_dim": 8, "rotary_dim": 8, "layout": "half", "rope_type": "default"}
    calls = [{"instance": 0, "positions": [list(range(300))], "dtype": d, "seed": k + 1}
             for k, d in enumerate(("bfloat16", "float32"))]
    case = {"scenario": {"kind": "dtype_switch", "instances": [spec], "calls": calls}, "device": "cpu"}
    bad = ropeconf("replay", "--adapter", T + "CacheIgnoresDtype", "--case", json.dumps({**case, "dtype": "float32"}),
                   env=toy_env)
    assert bad.returncode == EXIT_FAIL and '"diverges"' in bad.stdout and '"bfloat16"' not in bad.stdout, bad.stdout
    good = ropeconf("replay", "--adapter", T + "CorrectToy", "--case", json.dumps({**case, "dtype": "float32"}),
                    env=toy_env)
    assert good.returncode == EXIT_OK, good.stdout + good.stderr
    none = ropeconf("replay", "--adapter", T + "CorrectToy", "--case", json.dumps({**case, "dtype": "float16"}),
                    env=toy_env)
    assert none.returncode == EXIT_NOT_CHECKED and "nothing judged" in none.stderr
