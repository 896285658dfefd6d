"""The one plug-in point: what an adapter is and what it declares.

An adapter maps a :class:`~ropeconf.reference.RopeSpec` onto a library's real
API and runs it.  It never re-implements the math.  Two forms:

* a plain function ``f(x, positions, spec) -> array`` (spec is the dict form),
  optionally carrying ``f.ropeconf_capabilities = {...}`` (keys of
  :class:`Capabilities`); wrapped by :class:`FunctionAdapter`;
* a subclass of :class:`Adapter` that declares capabilities, devices and dtypes.

Call convention (both forms):

* ``x``: NumPy array, shape (batch, heads, seq, head_dim), in the dtype under
  test (bfloat16 is ``ml_dtypes.bfloat16``);
* ``positions``: int64, shape (batch, seq), or (batch, seq, n_streams) for axial
  and M-RoPE specs;
* returns anything ``np.asarray`` accepts, shape of ``x``.
"""

from __future__ import annotations

import dataclasses
import importlib
import importlib.metadata
from typing import Any, Callable, Iterable

import numpy as np

from ropeconf.reference import RopeSpec

DTYPES = ("float64", "float32", "float16", "bfloat16")
DEVICES = ("cpu", "cuda")
POSITION_KINDS = ("range", "offset", "arbitrary")  # each kind includes the ones before it


def positions_kind(positions: np.ndarray) -> str:
    """'range' (every row 0..S-1), 'offset' (every row start+0..S-1, one start), or 'arbitrary'."""
    p = np.asarray(positions)
    if p.ndim == 3:
        return "arbitrary"
    seq = np.arange(p.shape[-1])
    if np.array_equal(p, np.broadcast_to(seq, p.shape)):
        return "range"
    start = p[..., :1]
    if np.array_equal(p, np.broadcast_to(start + seq, p.shape)) and np.all(start == start.flat[0]):
        return "offset"
    return "arbitrary"


@dataclasses.dataclass(frozen=True)
class Capabilities:
    """What an adapter can express.  Anything outside is reported *unsupported*."""

    rope_types: tuple[str, ...] = ("default",)
    layouts: tuple[str, ...] = ("half",)
    dtypes: tuple[str, ...] = ("float32",)
    devices: tuple[str, ...] = ("cpu",)
    freqs_for: tuple[str, ...] = ("lang",)
    partial: bool = False          # rotary_dim < head_dim
    xpos: bool = False
    axial: bool = False
    mrope: bool = False
    positions: str = "arbitrary"   # the most general kind of positions it accepts (POSITION_KINDS)
    max_position: int | None = None
    angle_dtype: str | None = None    # dtype its angles are formed in, if not the tolerance default
    compute_dtype: str | None = None  # dtype its cos/sin are rounded to, if not the tested dtype

    @classmethod
    def from_dict(cls, d: dict[str, Any] | None) -> "Capabilities":
        if not d:
            return cls()
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise ValueError(f"unknown capability key(s) {unknown}; valid: {sorted(names)}")
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in d.items()})

    def why_unsupported(self, spec: RopeSpec, dtype: str, device: str,
                        positions: np.ndarray | None = None) -> str | None:
        checks = [
            (spec.rope_type in self.rope_types, f"rope_type={spec.rope_type}"),
            (spec.layout in self.layouts, f"layout={spec.layout}"),
            (dtype in self.dtypes, f"dtype={dtype}"),
            (device in self.devices, f"device={device}"),
            (spec.freqs_for in self.freqs_for, f"freqs_for={spec.freqs_for}"),
            (self.partial or spec.rotary_dim == spec.head_dim, "partial rotation (rotary_dim < head_dim)"),
            (self.xpos or not spec.xpos, "xpos"),
            (self.axial or not spec.axial_axes, "axial positions"),
            (self.mrope or spec.mrope_section is None, "mrope_section"),
        ]
        for ok, what in checks:
            if not ok:
                return f"{what} not supported"
        if positions is not None:
            kind = positions_kind(positions)
            if POSITION_KINDS.index(kind) > POSITION_KINDS.index(self.positions):
                return f"{kind} positions not supported (accepts {self.positions})"
            if self.max_position is not None and np.max(positions) > self.max_position:
                return f"position {int(np.max(positions))} above max_position={self.max_position}"
        return None


class Adapter:
    """Base class for rich adapters.  Subclasses set the class attributes and ``run``."""

    name: str = ""
    distribution: str = ""           # PyPI distribution whose version is reported
    requires: tuple[str, ...] = ()   # modules that must import for the adapter to be available
    env: dict[str, str] = {}         # environment for its worker process (e.g. KERAS_BACKEND)
    capabilities: Capabilities = Capabilities()

    def availability(self) -> str | None:
        """None when usable, else the reason (the import error text)."""
        for mod in self.requires:
            try:
                importlib.import_module(mod)
            except Exception as e:  # a broken install must not take the run down
                return f"import {mod} failed: {type(e).__name__}: {e}"
        return None

    def version(self) -> str:
        if not self.distribution:
            return "?"
        try:
            return importlib.metadata.version(self.distribution)
        except importlib.metadata.PackageNotFoundError:
            return "unknown"

    def why_unsupported(self, spec: RopeSpec, dtype: str, device: str,
                        positions: np.ndarray | None = None) -> str | None:
        """Capability check; override to add library-specific limits."""
        return self.capabilities.why_unsupported(spec, dtype, device, positions)

    def require_supported(self, spec: RopeSpec, dtype: str, device: str,
                          positions: np.ndarray | None = None) -> None:
        """Raise ValueError naming the limit when a case is outside the declaration.

        ``run`` calls it first, so that a direct call never silently computes
        something other than the spec (the suite itself asks ``why_unsupported``).
        """
        why = self.why_unsupported(spec, dtype, device, positions)
        if why:
            raise ValueError(f"{self.name} adapter: {why}")

    def run(self, x: np.ndarray, positions: np.ndarray, spec: RopeSpec, *, dtype: str,
            device: str = "cpu", role: str = "query") -> Any:
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"<adapter {self.name}>"


class FunctionAdapter(Adapter):
    """Wraps the smallest adapter: ``f(x, positions, spec_dict) -> array``."""

    def __init__(self, fn: Callable, name: str | None = None):
        self.fn = fn
        self.name = name or getattr(fn, "__name__", "function")
        caps = getattr(fn, "ropeconf_capabilities", None)
        self.capabilities = Capabilities.from_dict(caps) if caps is not None else \
            Capabilities(dtypes=("float32",))
        mod = getattr(fn, "__module__", "") or ""
        self.distribution = getattr(fn, "ropeconf_distribution", mod.split(".")[0])

    def version(self) -> str:
        v = super().version()
        return getattr(self.fn, "ropeconf_version", v)

    def run(self, x, positions, spec, *, dtype, device="cpu", role="query"):
        return self.fn(x, positions, spec.to_dict())


def load_adapter(target: str | Adapter | Callable) -> Adapter:
    """Resolve a built-in name, an entry point, or ``module:attr`` to an Adapter instance."""
    if isinstance(target, Adapter):
        return target
    if callable(target) and not isinstance(target, str):
        return _wrap(target, None)
    from ropeconf.adapters import BUILTIN

    if target in BUILTIN:
        return _wrap(_import_attr(BUILTIN[target]), target)
    for ep in _entry_points():
        if ep.name == target:
            return _wrap(ep.load(), target)
    if ":" in target:
        return _wrap(_import_attr(target), None)
    known = sorted(BUILTIN) + sorted(ep.name for ep in _entry_points())
    raise ValueError(f"unknown adapter {target!r}: give a built-in name ({', '.join(known)}), "
                     f"an entry point of group 'ropeconf.adapters', or 'module:attribute'")


def _entry_points() -> Iterable[importlib.metadata.EntryPoint]:
    return importlib.metadata.entry_points(group="ropeconf.adapters")


def _import_attr(path: str) -> Any:
    mod, _, attr = path.partition(":")
    try:
        obj = importlib.import_module(mod)
    except ImportError as e:
        raise ValueError(f"cannot import adapter module {mod!r}: {e}") from e
    for part in attr.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError as e:
            raise ValueError(f"module {mod!r} has no attribute {attr!r}") from e
    return obj


def _wrap(obj: Any, name: str | None) -> Adapter:
    if isinstance(obj, type) and issubclass(obj, Adapter):
        inst = obj()
    elif isinstance(obj, Adapter):
        inst = obj
    elif callable(obj):
        inst = FunctionAdapter(obj, name)
    else:
        raise ValueError(f"adapter {name or obj!r} is neither an Adapter nor a callable")
    if name and not inst.name:
        inst.name = name
    return inst
