"""Adapters that misbehave on purpose, to test that the suite isolates them."""

import os
import time

from . import rope_adapter


def crashing_adapter(x, positions, spec):
    os._exit(139)  # like a segfault in a native kernel


def hanging_adapter(x, positions, spec):
    time.sleep(3600)


def raising_adapter(x, positions, spec):
    raise RuntimeError("kernel not implemented for this shape")


for f in (crashing_adapter, hanging_adapter, raising_adapter):
    f.ropeconf_capabilities = rope_adapter.ropeconf_capabilities


from ropeconf.conformance.adapter import Adapter  # noqa: E402


class MissingLibraryAdapter(Adapter):
    """A rich adapter whose library is not installed."""

    name = "missing-lib"
    distribution = "no-such-distribution"
    requires = ("no_such_module_for_ropeconf",)
