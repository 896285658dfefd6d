"""The one plug-in point: what an adapter is and what it declares.

An adapter maps a :class:`~ropeconf.reference.RopeSpec` onto a library's real
API and runs it.  It never re-implements the math.  Two forms:

* a plain function ``f(x, positions, spec) -> array`` (``spec`` is the full dict:
  ``RopeSpec.to_full_dict()``, every key of its rope_type with defaults filled in;
  a function that also takes ``role`` receives it), optionally carrying
  ``f.ropeconf_capabilities = {...}`` (keys of :class:`Capabilities`, plus
  ``angle_dtype`` / ``compute_dtype`` of :class:`Numerics`); wrapped by
  :class:`FunctionAdapter`;
* a subclass of :class:`Adapter` that declares ``capabilities`` and ``precision``
  and implements ``call`` (the library call only: ``run`` checks the
  declaration first, then calls it).

Call convention (both forms):

* ``x``: NumPy array, shape (batch, heads, seq, head_dim), in the dtype under
  test (bfloat16 is ``ml_dtypes.bfloat16``);
* ``positions``: int64, shape (batch, seq), or (batch, seq, n_streams) for axial
  and M-RoPE specs;
* returns anything ``np.asarray`` accepts, shape of ``x``.

An adapter raises :class:`Unsupported` to refuse a spec it cannot express
(reported *unsupported*); any other exception is an *error*.
"""

from __future__ import annotations

import dataclasses
import importlib
import importlib.metadata
import inspect
from typing import Any, Callable, Iterable

import numpy as np

from ropeconf.reference import RopeSpec
from ropeconf.reference.dtypes import DTYPES

DEVICES = ("cpu", "cuda")
POSITION_KINDS = ("range", "offset", "arbitrary")  # each kind includes the ones before it


class Unsupported(ValueError):
    """Raised by an adapter for a spec, dtype or input it cannot express: the case is *unsupported*."""


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

    def __post_init__(self) -> None:
        from ropeconf.reference import FREQS_FOR, LAYOUTS, ROPE_TYPES

        for name, allowed in (("rope_types", ROPE_TYPES), ("layouts", LAYOUTS), ("dtypes", DTYPES),
                              ("devices", DEVICES), ("freqs_for", FREQS_FOR)):
            vals = getattr(self, name)
            if isinstance(vals, str) or not isinstance(vals, (tuple, list)):
                raise TypeError(f"capability {name} must be a list of strings, got {vals!r}")
            bad = [v for v in vals if v not in allowed]
            if bad:
                raise ValueError(f"capability {name}: {bad} not among {list(allowed)}")
            object.__setattr__(self, name, tuple(vals))
        if self.positions not in POSITION_KINDS:
            raise ValueError(f"capability positions={self.positions!r} is not one of {list(POSITION_KINDS)}")
        for name in ("partial", "xpos", "axial", "mrope"):
            if not isinstance(getattr(self, name), bool):
                raise TypeError(f"capability {name} must be true or false, got {getattr(self, name)!r}")
        if self.max_position is not None and (isinstance(self.max_position, bool)
                                              or not isinstance(self.max_position, int)):
            raise TypeError(f"capability max_position must be an int, got {self.max_position!r}")

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
            if self.max_position is not None and np.size(positions) and np.max(positions) > self.max_position:
                return f"position {int(np.max(positions))} above max_position={self.max_position}"
        return None


@dataclasses.dataclass(frozen=True)
class Numerics:
    """The precision an implementation computes in, when it is not the conventional one.

    ``angle_dtype``: dtype the angle p * omega is formed in (default: float32 for 16- and
    32-bit dtypes, float64 for float64); ``compute_dtype``: dtype cos/sin are rounded to
    before the rotation (default: the tested dtype); ``output_dtype``: dtype the library
    returns (default: the tested dtype; any other output dtype is an error unless
    declared here).  The tolerance model
    (docs/tolerance.md) is evaluated with these.
    """

    angle_dtype: str | None = None
    compute_dtype: str | None = None
    output_dtype: str | None = None   # the dtype the library returns, if not the tested dtype

    def __post_init__(self) -> None:
        for name in ("angle_dtype", "compute_dtype", "output_dtype"):
            v = getattr(self, name)
            if v is not None and v not in DTYPES:
                raise ValueError(f"{name}={v!r} is not one of {list(DTYPES)}")

    @classmethod
    def split(cls, d: dict[str, Any] | None) -> tuple["Numerics", dict[str, Any]]:
        """(Numerics from the precision keys of ``d``, the remaining keys)."""
        d = dict(d or {})
        keys = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: d.pop(k) for k in list(d) if k in keys}), d


def cuda_unavailable() -> str | None:
    """None when a CUDA device is usable from torch or CuPy, else why not."""
    reasons = []
    try:
        import torch

        if torch.cuda.is_available():
            return None
        reasons.append("torch.cuda.is_available() is False")
    except Exception as e:  # noqa: BLE001 - any import failure is a reason, not a crash
        reasons.append(f"torch: {type(e).__name__}: {e}")
    try:
        import cupy

        if cupy.cuda.runtime.getDeviceCount() > 0:
            return None
        reasons.append("CuPy sees no CUDA device")
    except Exception as e:  # noqa: BLE001
        reasons.append(f"CuPy: {type(e).__name__}: {str(e)[:120]}")
    return "no CUDA device: " + "; ".join(reasons)


class Adapter:
    """Base class for rich adapters.  Subclasses set the class attributes and implement ``call``."""

    name: str = ""
    distribution: str = ""           # PyPI distribution whose version is reported
    requires: tuple[str, ...] = ()   # modules that must import for the adapter to be available
    env: dict[str, str] = {}         # environment for its worker process (e.g. KERAS_BACKEND)
    capabilities: Capabilities = Capabilities()
    precision: Numerics = Numerics()

    def availability(self) -> str | None:
        """None when usable, else the reason (the import error text)."""
        for mod in self.requires:
            try:
                importlib.import_module(mod)
            except Exception as e:  # a broken install must not take the run down
                return f"import {mod} failed: {type(e).__name__}: {e}"
        return None

    def device_unavailable(self, device: str) -> str | None:
        """None when ``device`` exists on this machine for this adapter, else why not (resolved once)."""
        cache = self.__dict__.setdefault("_device_cache", {})
        if device not in cache:
            cache[device] = None if device == "cpu" else self.probe_device(device)
        return cache[device]

    def probe_device(self, device: str) -> str | None:
        """Override for a library that reaches the GPU through its own runtime (onnxruntime, JAX...)."""
        return cuda_unavailable() if device == "cuda" else f"unknown device {device!r}"

    def version(self) -> str:
        if not self.distribution:
            return "?"
        try:
            return importlib.metadata.version(self.distribution)
        except importlib.metadata.PackageNotFoundError:
            return "unknown"

    def why_unsupported(self, spec: RopeSpec, dtype: str, device: str,
                        positions: np.ndarray | None = None) -> str | None:
        """Capability check; override to add library-specific limits (call super first)."""
        return self.capabilities.why_unsupported(spec, dtype, device, positions)

    def require_supported(self, spec: RopeSpec, dtype: str, device: str,
                          positions: np.ndarray | None = None) -> None:
        """Raise :class:`Unsupported` naming the limit when a case is outside the declaration."""
        why = self.why_unsupported(spec, dtype, device, positions)
        if why:
            raise Unsupported(f"{self.name} adapter: {why}")

    def run(self, x: np.ndarray, positions: np.ndarray, spec: RopeSpec, *, dtype: str,
            device: str = "cpu", role: str = "query") -> Any:
        """Check the case against the declaration and the machine, then make the library call (``call``)."""
        self.require_supported(spec, dtype, device, positions)
        missing = self.device_unavailable(device)
        if missing:
            raise Unsupported(f"{self.name} adapter: device={device} unavailable here: {missing}")
        return self.call(x, positions, spec, dtype=dtype, device=device, role=role)

    def call(self, x: np.ndarray, positions: np.ndarray, spec: RopeSpec, *, dtype: str,
             device: str = "cpu", role: str = "query") -> Any:
        """The library call for one case (already checked against the declaration)."""
        raise NotImplementedError(f"{type(self).__name__} implements neither call() nor run()")

    def instance(self, spec: RopeSpec, dtype: str, device: str = "cpu") -> Any:
        """Optional: a live object of the library for ``spec`` whose ``run(x, positions, role)`` the suite
        calls repeatedly, the way inference reuses one module (its caches, its dynamic state).

        ``x`` of a later call may be in another declared dtype (dtype switches).  Return None
        (the default) when the library has no state across calls: the suite then drives
        ``run`` call by call, which still exposes process-wide caches.
        """
        return None

    def __repr__(self) -> str:
        return f"<adapter {self.name}>"


class CallInstance:
    """What the suite drives when an adapter has no ``instance``: one ``run`` per call, same spec."""

    def __init__(self, adapter: Adapter, spec: RopeSpec, device: str):
        self.adapter, self.spec, self.device = adapter, spec, device

    def run(self, x: np.ndarray, positions: np.ndarray, role: str = "query") -> Any:
        from ropeconf.reference.dtypes import name_of

        return self.adapter.run(x, positions, self.spec, dtype=name_of(np.asarray(x).dtype) or "float64",
                                device=self.device, role=role)


class FunctionAdapter(Adapter):
    """Wraps the smallest adapter: ``f(x, positions, spec_dict[, role]) -> array``."""

    def __init__(self, fn: Callable, name: str | None = None):
        self.fn = fn
        self.name = name or getattr(fn, "__name__", "function")
        caps = getattr(fn, "ropeconf_capabilities", None)
        numerics, caps = Numerics.split(caps)
        extra, _ = Numerics.split(getattr(fn, "ropeconf_precision", None))
        self.precision = dataclasses.replace(numerics, **{k: v for k, v in dataclasses.asdict(extra).items() if v})
        self.capabilities = Capabilities.from_dict(caps) if caps else Capabilities(dtypes=("float32",))
        self.env = dict(getattr(fn, "ropeconf_env", {}) or {})
        mod = getattr(fn, "__module__", "") or ""
        self.distribution = getattr(fn, "ropeconf_distribution", mod.split(".")[0])
        try:
            params = inspect.signature(fn).parameters
            self.takes_role = "role" in params or any(p.kind is p.VAR_KEYWORD for p in params.values())
        except (TypeError, ValueError):
            self.takes_role = False

    def version(self) -> str:
        v = super().version()
        return getattr(self.fn, "ropeconf_version", v)

    def call(self, x, positions, spec, *, dtype, device="cpu", role="query"):
        if self.takes_role:
            return self.fn(x, positions, spec.to_full_dict(), role=role)
        return self.fn(x, positions, spec.to_full_dict())


def load_adapter(target: str | Adapter | Callable) -> Adapter:
    """Resolve a built-in name, an entry point, ``module:attr`` or ``exec:COMMAND`` to an Adapter instance."""
    if isinstance(target, Adapter):
        return target
    if callable(target) and not isinstance(target, str):
        return _wrap(target, None)
    if target.startswith("exec:"):  # a program in any language, through the line protocol (docs/protocol.md)
        from .protocol import ExecAdapter

        return ExecAdapter(target[len("exec:"):])
    from ropeconf.adapters import BUILTIN

    if target in BUILTIN:
        return _wrap(_import_attr(BUILTIN[target]), target)
    for ep in _entry_points():
        if ep.name == target:
            return _wrap(ep.load(), target)
    if ":" in target:
        return _wrap(_import_attr(target), target)
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
    if name:
        inst.name = name  # reports, replay commands and the registry all use the name it was loaded by
    return inst
