"""Crashes the importing process at import time (like a native extension that segfaults on load)."""

import os
import signal

os.kill(os.getpid(), signal.SIGSEGV)


def rope(x, positions, spec):  # never reached
    return x
