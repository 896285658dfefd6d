"""``ropeconf run --shard K/N`` and ``report merge``: N shards merged equal one unsharded run."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from ropeconf.conformance import shard
from ropeconf.conformance.outcome import EXIT_USAGE

ADAPTERS = ["toy_rope:rope_adapter", "toy_rope:buggy_adapter", "toy_rope.stateful:CacheWithoutTheta"]
OPTS = ["--variants", "default,linear,theta500k,yarn", "--dtype", "float32,bfloat16", "--max-examples", "3",
        "--seed", "7"]


def ropeconf(*args, env=None):
    return subprocess.run([sys.executable, "-m", "ropeconf.conformance.cli", *args], capture_output=True,
                          text=True, env=env, timeout=900)


def _run_args():
    return [a for n in ADAPTERS for a in ("--adapter", n)] + OPTS


def _cells(result, exact=True):
    """Each cell's outcome, and for stateless adapters everything it reports (a stateful bug such as
    CacheWithoutTheta's shared table depends on what ran before it in the worker: its counts may
    differ, its verdict may not)."""
    return {(r["adapter"], c["variant"], c["dtype"], c["device"]):
            (c["outcome"], c.get("counts"), c.get("max_ratio"), c.get("message"))
            if exact and "stateful" not in r["adapter"] else c["outcome"]
            for r in result["adapters"] for c in r["cells"]}


# ------------------------------------------------------------------ the plan
@pytest.mark.parametrize("text, message", [("3", "give K/N"), ("0/2", "K must be in 1..N"), ("3/2", "K must be"),
                                           ("a/b", "give K/N")])
def test_bad_shard_is_a_clear_error(text, message):
    with pytest.raises(ValueError, match=message):
        shard.parse(text)


def test_the_plan_puts_every_cell_in_exactly_one_shard_deterministically():
    adapters = ["a", "b", "c"]
    cells = [(v, d, "cpu") for v in ("default", "linear", "yarn", "ntk") for d in ("float32", "bfloat16")]
    costs = {"adapters": {"a": {"startup": 5.0, "cells": {"default|float32|cpu": 30.0}},
                          "b": {"startup": 1.0, "cells": {}}}}
    for n in (1, 2, 3, 5, 40):
        p = shard.plan(adapters, cells, n, costs)
        assert p == shard.plan(adapters, cells, n, costs)          # same inputs, same plan
        flat = [ac for s in p for ac in s]
        assert sorted(flat) == sorted((a, c) for a in adapters for c in cells)  # each once
        assert len(p) == n


def test_the_plan_balances_measured_cost():
    cells = [(f"v{i}", "float32", "cpu") for i in range(12)]
    costs = {"adapters": {"slow": {"startup": 0.0, "cells": {f"v{i}|float32|cpu": 10.0 for i in range(12)}},
                          "fast": {"startup": 0.0, "cells": {f"v{i}|float32|cpu": 0.1 for i in range(12)}}}}
    p = shard.plan(["slow", "fast"], cells, 3, costs)
    loads = [sum(costs["adapters"][a]["cells"][shard.cell_key(c)] for a, c in s) for s in p]
    assert max(loads) - min(loads) <= 10.0, loads  # LPT: within one largest item
    assert all(sum(a == "slow" for a, _ in s) == 4 for s in p)  # slow cells spread evenly


def test_merge_refuses_incomplete_or_mixed_plans():
    part = lambda k, n, plan="p": {"adapters": [], "shard": {"index": k, "count": n, "plan": plan}}  # noqa: E731
    shard.check_parts([part(1, 2), part(2, 2)])
    with pytest.raises(ValueError, match="2/3 missing"):
        shard.check_parts([part(1, 3), part(3, 3)])
    with pytest.raises(ValueError, match="given twice"):
        shard.check_parts([part(1, 2), part(1, 2), part(2, 2)])
    with pytest.raises(ValueError, match="different shard plans"):
        shard.check_parts([part(1, 2), part(2, 2, plan="q")])


# ------------------------------------------------------------------ end to end
@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    toy_env = dict(os.environ)
    d = tmp_path_factory.mktemp("shard")
    whole = ropeconf("run", *_run_args(), "--json", str(d / "whole.json"), env=toy_env)
    parts = []
    for k in (1, 2, 3):
        r = ropeconf("run", *_run_args(), "--shard", f"{k}/3", "--json", str(d / f"part{k}.json"), env=toy_env)
        assert f"shard {k}/3" in r.stdout, r.stdout + r.stderr
        parts.append(r)
    return d, whole, parts


def test_three_shards_merged_equal_one_unsharded_run_cell_for_cell(runs, toy_env):
    d, whole, parts = runs
    w = json.loads((d / "whole.json").read_text())
    ps = [json.loads((d / f"part{k}.json").read_text()) for k in (1, 2, 3)]
    assert len({p["shard"]["plan"] for p in ps}) == 1
    assert sum(p["shard"]["cells"] for p in ps) == len(_cells(w)) == 3 * 4 * 2
    assert all(p["shard"]["cells"] > 0 for p in ps)
    merged = ropeconf("report", "merge", *(str(d / f"part{k}.json") for k in (1, 2, 3)),
                      "--json", str(d / "merged.json"), env=toy_env)
    m = json.loads((d / "merged.json").read_text())
    assert _cells(m) == _cells(w)
    # the order of the matrix is the unsharded one, and so is the verdict
    assert [(r["adapter"], [(c["variant"], c["dtype"]) for c in r["cells"]]) for r in m["adapters"]] == \
           [(r["adapter"], [(c["variant"], c["dtype"]) for c in r["cells"]]) for r in w["adapters"]]
    assert merged.returncode == whole.returncode != 0, merged.stdout  # the buggy toy fails both
    assert "diverges" in {c[0] for c in _cells(m).values()}


def test_a_missing_shard_cannot_make_a_merged_run_look_complete(runs, toy_env):
    d, _, _ = runs
    r = ropeconf("report", "merge", str(d / "part1.json"), str(d / "part3.json"), env=toy_env)
    assert r.returncode == EXIT_USAGE
    assert "2/3 missing" in r.stderr


def test_the_pytest_plugin_refuses_shard(toy_env, tmp_path):
    r = subprocess.run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "--pyargs", "ropeconf.conformance",
                        "--ropeconf-adapter", "toy_rope:rope_adapter", "--ropeconf-shard", "1/2", "-q"],
                       capture_output=True, text=True, env=toy_env, cwd=tmp_path, timeout=600)
    assert r.returncode != 0
    assert "--ropeconf-shard" in r.stdout + r.stderr and "pytest-xdist" in r.stdout + r.stderr


def test_merge_keeps_a_crash_and_drops_unavailable_only_when_another_part_ran_it():
    from ropeconf.conformance.report import merge

    cell = lambda v, o: {"variant": v, "dtype": "float32", "device": "cpu", "outcome": o}  # noqa: E731
    ran = {"adapters": [{"adapter": "a", "cells": [cell("default", "conforms")], "seconds": 1.0}]}
    absent = {"adapters": [{"adapter": "a", "cells": [], "unavailable": "no lib here", "seconds": 0.5}]}
    crashed = {"adapters": [{"adapter": "a", "cells": [cell("linear", "error")], "crashed": "SIGSEGV"}]}
    m = merge([absent, ran])["adapters"][0]
    assert m["unavailable"] is None and m["seconds"] == 1.5 and "_ran" not in m
    assert merge([absent, absent])["adapters"][0]["unavailable"] == "no lib here"
    assert merge([crashed, ran])["adapters"][0]["crashed"] == "SIGSEGV"      # fail closed, whatever the order
    assert merge([ran, crashed])["adapters"][0]["crashed"] == "SIGSEGV"
