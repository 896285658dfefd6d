"""The exec line protocol and the offline judge, on a real C program (tests/exec_c/rope.c, built with `cc`).

Expected outcomes come from the reference (the suite's judge against the float64 reference
or the golden corpus), never from the C program: a correct program conforms, a planted
bug (positions off by one) diverges, a crash or a hang is an error and leaves no process.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from ropeconf.conformance.adapter import load_adapter
from ropeconf.conformance.judge import judge_case
from ropeconf.conformance.outcome import EXIT_FAIL, EXIT_OK, EXIT_USAGE
from ropeconf.conformance.protocol import ExecAdapter, ProtocolError, read_array, write_array
from ropeconf.reference import RopeSpec

HERE = Path(__file__).resolve().parent
SOURCE = HERE / "exec_c" / "rope.c"
DOC = HERE.parent / "docs" / "protocol.md"
FAST = ["--variants", "default", "--max-examples", "4"]
CASE = "default__half__d64r64__long"


@pytest.fixture(scope="module")
def rope_bin(tmp_path_factory) -> str:
    cc = shutil.which("cc")
    if cc is None:
        pytest.skip("no C compiler: `cc` is not on the PATH (the exec protocol tests build tests/exec_c/rope.c)")
    out = tmp_path_factory.mktemp("exec_c") / "rope"
    r = subprocess.run([cc, "-O2", "-Wall", "-o", str(out), str(SOURCE), "-lm"], capture_output=True, text=True)
    assert r.returncode == 0, f"cc failed to build {SOURCE}:\n{r.stderr}"
    return str(out)


def ropeconf(*args, timeout=600, env=None):
    return subprocess.run([sys.executable, "-m", "ropeconf.conformance.cli", *args], capture_output=True,
                          text=True, timeout=timeout, env=env)


def processes_running(path: str) -> list[str]:
    """Command lines of live processes that run ``path`` (read from /proc; nothing is killed here)."""
    found = []
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            cmd = (d / "cmdline").read_bytes().split(b"\0")
            state = (d / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if cmd and cmd[0].decode(errors="replace") == path and state != "Z":
            found.append(" ".join(c.decode(errors="replace") for c in cmd if c))
    return found


def run_json(tmp_path: Path, adapter: str, *extra: str):
    out = tmp_path / "r.json"
    r = ropeconf("run", "--adapter", adapter, *FAST, *extra, "--json", str(out))
    res = json.loads(out.read_text()) if out.exists() else None
    return r, res


# ----------------------------------------------------------------------------- through the CLI, as a user does
def test_conforming_c_program_exits_0(tmp_path, rope_bin):
    r, res = run_json(tmp_path, f"exec:{rope_bin}", "--dtype", "float32,float64,bfloat16")
    assert r.returncode == EXIT_OK, r.stdout + r.stderr
    rep = res["adapters"][0]
    assert rep["library"] == "rope.c" and rep["version"] == "1.0"
    cells = {c["dtype"]: c for c in rep["cells"]}
    assert set(cells) == {"float32", "float64", "bfloat16"}
    for dt, c in cells.items():
        assert c["outcome"] == "conforms", (dt, c)
        assert c["counts"].get("conforms", 0) >= 20, (dt, c["counts"])  # golden + property + metamorphic cases
    assert not processes_running(rope_bin)


def test_planted_bug_diverges_exit_1(tmp_path, rope_bin):
    r, res = run_json(tmp_path, f"exec:{rope_bin} bug", "--dtype", "float32")
    assert r.returncode == EXIT_FAIL, r.stdout + r.stderr
    cell = res["adapters"][0]["cells"][0]
    assert cell["outcome"] == "diverges"
    assert cell["minimal"]["max_ratio"] > 1e3    # one position off: far beyond the float32 tolerance
    assert "DIV" in r.stdout
    assert not processes_running(rope_bin)


def test_crash_is_an_error_not_a_pass(tmp_path, rope_bin):
    r, res = run_json(tmp_path, f"exec:{rope_bin} crash", "--dtype", "float32")
    assert r.returncode == EXIT_FAIL, r.stdout + r.stderr
    cell = res["adapters"][0]["cells"][0]
    assert cell["outcome"] == "error"
    assert cell["counts"].get("conforms", 0) == 0
    messages = " ".join(c.get("message") or "" for c in res["adapters"][0]["cases"])
    assert "SIGABRT" in messages, messages[:2000]
    assert not processes_running(rope_bin)


def test_hang_is_an_error_and_the_program_is_killed(tmp_path, rope_bin):
    t0 = time.time()
    r, res = run_json(tmp_path, f"exec:{rope_bin} hang", "--dtype", "float32", "--case-timeout", "3")
    assert r.returncode == EXIT_FAIL, r.stdout + r.stderr
    cell = res["adapters"][0]["cells"][0]
    assert cell["outcome"] == "error" and "hung" in (cell.get("message") or r.stdout)
    assert time.time() - t0 < 120
    assert not processes_running(rope_bin)


def test_unknown_program_is_a_usage_error(tmp_path):
    r = ropeconf("run", "--adapter", f"exec:{tmp_path / 'no-such-program'}", *FAST)
    assert r.returncode == EXIT_USAGE
    assert "no executable" in r.stderr


def test_pytest_plugin_and_replay_accept_exec(tmp_path, rope_bin):
    r = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--pyargs",
                        "ropeconf.conformance", f"--ropeconf-adapter=exec:{rope_bin} bug",
                        "--ropeconf-variants=default", "--ropeconf-dtype=float32", "--ropeconf-max-examples=3"],
                       capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert r.returncode == 1 and re.search(r"\b1 failed", r.stdout), r.stdout[-3000:]
    case = json.dumps({"golden": CASE, "dtype": "float64"})
    ok = ropeconf("replay", "--adapter", f"exec:{rope_bin}", "--case", case)
    assert ok.returncode == EXIT_OK and '"conforms"' in ok.stdout, ok.stdout + ok.stderr
    bad = ropeconf("replay", "--adapter", f"exec:{rope_bin} bug", "--case", case)
    assert bad.returncode == EXIT_FAIL and '"diverges"' in bad.stdout, bad.stdout + bad.stderr
    assert not processes_running(rope_bin)


# ----------------------------------------------------------------------------- in process
def test_in_process_hang_times_out_and_later_cases_fail_fast(rope_bin):
    a = load_adapter(f"exec:{rope_bin} hang")
    assert isinstance(a, ExecAdapter)
    a.timeout = 2.0
    spec = RopeSpec(head_dim=8)
    t0 = time.time()
    first = judge_case(a, spec, [[0, 1, 2]])
    assert first.outcome == "error" and "did not answer within 2 s" in first.message
    second = judge_case(a, spec, [[3]])
    assert second.outcome == "error" and "hung on an earlier case" in second.message
    assert time.time() - t0 < 30
    assert not processes_running(rope_bin)
    a.close()


def test_in_process_cases_judged_against_the_reference(rope_bin):
    a = load_adapter(f"exec:{rope_bin}")
    try:
        a.availability()
        for layout in ("half", "interleaved"):
            spec = RopeSpec(head_dim=12, rotary_dim=8, layout=layout, rope_theta=500.0)
            for dt in ("float32", "float64", "bfloat16"):
                r = judge_case(a, spec, [[0, 7, 300000], [5, 2, 1]], dtype=dt, heads=3)
                assert r.outcome == "conforms", (layout, dt, r.message)
        r = judge_case(a, RopeSpec(head_dim=8), [[1]], dtype="float16")
        assert r.outcome == "unsupported"            # float16 is not declared in its hello
        assert a.why_unsupported(RopeSpec(head_dim=8, xpos=True), "float32", "cpu")
    finally:
        a.close()
    assert not processes_running(rope_bin)


def _script(tmp_path: Path, body: str) -> str:
    """A tiny protocol peer in Python, to break the protocol in ways the C program does not."""
    p = tmp_path / "peer.py"
    p.write_text("import sys\n" + textwrap.dedent(body))
    return f"{sys.executable} {p}"


HELLO = 'print(\'hello 1 {"capabilities": {"dtypes": ["float32"]}}\', flush=True)\n'


@pytest.mark.parametrize("hello, fragment", [
    ("print('hello 2 {}', flush=True)", "speaks protocol 2"),
    ("print('hi', flush=True)", "expected 'hello 1"),
    ("print('hello 1 {\"capabilities\": {\"colour\": 1}}', flush=True)", "unknown capability key"),
    ("print('hello 1 {\"capabilities\": {}, \"extra\": 1}', flush=True)", "unknown key"),
    ("sys.exit(3)", "exited with status 3"),
])
def test_a_bad_hello_is_an_error(tmp_path, hello, fragment):
    a = load_adapter("exec:" + _script(tmp_path, f"sys.stdin.readline()\n{hello}\nsys.stdin.readline()\n"))
    with pytest.raises(ProtocolError, match=re.escape(fragment)):
        a.availability()
    a.close()


@pytest.mark.parametrize("answer, outcome, fragment", [
    ("print('unsupported no such thing here', flush=True)", "unsupported", "no such thing here"),
    ("print('error out of memory', flush=True)", "error", "out of memory"),
    ("print('ok', flush=True)", "error", "wrote no out.npy"),
    ("print('done!', flush=True)", "error", "expected 'ok'"),
    ("open(line.split('\\t')[8].strip(), 'wb').write(b'junk'); print('ok', flush=True)", "error", "not a readable"),
])
def test_answers(tmp_path, answer, outcome, fragment):
    body = f"sys.stdin.readline()\n{HELLO}for line in sys.stdin:\n    {answer}\n"
    a = load_adapter("exec:" + _script(tmp_path, body))
    r = judge_case(a, RopeSpec(head_dim=8), [[1, 2]])
    a.close()
    assert r.outcome == outcome and fragment in r.message, r.message


def test_an_output_of_another_dtype_is_an_error(tmp_path):
    body = f"""
    import numpy as np
    sys.stdin.readline()
    {HELLO.strip()}
    for line in sys.stdin:
        f = line.rstrip('\\n').split('\\t')
        np.save(f[8], np.load(f[5]).astype(np.float64))   # float64 for a float32 case
        print('ok', flush=True)
    """
    a = load_adapter("exec:" + _script(tmp_path, body))
    r = judge_case(a, RopeSpec(head_dim=8), [[0]])
    a.close()
    assert r.outcome == "error" and "float64" in r.message


def test_bfloat16_travels_as_uint16_bits(tmp_path):
    import ml_dtypes

    x = np.array([1.0, -2.5, 3.140625, 1e-3], dtype=ml_dtypes.bfloat16)
    write_array(tmp_path / "x.npy", x, "bfloat16")
    raw = np.load(tmp_path / "x.npy", allow_pickle=False)
    assert raw.dtype == np.dtype("<u2") and np.array_equal(raw, x.view(np.uint16))
    back = read_array(tmp_path / "x.npy", "bfloat16")
    assert back.dtype == ml_dtypes.bfloat16 and np.array_equal(back.view(np.uint16), raw)
    head = (tmp_path / "x.npy").read_bytes()[:10]
    assert head[:8] == b"\x93NUMPY\x01\x00"   # version 1.0: the simplest header for a reader of its own


# ----------------------------------------------------------------------------- offline judge
@pytest.mark.parametrize("dtype", ["float32", "float64", "bfloat16"])
def test_offline_export_compute_judge(tmp_path, rope_bin, dtype):
    d = tmp_path / "case"
    r = ropeconf("judge", "--golden", CASE, "--dtype", dtype, "--export", str(d))
    assert r.returncode == EXIT_OK, r.stderr
    assert sorted(p.name for p in d.iterdir()) == ["case.json", "positions.npy", "spec.json", "x.npy"]
    spec = json.loads((d / "spec.json").read_text())
    assert spec == RopeSpec.from_dict(spec).to_full_dict()
    # the C program reads the case without numpy and writes out.npy; the judge compares with the corpus
    assert subprocess.run([rope_bin, "golden", str(d)], timeout=60).returncode == 0
    ok = ropeconf("judge", "--golden", CASE, "--dtype", dtype, "--output", str(d / "out.npy"))
    assert ok.returncode == EXIT_OK and '"conforms"' in ok.stdout, ok.stdout + ok.stderr
    # the planted bug, through the same files
    assert subprocess.run([rope_bin, "golden", str(d), str(d / "bug.npy")], env={**os.environ, "ROPE_MODE": "bug"},
                          timeout=60).returncode == 0
    bad = ropeconf("judge", "--golden", CASE, "--dtype", dtype, "--output", str(d / "bug.npy"),
                   "--json", str(tmp_path / "j.json"))
    assert bad.returncode == EXIT_FAIL and '"diverges"' in bad.stdout, bad.stdout + bad.stderr
    assert json.loads((tmp_path / "j.json").read_text())["judge"]["outcome"] == "diverges"


def test_offline_judge_fails_closed(tmp_path):
    missing = ropeconf("judge", "--golden", CASE, "--output", str(tmp_path / "nothing.npy"))
    assert missing.returncode == EXIT_FAIL and '"error"' in missing.stdout
    np.save(tmp_path / "short.npy", np.zeros((2, 1, 8, 32), dtype=np.float32))
    wrong_shape = ropeconf("judge", "--golden", CASE, "--output", str(tmp_path / "short.npy"))
    assert wrong_shape.returncode == EXIT_FAIL and "shape" in wrong_shape.stdout
    # the expected output itself, in float64, for a float32 case: another dtype is an error, not a pass
    from ropeconf.conformance.offline import find_case

    _, arrays = find_case(CASE)
    np.save(tmp_path / "f64.npy", arrays["expected_float32"])
    wrong_dtype = ropeconf("judge", "--golden", CASE, "--output", str(tmp_path / "f64.npy"))
    assert wrong_dtype.returncode == EXIT_FAIL and "float64" in wrong_dtype.stdout
    np.save(tmp_path / "right.npy", arrays["expected_float32"].astype(np.float32))
    assert ropeconf("judge", "--golden", CASE, "--output", str(tmp_path / "right.npy")).returncode == EXIT_OK
    unknown = ropeconf("judge", "--golden", "no__such__case", "--output", str(tmp_path / "right.npy"))
    assert unknown.returncode == EXIT_USAGE and "no golden case" in unknown.stderr
    neither = ropeconf("judge", "--golden", CASE)
    assert neither.returncode == EXIT_USAGE


# ----------------------------------------------------------------------------- the documentation
def test_the_documented_c_example_is_the_tested_program():
    text = DOC.read_text()
    blocks = re.findall(r"```c\n(.*?)```", text, flags=re.S)
    assert blocks, "docs/protocol.md has no ```c block"
    assert blocks[0] == SOURCE.read_text(), "docs/protocol.md's C example differs from tests/exec_c/rope.c"
    hello = re.search(r'static const char \*HELLO =\n(.*?);', SOURCE.read_text(), flags=re.S).group(1)
    assert "hello 1" in hello and "hello 1" in text
