"""A green run must mean "conforms": every path outside the library's own answer fails closed.

One test per way a wrong or broken adapter, input file or option used to come out green
(or take the whole run down), each asserting the exit code and the message.  The hostile
adapters live in tests/toy_pkg/hostile.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from ropeconf.conformance import registry
from ropeconf.conformance.config import RunConfig
from ropeconf.conformance.outcome import EXIT_FAIL, EXIT_NOT_CHECKED, EXIT_OK, EXIT_USAGE
from ropeconf.conformance.runner import run_adapter
from ropeconf.golden_data import corpus
from ropeconf.reference import RopeSpec

ONE = ["--variants", "default", "--dtype", "float32", "--max-examples", "2", "--no-metamorphic"]
H = "hostile.adapters:"


def ropeconf(*args, env=None, timeout=600, cwd=None):
    return subprocess.run([sys.executable, "-m", "ropeconf.conformance.cli", *args], capture_output=True,
                          text=True, env=env, timeout=timeout, cwd=cwd)


@pytest.fixture
def env(toy_env, tmp_path):
    """The toy packages on the path and a private TMPDIR (to see that no temp dir is left behind)."""
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    return dict(toy_env, TMPDIR=str(tmp), HOSTILE_PID_FILE=str(tmp_path / "pids"))


def _report(path: Path, name: str) -> dict:
    return next(r for r in json.loads(path.read_text())["adapters"] if r["adapter"] == name)


def _no_ropeconf_temp_left(env) -> None:
    left = [p.name for p in Path(env["TMPDIR"]).glob("ropeconf-run-*")]
    assert not left, f"temp dirs left behind: {left}"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # a zombie (already dead, not yet reaped by init) counts as gone
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except OSError:
        return False


# ----------------------------------------------------------------------------- configuration: exit 2 first
def test_malformed_known_file_is_a_usage_error(tmp_path, env):
    bad = tmp_path / "bad.toml"
    bad.write_text("[[divergence]\nid = ")
    r = ropeconf("run", "--adapter", "toy_rope:rope_adapter", *ONE, "--known", str(bad), env=env)
    assert r.returncode == EXIT_USAGE and "not valid TOML" in r.stderr and "bad.toml" in r.stderr
    assert "adapter" not in r.stdout  # nothing ran


def test_unknown_keys_in_known_file_are_usage_errors(tmp_path, env):
    entry = ('[[divergence]]\nid = "x"\nadapter = "toy*"\nlibrary = "toy"\nversions = "*"\nreason = "r"\n'
             'upstream = "u"\n')
    f = tmp_path / "k.toml"
    f.write_text(entry + 'match = { rope_typ = "default" }\n')
    r = ropeconf("run", "--adapter", "toy_rope:rope_adapter", *ONE, "--known", str(f), env=env)
    assert r.returncode == EXIT_USAGE and "unknown match key(s) ['rope_typ']" in r.stderr
    f.write_text(entry + 'match = { dtype = "*" }\nmagnitud = "big"\n')
    r = ropeconf("run", "--adapter", "toy_rope:rope_adapter", *ONE, "--known", str(f), env=env)
    assert r.returncode == EXIT_USAGE and "unknown key(s) ['magnitud']" in r.stderr


@pytest.mark.parametrize("only, message", [
    ("rope_type=defualt", "matches nothing: rope_type is one of"),
    ("rope_typ=default", "unknown key 'rope_typ'"),
    ("variant=nope", "matches nothing: variant is one of"),
    ("head_dim=sixty", "head_dim='sixty' matches nothing"),
])
def test_only_typos_are_usage_errors(only, message, env):
    r = ropeconf("run", "--adapter", "toy_rope:rope_adapter", *ONE, "--only", only, env=env)
    assert r.returncode == EXIT_USAGE and message in r.stderr, r.stderr


@pytest.mark.parametrize("args, message", [
    (["--timeout", "-1"], "--timeout must be > 0"),
    (["--case-timeout", "0"], "--case-timeout must be > 0"),
    (["--memory-limit", "lots"], "--memory-limit 'lots'"),
    (["--jobs", "0"], "must be >= 1"),
    (["--require", "hf"], "--require hf: not among the adapters"),
])
def test_bad_run_options_are_usage_errors(args, message, env):
    r = ropeconf("run", "--adapter", "toy_rope:rope_adapter", *ONE, *args, env=env)
    assert r.returncode == EXIT_USAGE and message in r.stderr, r.stderr


def test_output_paths_are_checked_before_the_run(tmp_path, env):
    r = ropeconf("run", "--adapter", "toy_rope:rope_adapter", *ONE, "--json", str(tmp_path / "no" / "r.json"),
                 env=env)
    assert r.returncode == EXIT_USAGE and "does not exist" in r.stderr and "adapter" not in r.stdout
    r = ropeconf("run", "--adapter", "toy_rope:rope_adapter", *ONE, "--report", str(tmp_path), env=env)
    assert r.returncode == EXIT_USAGE and "is a directory" in r.stderr


def test_unknown_adapter_module_is_a_usage_error_without_importing(env):
    r = ropeconf("run", "--adapter", "no_such_module_xyz:f", *ONE, env=env)
    assert r.returncode == EXIT_USAGE and "no module 'no_such_module_xyz'" in r.stderr


# ----------------------------------------------------------------------------- nothing judged: exit 3
def test_every_cell_unsupported_exits_3(env):
    r = ropeconf("run", "--adapter", H + "undeclared", "--variants", "default", "--dtype", "float64", env=env)
    assert r.returncode == EXIT_NOT_CHECKED, r.stdout + r.stderr
    assert "named explicitly but judged no case" in r.stdout
    r = ropeconf("run", "--adapter", H + "undeclared", "--variants", "default", "--dtype", "float64",
                 "--allow-empty", env=env)
    assert r.returncode == EXIT_OK


def test_an_unavailable_named_adapter_exits_3_and_require_makes_it_fatal(env):
    r = ropeconf("run", "--adapter", "toy_rope.faulty:MissingLibraryAdapter", "toy_rope:rope_adapter", *ONE,
                 env=env)
    assert r.returncode == EXIT_NOT_CHECKED and "no_such_module_for_ropeconf" in r.stdout
    r = ropeconf("run", "--adapter", "toy_rope.faulty:MissingLibraryAdapter", "toy_rope:rope_adapter", *ONE,
                 "--require", "toy_rope.faulty:MissingLibraryAdapter", "--allow-empty", env=env)
    assert r.returncode == EXIT_NOT_CHECKED and "required but unavailable" in r.stdout


def test_the_default_run_lists_unavailable_adapters_without_failing(env):
    r = ropeconf("run", "--skip-adapter", *[n for n in __import__("ropeconf.adapters").adapters.BUILTIN
                                             if n not in ("flash-attn", "te")],
                 "--variants", "default", "--dtype", "float32", "--no-golden", "--max-examples", "1", env=env)
    assert r.returncode == EXIT_OK, r.stdout + r.stderr
    assert "Unavailable adapters:" in r.stdout and "flash-attn" in r.stdout
    r = ropeconf("run", "--skip-adapter", *[n for n in __import__("ropeconf.adapters").adapters.BUILTIN
                                             if n not in ("flash-attn", "te")],
                 "--variants", "default", "--dtype", "float32", "--no-golden", "--max-examples", "1",
                 "--require", "te", env=env)
    assert r.returncode == EXIT_NOT_CHECKED and "te: required but unavailable" in r.stdout


# ----------------------------------------------------------------------------- failures outside run() are errors
def test_capability_typo_is_an_error_not_unavailable(tmp_path, env):
    out = tmp_path / "r.json"
    r = ropeconf("run", "--adapter", H + "capability_typo", *ONE, "--json", str(out), env=env)
    assert r.returncode == EXIT_FAIL
    rep = _report(out, H + "capability_typo")
    assert rep["cells"][0]["outcome"] == "error" and "arbitary" in rep["cells"][0]["message"]
    assert "unavailable" not in rep


def test_why_unsupported_that_raises_is_an_error(tmp_path, env):
    out = tmp_path / "r.json"
    r = ropeconf("run", "--adapter", H + "RaisingWhyUnsupported", *ONE, "--json", str(out), env=env)
    assert r.returncode == EXIT_FAIL
    cell = _report(out, H + "RaisingWhyUnsupported")["cells"][0]
    assert cell["outcome"] == "error" and "bug in why_unsupported" in cell["message"]


@pytest.mark.parametrize("fn", ["system_exit_zero", "keyboard_interrupt"])
def test_system_exit_and_keyboard_interrupt_are_errors_of_the_cell_in_process(fn, tmp_path, env):
    out = tmp_path / "r.json"
    r = ropeconf("run", "--adapter", H + fn, "toy_rope:rope_adapter", *ONE, "--in-process", "--json", str(out),
                 env=env)
    assert r.returncode == EXIT_FAIL and "adapter " in r.stdout  # the matrix was printed
    assert _report(out, H + fn)["cells"][0]["outcome"] == "error"
    assert _report(out, "toy_rope:rope_adapter")["cells"][0]["outcome"] == "conforms"


@pytest.mark.parametrize("fn, message", [
    ("complex_output", "complex array"),
    ("float64_output", "returned float64 for a float32 case"),
    ("object_output", "dtype object"),
])
def test_output_of_the_wrong_kind_is_an_error(fn, message, tmp_path, env):
    out = tmp_path / "r.json"
    r = ropeconf("run", "--adapter", H + fn, *ONE, "--json", str(out), env=env)
    assert r.returncode == EXIT_FAIL
    cell = _report(out, H + fn)["cells"][0]
    assert cell["outcome"] == "error" and message in cell["message"], cell["message"]


def test_an_adapter_that_writes_into_its_inputs_cannot_change_what_it_is_judged_against(tmp_path, env):
    out = tmp_path / "r.json"
    r = ropeconf("run", "--adapter", H + "mutates_inputs", "--variants", "default", "--dtype", "float32",
                 "--max-examples", "2", "--json", str(out), env=env)
    assert r.returncode == EXIT_FAIL
    assert _report(out, H + "mutates_inputs")["cells"][0]["outcome"] == "diverges"


# ----------------------------------------------------------------------------- isolation
def test_crash_and_hang_at_import_happen_in_the_worker(tmp_path, env):
    out = tmp_path / "r.json"
    r = ropeconf("run", "--adapter", "hostile.crash_at_import:rope", "hostile.hang_at_import:rope",
                 "toy_rope:rope_adapter", *ONE, "--timeout", "15", "--json", str(out), env=env)
    assert r.returncode == EXIT_FAIL, r.stdout + r.stderr
    crash = _report(out, "hostile.crash_at_import:rope")
    hang = _report(out, "hostile.hang_at_import:rope")
    assert "SIGSEGV" in crash["crashed"] and crash["cells"][0]["outcome"] == "error"
    assert "timed out after 15 s" in hang["crashed"] and hang["cells"][0]["outcome"] == "error"
    assert _report(out, "toy_rope:rope_adapter")["cells"][0]["outcome"] == "conforms"
    _no_ropeconf_temp_left(env)


def test_a_crash_names_the_signal_and_the_case(tmp_path, env):
    out = tmp_path / "r.json"
    r = ropeconf("run", "--adapter", H + "segfault_in_call", *ONE, "--json", str(out), env=env)
    assert r.returncode == EXIT_FAIL
    rep = _report(out, H + "segfault_in_call")
    assert "worker killed by SIGSEGV while running" in rep["crashed"] and '"source":"golden"' in rep["crashed"]


def test_non_utf8_stderr_and_garbage_result_are_that_adapters_errors(tmp_path, env):
    out = tmp_path / "r.json"
    r = ropeconf("run", "--adapter", H + "non_utf8_stderr", H + "garbage_result", "toy_rope:rope_adapter", *ONE,
                 "--json", str(out), env=env)
    assert r.returncode == EXIT_FAIL, r.stdout + r.stderr
    assert "exited with status 3" in _report(out, H + "non_utf8_stderr")["crashed"]
    assert "\ufffd" in _report(out, H + "non_utf8_stderr")["crashed"]  # decoded with replacement
    g = _report(out, H + "garbage_result")
    assert g["cells"][0]["outcome"] == "error" and "result file is unreadable" in g["cells"][0]["message"]
    assert _report(out, "toy_rope:rope_adapter")["cells"][0]["outcome"] == "conforms"


def test_a_hung_case_is_named_and_finished_cells_are_kept(tmp_path, env):
    out = tmp_path / "r.json"
    r = ropeconf("run", "--adapter", H + "hangs_on_bfloat16", "--variants", "default,theta500k",
                 "--dtype", "float32,bfloat16", "--max-examples", "2", "--no-metamorphic", "--no-stateful",
                 "--case-timeout", "8", "--json", str(out), env=env)
    assert r.returncode == EXIT_FAIL
    cells = {(c["variant"], c["dtype"]): c for c in _report(out, H + "hangs_on_bfloat16")["cells"]}
    assert cells[("default", "float32")]["outcome"] == "conforms"       # finished before the hang: kept
    hung = cells[("default", "bfloat16")]
    assert hung["outcome"] == "error" and "hung for more than 8 s" in hung["message"]
    assert '"golden":"default__half__d64r64__short"' in hung["message"]  # the case, replayable
    later = cells[("theta500k", "float32")]
    assert later["outcome"] == "error" and later["message"].startswith("not run:")
    _no_ropeconf_temp_left(env)


def test_memory_limit_turns_a_huge_allocation_into_an_error(tmp_path, env):
    out = tmp_path / "r.json"
    r = ropeconf("run", "--adapter", H + "huge_allocation", *ONE, "--memory-limit", "2G", "--json", str(out),
                 env=env)
    assert r.returncode == EXIT_FAIL
    cell = _report(out, H + "huge_allocation")["cells"][0]
    assert cell["outcome"] == "error" and "MemoryError" in cell["message"] and "--memory-limit" in cell["message"]


def test_children_of_a_worker_are_killed_with_it(tmp_path, env):
    r = ropeconf("run", "--adapter", H + "fork_and_hang", *ONE, env=env)
    assert r.returncode == EXIT_OK, r.stdout + r.stderr
    pids = [int(p) for p in Path(env["HOSTILE_PID_FILE"]).read_text().split()]
    assert pids
    deadline = time.time() + 10
    while any(_alive(p) for p in pids) and time.time() < deadline:
        time.sleep(0.2)
    assert not any(_alive(p) for p in pids), "a child of the worker outlived the run"


def test_sigterm_to_the_run_kills_its_workers_and_removes_temp_dirs(tmp_path, env):
    p = subprocess.Popen([sys.executable, "-m", "ropeconf.conformance.cli", "run", "--adapter",
                          "hostile.hang_at_import:rope", *ONE], env=env, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True)
    worker = None
    deadline = time.time() + 60
    try:
        while worker is None and time.time() < deadline:
            time.sleep(0.5)
            ps = subprocess.run(["ps", "-eww", "-o", "pid,args"], capture_output=True, text=True).stdout
            worker = next((int(line.split()[0]) for line in ps.splitlines()  # this run's worker: its files
                           if "ropeconf.conformance.worker" in line and env["TMPDIR"] in line), None)
        assert worker is not None, "the worker never started"
        p.send_signal(signal.SIGTERM)
        p.communicate(timeout=30)
    finally:
        if p.poll() is None:
            p.kill()
    assert p.returncode == 128 + signal.SIGTERM
    deadline = time.time() + 10
    while _alive(worker) and time.time() < deadline:
        time.sleep(0.2)
    assert not _alive(worker)
    _no_ropeconf_temp_left(env)


# ----------------------------------------------------------------------------- the whole hostile set at once
HOSTILE = [H + n for n in ("non_utf8_stderr", "garbage_result", "system_exit_zero", "fork_and_hang",
                           "huge_allocation", "complex_output", "float64_output", "mutates_inputs",
                           "capability_typo", "RaisingWhyUnsupported")] + \
          ["hostile.crash_at_import:rope", "hostile.hang_at_import:rope"]


def test_the_hostile_set_with_one_correct_adapter(tmp_path, env):
    out, html = tmp_path / "r.json", tmp_path / "r.html"
    r = ropeconf("run", "--adapter", *HOSTILE, "toy_rope:rope_adapter", "--variants", "default", "--dtype",
                 "float32", "--max-examples", "2", "--timeout", "60", "--json", str(out), "--report", str(html),
                 env=env, timeout=900)
    assert r.returncode == EXIT_FAIL, r.stdout + r.stderr
    res = json.loads(out.read_text())
    reasons = "\n".join(res["decision"]["reasons"])
    # every hostile adapter is named as failing, except fork_and_hang, which computes correctly
    for name in HOSTILE:
        if name != H + "fork_and_hang":
            assert name in reasons, name
    good = _report(out, "toy_rope:rope_adapter")
    assert good["cells"][0]["outcome"] == "conforms" and good["cells"][0]["counts"]["conforms"] > 10
    assert "toy_rope:rope_adapter" in html.read_text()
    pids = [int(p) for p in Path(env["HOSTILE_PID_FILE"]).read_text().split()]
    time.sleep(1)
    assert not any(_alive(p) for p in pids)
    ps = subprocess.run(["ps", "-eww", "-o", "args"], capture_output=True, text=True).stdout
    workers = [ln for ln in ps.splitlines() if "ropeconf.conformance.worker" in ln and "hostile" in ln]
    assert not workers, workers
    _no_ropeconf_temp_left(env)


# ----------------------------------------------------------------------------- judgeable positions
def test_replay_beyond_the_judgeable_limit_is_unjudgeable_not_conforms(env):
    """At 2**40 a float32-angle tolerance exceeds every pair: the identity and x * 1e6 cannot be told wrong."""
    case = json.dumps({"spec": {"head_dim": 8}, "positions": [[2 ** 40]], "dtype": "float32", "seed": 1})
    for target in ("toy_rope:rope_adapter", H + "mutates_inputs"):
        r = ropeconf("replay", "--adapter", target, "--case", case, env=env)
        assert r.returncode == EXIT_FAIL and '"unjudgeable"' in r.stdout, r.stdout + r.stderr


def test_generated_and_golden_positions_stay_judgeable():
    from ropeconf.conformance.tolerance import Precision, judgeable_position_limit

    for case, arrays in corpus.iter_cases():
        spec = RopeSpec.from_dict(case["spec"])
        for dt in ("float64", "float32", "float16", "bfloat16"):
            assert np.abs(arrays["positions"]).max() < judgeable_position_limit(spec, Precision.conventional(dt))


# ----------------------------------------------------------------------------- replay input
@pytest.mark.parametrize("case, message", [
    ("{not json", "not valid JSON"),
    ('{"spec": {"head_dim": 8}}', "lacks ['positions']"),
    ('{"spec": {"head_dim": 8}, "positions": [1, 2]}', "positions must be (batch, seq)"),
    ('{"spec": {"head_dim": 8}, "positions": [[9223372036854775808]]}', "below 2**53"),
    ('{"spec": {"head_dim": 8}, "positions": [[1]], "dtype": "float8"}', "dtype='float8'"),
    ('{"spec": {"head_dim": 8, "rope_type": "llama3", "factor": 8.0}, "positions": [[1]]}', "required"),
    ("@/no/such/file.json", "cannot read the file"),
])
def test_bad_replay_cases_are_usage_errors(case, message, env):
    r = ropeconf("replay", "--adapter", "toy_rope:rope_adapter", "--case", case, env=env)
    assert r.returncode == EXIT_USAGE and message in r.stderr and "Traceback" not in r.stderr, r.stderr


# ----------------------------------------------------------------------------- JSON output
def test_json_is_strict_and_written_atomically(tmp_path):
    from ropeconf.conformance.report import load_json, write_json

    path = tmp_path / "r.json"
    write_json({"adapters": [], "x": float("nan"), "y": [float("inf"), -float("inf")]}, str(path))
    text = path.read_text()
    json.loads(text, parse_constant=lambda c: pytest.fail(f"non-standard JSON token {c}"))
    back = load_json(str(path))
    assert np.isnan(back["x"]) and back["y"] == [float("inf"), -float("inf")]
    assert [p.name for p in tmp_path.iterdir()] == ["r.json"]  # no temp file left


def test_concurrent_runs_writing_one_json_leave_a_whole_file(tmp_path, env):
    out = tmp_path / "r.json"
    procs = [subprocess.Popen([sys.executable, "-m", "ropeconf.conformance.cli", "run", "--adapter",
                               "toy_rope:rope_adapter", *ONE, "--json", str(out)], env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL) for _ in range(2)]
    assert [p.wait(timeout=300) for p in procs] == [0, 0]
    assert json.loads(out.read_text())["adapters"][0]["adapter"] == "toy_rope:rope_adapter"


# ----------------------------------------------------------------------------- golden data
@pytest.fixture
def corpus_copy(tmp_path):
    d = tmp_path / "golden"
    shutil.copytree(corpus.DEFAULT_DIR, d, ignore=shutil.ignore_patterns("*.py", "__pycache__"))
    return d


def _edit_manifest(d: Path, fn) -> None:
    man = json.loads((d / "manifest.json").read_text())
    fn(man)
    (d / "manifest.json").write_text(json.dumps(man))


def _sha(path: Path) -> str:
    import hashlib

    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.parametrize("where", ["../outside.npz", "absolute", "/etc/passwd"])
def test_golden_case_paths_must_stay_inside_the_corpus(where, corpus_copy, tmp_path):
    outside = tmp_path / "outside.npz"
    shutil.copy(corpus_copy / "cases" / "default__half__d64r64__short.npz", outside)
    target = {"../outside.npz": "../outside.npz", "absolute": str(outside), "/etc/passwd": "/etc/passwd"}[where]
    real = Path(target) if Path(target).is_absolute() else corpus_copy / target

    def edit(man):
        man["cases"][0]["file"] = target
        man["cases"][0]["sha256"] = _sha(real)
    _edit_manifest(corpus_copy, edit)
    problems = corpus.verify(corpus_copy)
    assert any("not a relative path inside cases/" in p for p in problems), problems
    with pytest.raises(ValueError, match="inside cases/"):
        corpus.load_case(corpus_copy, json.loads((corpus_copy / "manifest.json").read_text())["cases"][0])


def test_golden_fifo_does_not_hang_verify(corpus_copy):
    f = corpus_copy / "cases" / "default__half__d64r64__short.npz"
    f.unlink()
    os.mkfifo(f)
    problems = corpus.verify(corpus_copy)
    assert any("not a regular file" in p for p in problems), problems


def test_golden_empty_or_miscounted_corpus_is_invalid(corpus_copy):
    _edit_manifest(corpus_copy, lambda m: m.update(cases=[], case_count=0))
    assert any("no cases" in p for p in corpus.verify(corpus_copy))
    d2 = corpus_copy.parent / "g2"
    shutil.copytree(corpus.DEFAULT_DIR, d2, ignore=shutil.ignore_patterns("*.py", "__pycache__"))
    _edit_manifest(d2, lambda m: m.update(case_count=m["case_count"] + 1))
    assert any("declares case_count" in p for p in corpus.verify(d2))


@pytest.mark.parametrize("damage, message", [
    ("pickle", "unreadable"),
    ("missing_key", "lacks array expected_float32"),
    ("dtype", "array positions is float64"),
])
def test_golden_npz_structure_is_verified(damage, message, corpus_copy):
    name = "default__half__d64r64__short"
    path = corpus_copy / "cases" / f"{name}.npz"
    arrays = dict(np.load(path))
    if damage == "pickle":
        arrays["cos"] = np.array([object()], dtype=object)
        _save_pickled(path, arrays)
    elif damage == "missing_key":
        del arrays["expected_float32"]
        np.savez(path, **arrays)
    else:
        arrays["positions"] = arrays["positions"].astype(np.float64)
        np.savez(path, **arrays)
    _edit_manifest(corpus_copy, lambda m: next(c for c in m["cases"] if c["id"] == name).update(sha256=_sha(path)))
    problems = corpus.verify(corpus_copy)
    assert any(message in p for p in problems), problems


def _save_pickled(path: Path, arrays: dict) -> None:
    import io
    import zipfile

    with zipfile.ZipFile(path, "w") as zf:
        for k, v in arrays.items():
            buf = io.BytesIO()
            np.lib.format.write_array(buf, v, allow_pickle=True)
            zf.writestr(f"{k}.npy", buf.getvalue())


def test_golden_invalid_spec_in_the_manifest_is_a_problem(corpus_copy):
    _edit_manifest(corpus_copy, lambda m: m["cases"][0]["spec"].update(rope_type="llama4"))
    assert any("invalid spec" in p for p in corpus.verify(corpus_copy))


def test_interrupted_regeneration_is_reported_and_recovered(corpus_copy):
    # killed right after the first rename: cases/ moved aside, nothing in its place
    os.rename(corpus_copy / "cases", corpus_copy / ".golden-old")
    (corpus_copy / ".golden-tmp-stale").mkdir()
    assert any("interrupted regeneration" in p for p in corpus.verify(corpus_copy))
    done = corpus.recover(corpus_copy)
    assert any("restored" in d for d in done) and any("stale" in d for d in done)
    assert corpus.verify(corpus_copy) == []
    assert not list(corpus_copy.glob(".golden-*"))


# ----------------------------------------------------------------------------- registry
def _entry(tmp_path, adapter, match, extra="") -> Path:
    f = tmp_path / "known.toml"
    f.write_text(f'[[divergence]]\nid = "toy-bf16"\nadapter = "{adapter}"\nlibrary = "toy-rope"\nversions = "*"\n'
                 f'match = {match}\nreason = "bf16 positions"\nupstream = "none"\n{extra}')
    return f


def test_registry_matches_the_name_the_report_shows(tmp_path, env):
    f = _entry(tmp_path, "toy*", '{ dtype = "bfloat16" }')
    r = ropeconf("run", "--adapter", "toy_rope:buggy_adapter", "--variants", "default", "--dtype", "bfloat16",
                 "--max-examples", "3", "--known", str(f), env=env)
    assert r.returncode == EXIT_OK and "known" in r.stdout, r.stdout
    # a function of the same __name__ in another module is another adapter: the entry does not apply to it
    f = _entry(tmp_path, "toy_rope:buggy_adapter", '{ dtype = "bfloat16" }')
    entries = registry.load([f])
    assert entries[0].names("toy_rope:buggy_adapter", "0.1.0")
    assert not entries[0].names("other_module:buggy_adapter", "0.1.0")


def test_registry_reports_the_most_specific_entry():
    broad = registry.Divergence("broad", ("a",), "l", "*", {"dtype": "*"}, "r", "u")
    narrow = registry.Divergence("narrow", ("a",), "l", "*", {"dtype": "bfloat16", "rope_type": "default"}, "r", "u")
    fields = {"dtype": "bfloat16", "rope_type": "default"}
    assert registry.find([broad, narrow], "a", "1", fields).id == "narrow"
    assert registry.find([narrow, broad], "a", "1", fields).id == "narrow"


def test_registry_case_matchers():
    from ropeconf.conformance.sources import spec_fields

    e = registry.Divergence("neg", ("a",), "l", "*", {"negative_positions": True, "role": "key", "partial": True,
                                                      "max_position": ">=100"}, "r", "u")
    spec = RopeSpec(head_dim=96, rotary_dim=64)
    yes = spec_fields(spec, "default", "float32", "cpu", np.array([[-1, 200]]), "key")
    assert e.applies("a", "1", yes)
    assert not e.applies("a", "1", spec_fields(spec, "default", "float32", "cpu", np.array([[-1, 200]]), "query"))
    assert not e.applies("a", "1", spec_fields(spec, "default", "float32", "cpu", np.array([[1, 200]]), "key"))
    assert not e.applies("a", "1", spec_fields(spec, "default", "float32", "cpu", np.array([[-1, 20]]), "key"))


def test_an_entry_that_matches_nothing_is_a_warning_and_strict_fails(tmp_path, env):
    f = _entry(tmp_path, "toy_rope:rope_adapter", '{ dtype = "float32", rope_theta = 123.0 }')
    r = ropeconf("run", "--adapter", "toy_rope:rope_adapter", *ONE, "--known", str(f), env=env)
    assert r.returncode == EXIT_OK and "registry entry toy-bf16 (known.toml) matched no case" in r.stdout
    r = ropeconf("run", "--adapter", "toy_rope:rope_adapter", *ONE, "--known", str(f), "--strict", env=env)
    assert r.returncode == EXIT_FAIL and "--strict: registry entry toy-bf16" in r.stdout
    # an entry out of this run's scope (another dtype) is no warning
    f = _entry(tmp_path, "toy_rope:rope_adapter", '{ dtype = "bfloat16" }')
    r = ropeconf("run", "--adapter", "toy_rope:rope_adapter", *ONE, "--known", str(f), "--strict", env=env)
    assert r.returncode == EXIT_OK and "matched no case" not in r.stdout


# ----------------------------------------------------------------------------- spec
def test_llama3_without_its_band_factors_is_an_error_naming_the_key():
    for key in ("low_freq_factor", "high_freq_factor"):
        d = dict(rope_type="llama3", factor=8.0, original_max_position_embeddings=8192, low_freq_factor=1.0,
                 high_freq_factor=4.0)
        d.pop(key)
        with pytest.raises(ValueError, match=f"{key} is required for rope_type='llama3'"):
            RopeSpec(**d)
    hf = {"hidden_size": 64, "num_attention_heads": 1,
          "rope_scaling": {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                           "original_max_position_embeddings": 8192}}
    with pytest.raises(ValueError, match="high_freq_factor is required"):
        RopeSpec.from_hf_config(hf)


def test_in_process_worker_loading_failure_is_an_error():
    rep = run_adapter(H + "capability_typo", RunConfig(variants=("default",), dtypes=("float32",)))
    assert rep["crashed"].startswith("loading the adapter failed") and rep["cells"][0]["outcome"] == "error"
