"""rope-conformance reference: float64 RoPE of every variant, exact to 2**-52.

``from ropeconf.reference import RopeSpec, inv_freq, cos_sin, apply``.
The variant catalogue is :mod:`ropeconf.reference.frequencies` (one function
per formula, each citing its source); the double-double angle and range
reduction are in :mod:`ropeconf.reference._dd`.
"""

from .rotary import angles, apply, apply_angles, cos_sin, inv_freq, pair_index, xpos_scale
from .spec import FREQS_FOR, LAYOUTS, ROPE_TYPES, RopeSpec

__version__ = "1.0.0"
REFERENCE_VERSION = __version__

__all__ = ["RopeSpec", "inv_freq", "cos_sin", "angles", "apply", "apply_angles", "xpos_scale", "pair_index",
           "ROPE_TYPES", "LAYOUTS", "FREQS_FOR", "REFERENCE_VERSION"]
