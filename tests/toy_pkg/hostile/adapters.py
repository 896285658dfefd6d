"""Adapters that misbehave on purpose (see the package docstring)."""

import atexit
import os
import signal
import sys
import time

import numpy as np

from ropeconf.conformance.adapter import Adapter, Capabilities

from toy_rope import rope_adapter, toy_rotary

CAPS = {"rope_types": ["default"], "layouts": ["half"], "dtypes": ["float32"], "partial": True,
        "positions": "arbitrary"}


def _declare(fn, **extra):
    fn.ropeconf_capabilities = {**CAPS, **extra}
    return fn


def _correct(x, positions, spec):
    return rope_adapter(x, positions, spec)


@_declare
def non_utf8_stderr(x, positions, spec):
    """Writes bytes that are not UTF-8 to stderr, then dies."""
    os.write(2, b"\xff\xfe\xfa not utf-8 \xc3\x28\n")
    os._exit(3)


@_declare
def garbage_result(x, positions, spec):
    """Computes correctly, but leaves garbage where the worker writes its result."""
    out = sys.argv[sys.argv.index("--out") + 1] if "--out" in sys.argv else None
    if out and not getattr(garbage_result, "armed", False):
        garbage_result.armed = True

        def scribble():
            with open(out, "wb") as f:
                f.write(b"\x00\x01 this is not json {{{")
            os._exit(0)

        atexit.register(scribble)
    return _correct(x, positions, spec)


@_declare
def system_exit_zero(x, positions, spec):
    """Ends the process with status 0 from inside the library call."""
    raise SystemExit(0)


@_declare
def keyboard_interrupt(x, positions, spec):
    raise KeyboardInterrupt


@_declare
def fork_and_hang(x, positions, spec):
    """Computes correctly but leaves a child process behind that never ends (pid in $HOSTILE_PID_FILE)."""
    pid = os.fork()
    if pid == 0:
        time.sleep(3600)
        os._exit(0)
    path = os.environ.get("HOSTILE_PID_FILE")
    if path:
        with open(path, "a") as f:
            f.write(f"{pid}\n")
    return _correct(x, positions, spec)


@_declare
def huge_allocation(x, positions, spec):
    """Asks for 20 GB."""
    big = np.ones(20 * 2 ** 30 // 8)
    return x + big[0]


@_declare
def complex_output(x, positions, spec):
    """The right values, as complex numbers with an imaginary part that is silently wrong."""
    return _correct(x, positions, spec).astype(np.complex64) + 1j


@_declare
def float64_output(x, positions, spec):
    """Returns float64 for a float32 case (a wrapper that computes elsewhere)."""
    return toy_rotary(x.astype(np.float64), positions, theta=spec["rope_theta"], rotary_dim=spec["rotary_dim"])


@_declare
def object_output(x, positions, spec):
    return np.array(_correct(x, positions, spec), dtype=object)


@_declare
def mutates_inputs(x, positions, spec):
    """Writes into its inputs, then returns the identity of what it left there: zeros."""
    x[...] = 0
    positions[...] = 0
    return x.copy()


@_declare
def segfault_in_call(x, positions, spec):
    os.kill(os.getpid(), signal.SIGSEGV)


def hangs_on_bfloat16(x, positions, spec):
    """Correct, except that it hangs on bfloat16 input (one cell, not the whole adapter)."""
    if x.dtype.name == "bfloat16":
        time.sleep(3600)
    return _correct(x, positions, spec)


hangs_on_bfloat16.ropeconf_capabilities = {**CAPS, "dtypes": ["float32", "bfloat16"]}


def capability_typo(x, positions, spec):
    return _correct(x, positions, spec)


capability_typo.ropeconf_capabilities = {**CAPS, "positions": "arbitary"}


class RaisingWhyUnsupported(Adapter):
    """A class adapter whose own capability check raises."""

    name = "raising-why-unsupported"
    capabilities = Capabilities(dtypes=("float32",))

    def why_unsupported(self, spec, dtype, device, positions=None):
        raise RuntimeError("bug in why_unsupported")

    def call(self, x, positions, spec, *, dtype, device="cpu", role="query"):
        return _correct(x, positions, spec.to_full_dict())


def undeclared(x, positions, spec):
    """No declaration: the suite assumes float32 only, so a float64-only run judges nothing."""
    return _correct(x, positions, spec)
