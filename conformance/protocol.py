"""The exec adapter: judge a program in any language through a small line protocol (docs/protocol.md).

``--adapter exec:COMMAND`` (anywhere an adapter name is accepted) starts COMMAND
(split like a shell would, ``shlex.split``; no shell runs) once per worker process
and speaks, on its stdin/stdout, one line per message:

    suite   -> program   hello 1
    program -> suite     hello 1 {"capabilities": {...}, "library": "...", "version": "..."}
    suite   -> program   case<TAB>ID<TAB>DTYPE<TAB>ROLE<TAB>DEVICE<TAB>X.npy<TAB>POSITIONS.npy<TAB>SPEC.json<TAB>OUT.npy
    program -> suite     ok | error MESSAGE | unsupported REASON
    ...
    suite   -> program   bye

The files of a case lie in a fresh directory the suite made; the program writes
OUT.npy (same shape as x, the tested dtype) before it answers ``ok``.  bfloat16,
which has no ``.npy`` type, travels as its uint16 bit pattern (``<u2``), both ways,
exactly as the golden corpus stores it.

Fail-closed: a program that cannot be started, answers hello wrongly, exits, writes
a line outside the protocol or does not answer within the timeout is an *error*
(of the adapter at hello, of the case otherwise), never a pass.  After a crash the
program is started again for the next case (at most ``MAX_STARTS`` times in all);
after a hang it is killed and every later case is an error at once.  The program is
a child in the worker's process group, so the runner's kill of the worker (its
``--case-timeout`` / ``--timeout``) takes the program with it.
"""

from __future__ import annotations

import json
import os
import select
import shlex
import shutil
import signal
import subprocess
import tempfile
import time
import weakref
from pathlib import Path
from typing import Any

import numpy as np

from ropeconf.reference import RopeSpec
from ropeconf.reference.dtypes import DTYPES

from .adapter import Adapter, Capabilities, Numerics, Unsupported

PROTOCOL_VERSION = 1
SUPPORTED_VERSIONS = (1,)
PREFIX = "exec:"
DEFAULT_TIMEOUT = 120.0          # seconds for hello and for each answer (ROPECONF_EXEC_TIMEOUT overrides)
MAX_STARTS = 3                   # a program that keeps crashing is not started a fourth time
MAX_LINE = 1 << 20               # an answer line longer than this is a protocol error
HELLO_KEYS = ("capabilities", "library", "version")


def _remove_stale_dirs() -> None:
    """Remove the temp dirs of exec adapters whose process is gone (a worker killed for a hang leaves one)."""
    for d in Path(tempfile.gettempdir()).glob("ropeconf-exec-*-*"):
        pid = d.name.split("-")[2]
        if not pid.isdigit() or int(pid) == os.getpid():
            continue
        try:
            os.kill(int(pid), 0)
        except ProcessLookupError:
            shutil.rmtree(d, ignore_errors=True)
        except OSError:
            pass


class ProtocolError(RuntimeError):
    """The program broke the protocol: it did not start, exited, hung, or wrote something else."""


# ----------------------------------------------------------------------------- .npy files of the protocol
def npy_dtype(dtype: str) -> np.dtype:
    """The ``.npy`` type a tested dtype travels as: little-endian, bfloat16 as uint16 bits."""
    if dtype not in DTYPES:
        raise ValueError(f"unknown dtype {dtype!r}; known: {', '.join(DTYPES)}")
    return np.dtype("<u2") if dtype == "bfloat16" else np.dtype(dtype).newbyteorder("<")


def write_array(path: str | os.PathLike, arr: np.ndarray, dtype: str | None = None) -> None:
    """Write ``arr`` as a version-1.0 ``.npy`` (little-endian, C order); ``dtype='bfloat16'`` writes its bits."""
    a = np.asarray(arr)
    if dtype == "bfloat16":
        import ml_dtypes

        a = a.astype(ml_dtypes.bfloat16).view(np.uint16)
    elif dtype is not None:
        a = a.astype(npy_dtype(dtype))
    a = np.ascontiguousarray(a.astype(a.dtype.newbyteorder("<")))
    with open(path, "wb") as f:
        np.lib.format.write_array(f, a, version=(1, 0), allow_pickle=False)


def read_array(path: str | os.PathLike, dtype: str) -> np.ndarray:
    """An output ``.npy`` of a ``dtype`` case (``allow_pickle=False``): uint16 is rebuilt as bfloat16 bits
    when the case is bfloat16; any other dtype is returned as stored (the judge then checks it)."""
    with open(path, "rb") as f:
        a = np.lib.format.read_array(f, allow_pickle=False)
    if a.dtype.kind == "u" and a.dtype.itemsize == 2 and dtype == "bfloat16":
        import ml_dtypes

        return a.astype("=u2").view(ml_dtypes.bfloat16)
    return a.astype(a.dtype.newbyteorder("="))


def write_case(directory: str | os.PathLike, x: np.ndarray, positions: np.ndarray, spec: RopeSpec,
               dtype: str) -> dict[str, Path]:
    """The input files of one case in ``directory``: x.npy (the tested dtype), positions.npy (int64),
    spec.json (``RopeSpec.to_full_dict()``); returns their paths and the output path (out.npy)."""
    d = Path(directory)
    paths = {"x": d / "x.npy", "positions": d / "positions.npy", "spec": d / "spec.json", "output": d / "out.npy"}
    write_array(paths["x"], x, dtype)
    write_array(paths["positions"], np.asarray(positions, dtype=np.int64))
    paths["spec"].write_text(json.dumps(spec.to_full_dict(), sort_keys=True) + "\n", encoding="utf-8")
    return paths


# ----------------------------------------------------------------------------- the adapter
def check_command(command: str) -> list[str]:
    """The argv of an ``exec:`` command, or ValueError naming what is wrong (empty, bad quoting, not found)."""
    try:
        argv = shlex.split(command)
    except ValueError as e:
        raise ValueError(f"adapter exec:{command}: cannot split the command: {e}") from None
    if not argv:
        raise ValueError("adapter 'exec:' needs a command: exec:PROGRAM [ARGS...]")
    prog = argv[0]
    found = (os.path.isfile(prog) and os.access(prog, os.X_OK)) if os.sep in prog else shutil.which(prog)
    if not found:
        raise ValueError(f"adapter exec:{command}: no executable {prog!r}"
                         + ("" if os.sep in prog else " on the PATH"))
    return argv


def _signal_name(rc: int) -> str:
    if rc >= 0:
        return f"exited with status {rc}"
    try:
        return f"was killed by {signal.Signals(-rc).name}"
    except ValueError:
        return f"was killed by signal {-rc}"


def _shutdown(proc: subprocess.Popen | None, tmp: str | None) -> None:
    if proc is not None and proc.poll() is None:
        try:
            proc.stdin.write(b"bye\n")
            proc.stdin.flush()
            proc.stdin.close()
        except (OSError, ValueError):
            pass
        try:
            proc.wait(timeout=2)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    if proc is not None and proc.stdout is not None:
        try:
            proc.stdout.close()
        except OSError:
            pass
    if tmp:
        shutil.rmtree(tmp, ignore_errors=True)


class _Program:
    """One running instance of the command: its pipes, its stderr file and the line reader."""

    def __init__(self, argv: list[str], tmp: Path, index: int):
        self.stderr_path = tmp / f"stderr-{index}.log"
        with open(self.stderr_path, "wb") as err:
            try:
                # no new session: the program stays in the worker's process group, killed with it
                self.proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=err,
                                             bufsize=0)
            except OSError as e:
                raise ProtocolError(f"cannot start {argv[0]!r}: {e}") from None
        self.buf = b""
        self.finalizer = weakref.finalize(self, _shutdown, self.proc, None)

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stderr_tail(self) -> str:
        try:
            text = self.stderr_path.read_bytes()[-2000:].decode("utf-8", errors="replace").strip()
        except OSError:
            return ""
        return text[-400:]

    def send(self, line: str) -> None:
        try:
            self.proc.stdin.write(line.encode("utf-8") + b"\n")
            self.proc.stdin.flush()
        except (BrokenPipeError, OSError, ValueError):
            raise self.died("while the suite was writing to it") from None

    def died(self, when: str) -> ProtocolError:
        try:
            rc = self.proc.wait(timeout=2)
            what = _signal_name(rc)
        except subprocess.TimeoutExpired:
            what = "closed its stdout"
        tail = self.stderr_tail()
        return ProtocolError(f"the program {what} {when}" + (f"; its stderr: {tail}" if tail else ""))

    def readline(self, timeout: float, when: str) -> str:
        deadline = time.monotonic() + timeout
        fd = self.proc.stdout.fileno()
        while b"\n" not in self.buf:
            if len(self.buf) > MAX_LINE:
                raise ProtocolError(f"the program wrote a line of more than {MAX_LINE} bytes {when}")
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"the program did not answer within {timeout:g} s {when} "
                                   "(ROPECONF_EXEC_TIMEOUT sets the limit)")
            ready, _, _ = select.select([fd], [], [], left)
            if not ready:
                continue
            chunk = os.read(fd, 65536)
            if not chunk:
                raise self.died(when)
            self.buf += chunk
        line, _, self.buf = self.buf.partition(b"\n")
        return line.decode("utf-8", errors="replace").rstrip("\r")

    def kill(self) -> None:
        if self.alive():
            self.proc.kill()
        try:
            self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            pass
        for f in (self.proc.stdin, self.proc.stdout):
            try:
                f.close()
            except OSError:
                pass
        self.finalizer.detach()

    def close(self) -> None:
        self.finalizer()


def parse_hello(line: str) -> dict[str, Any]:
    """The program's ``hello VERSION JSON`` line as a dict (``version`` = the protocol version)."""
    head, _, rest = line.partition(" ")
    if head != "hello":
        raise ProtocolError(f"expected 'hello {PROTOCOL_VERSION} {{...}}' from the program, got {line[:200]!r}")
    ver, _, payload = rest.strip().partition(" ")
    try:
        version = int(ver)
    except ValueError:
        raise ProtocolError(f"hello: protocol version {ver!r} is not an integer") from None
    if version not in SUPPORTED_VERSIONS:
        raise ProtocolError(f"hello: the program speaks protocol {version}; this suite speaks "
                            f"{', '.join(map(str, SUPPORTED_VERSIONS))}")
    try:
        body = json.loads(payload) if payload.strip() else {}
    except json.JSONDecodeError as e:
        raise ProtocolError(f"hello: the declaration is not valid JSON: {e}") from None
    if not isinstance(body, dict):
        raise ProtocolError("hello: the declaration must be a JSON object")
    unknown = sorted(set(body) - set(HELLO_KEYS))
    if unknown:
        raise ProtocolError(f"hello: unknown key(s) {unknown}; valid: {list(HELLO_KEYS)}")
    caps = body.get("capabilities") or {}
    if not isinstance(caps, dict):
        raise ProtocolError("hello: capabilities must be a JSON object")
    try:
        numerics, rest_caps = Numerics.split(caps)
        capabilities = Capabilities.from_dict(rest_caps) if rest_caps else Capabilities(dtypes=("float32",))
    except (TypeError, ValueError) as e:
        raise ProtocolError(f"hello: capabilities: {e}") from None
    return {"protocol": version, "capabilities": capabilities, "precision": numerics,
            "library": str(body.get("library") or "exec"), "version": str(body.get("version") or "?")}


class ExecAdapter(Adapter):
    """A program spoken to through the line protocol (module doc, docs/protocol.md)."""

    def __init__(self, command: str, timeout: float | None = None):
        self.command = command
        self.name = PREFIX + command
        self.argv = check_command(command)
        self.timeout = float(timeout if timeout is not None else os.environ.get("ROPECONF_EXEC_TIMEOUT",
                                                                                 DEFAULT_TIMEOUT))
        self.distribution = "exec"
        self._version = "?"
        _remove_stale_dirs()
        self._tmp = Path(tempfile.mkdtemp(prefix=f"ropeconf-exec-{os.getpid()}-"))
        self._tmp_finalizer = weakref.finalize(self, shutil.rmtree, str(self._tmp), True)
        self._program: _Program | None = None
        self._starts = 0
        self._dead: str | None = None     # why no further case is sent (a hang, too many crashes)
        self._last: str = ""              # the last failure of the program
        self._hello: dict[str, Any] | None = None
        self._case = 0

    # -- lifecycle
    def _start(self) -> _Program:
        if self._dead:
            raise ProtocolError(self._dead)
        if self._program is not None and self._program.alive():
            return self._program
        if self._starts >= MAX_STARTS:
            self._dead = f"not started again: it failed {self._starts} times; the last time: {self._last}"
            raise ProtocolError(self._dead)
        self._starts += 1
        prog = _Program(self.argv, self._tmp, self._starts)
        try:
            prog.send(f"hello {PROTOCOL_VERSION}")
            hello = parse_hello(prog.readline(self.timeout, "in reply to hello"))
        except TimeoutError as e:
            prog.kill()
            self._dead = f"{e}; not started again"
            raise ProtocolError(str(e)) from None
        except ProtocolError as e:
            prog.kill()
            self._last = str(e)
            raise
        if self._hello is None:
            self._hello = hello
            self.capabilities, self.precision = hello["capabilities"], hello["precision"]
            self.distribution, self._version = hello["library"], hello["version"]
        elif (hello["capabilities"], hello["precision"]) != (self._hello["capabilities"], self._hello["precision"]):
            prog.kill()
            self._dead = "the program declared other capabilities when started again"
            raise ProtocolError(self._dead)
        self._program = prog
        return prog

    def close(self) -> None:
        """Say ``bye`` to the program (killed after 2 s) and remove the temp dir."""
        if self._program is not None:
            self._program.close()
            self._program = None
        self._tmp_finalizer()

    # -- Adapter
    def availability(self) -> str | None:
        """Start the program and exchange hello; a failure raises (the adapter's error, never unavailable)."""
        self._start()
        return None

    def version(self) -> str:
        return self._version

    def probe_device(self, device: str) -> str | None:
        return None  # the program declares its devices and answers `unsupported` for one it lacks here

    def why_unsupported(self, spec: RopeSpec, dtype: str, device: str,
                        positions: np.ndarray | None = None) -> str | None:
        if self._hello is None:
            self._start()
        return super().why_unsupported(spec, dtype, device, positions)

    def call(self, x: np.ndarray, positions: np.ndarray, spec: RopeSpec, *, dtype: str,
             device: str = "cpu", role: str = "query") -> Any:
        prog = self._start()
        self._case += 1
        d = self._tmp / f"case-{self._case}"
        d.mkdir()
        try:
            paths = write_case(d, x, positions, spec, dtype)
            fields = ["case", str(self._case), dtype, role, device,
                      *(str(paths[k].resolve()) for k in ("x", "positions", "spec", "output"))]
            if any(ch in f for f in fields for ch in "\t\r\n"):
                raise ProtocolError(f"a path of the case holds a tab or newline: {str(d)!r} (set TMPDIR)")
            when = f"on case {self._case}"
            try:
                prog.send("\t".join(fields))
                line = prog.readline(self.timeout, when)
            except TimeoutError as e:
                prog.kill()
                self._program = None
                self._dead = f"the program hung on an earlier case ({e})"
                raise ProtocolError(str(e)) from None
            except ProtocolError as e:
                prog.kill()
                self._program = None
                self._last = str(e)
                raise
            word, _, rest = line.partition(" ")
            if word == "ok" and not rest.strip():
                if not paths["output"].is_file():
                    raise ProtocolError(f"the program answered ok {when} but wrote no {paths['output'].name}")
                try:
                    return read_array(paths["output"], self.precision.output_dtype or dtype)
                except (OSError, ValueError) as e:
                    raise ProtocolError(f"{paths['output'].name} {when} is not a readable .npy: {e}") from None
            if word == "unsupported":
                raise Unsupported(f"{self.name}: {rest.strip() or 'unsupported (no reason given)'}")
            if word == "error":
                raise RuntimeError(f"the program reported: {rest.strip() or '(no message)'}")
            prog.kill()   # out of step: the next case gets a fresh program
            self._program = None
            raise ProtocolError(f"expected 'ok', 'error MESSAGE' or 'unsupported REASON' {when}, "
                                f"got {line[:200]!r}")
        finally:
            shutil.rmtree(d, ignore_errors=True)

    def __repr__(self) -> str:
        return f"<exec adapter {self.command!r}>"
