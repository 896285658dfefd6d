"""An adapter that needs its environment at import time (like KERAS_BACKEND or JAX's x64 switch).

``MODE`` is read when the module is imported: without ``TOY_ROPE_MODE=exact`` the "library" rounds its
positions to bfloat16, so a run that does not apply ``ropeconf_env`` before importing it diverges.
"""

import os

from . import rope_adapter as _exact, toy_rotary

MODE = os.environ.get("TOY_ROPE_MODE", "sloppy")


def rope_adapter(x, positions, spec):
    if MODE == "exact":
        return _exact(x, positions, spec)
    import ml_dtypes

    return toy_rotary(x, positions, theta=spec["rope_theta"], rotary_dim=spec["rotary_dim"],
                      pos_dtype=ml_dtypes.bfloat16)


rope_adapter.ropeconf_capabilities = _exact.ropeconf_capabilities
rope_adapter.ropeconf_env = {"TOY_ROPE_MODE": "exact"}


def threads_adapter(x, positions, spec):
    """Refuses to compute unless the worker's thread pools were sized as ``TOY_ROPE_THREADS`` expects."""
    want = os.environ.get("TOY_ROPE_THREADS")
    if want and os.environ.get("OMP_NUM_THREADS") != want:
        raise RuntimeError(f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS')!r}, expected {want!r}")
    return _exact(x, positions, spec)


threads_adapter.ropeconf_capabilities = _exact.ropeconf_capabilities
