"""Case sources: where the cases of a cell come from.

A case source is a record with a ``name``, the ``group`` its ``--no-<group>``
switch turns off, and ``cases(cell) -> list[CaseResult]``.  ``cell`` (a
:class:`Cell`) carries the adapter, variant, dtype, device and run config, and
the one judging entry point every source uses (``cell.judge`` for a case with
a reference output, ``cell.check`` for a check that computes its own ratio), so
that classification against the known-divergence registry happens in one
place for all sources.  Adding a source: one function and one entry in
``SOURCES``.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import numpy as np

from ropeconf.reference import RopeSpec, apply
from ropeconf.reference.variants import Variant

from .adapter import Adapter, Unsupported
from .config import RunConfig
from .judge import angle_terms, check_output, compare, judge, make_input, precision_for, run_adapter_call
from .outcome import Outcome
from .results import CaseResult
from .tolerance import bound, pair_norm


# ----------------------------------------------------------------------------- the cell
class Cell:
    """One (adapter, variant, dtype, device) cell while it runs: what sources see."""

    def __init__(self, adapter: Adapter, variant: Variant, dtype: str, device: str, config: RunConfig,
                 classify: Callable[[CaseResult], CaseResult], golden: list | None = None,
                 on_case: Callable[[dict[str, Any]], None] | None = None):
        self.adapter, self.variant, self.dtype, self.device, self.config = adapter, variant, dtype, device, config
        self.classify = classify
        self.golden = golden or []          # [(manifest entry, arrays)] of this variant
        self.precision = precision_for(adapter, dtype)
        self.on_case = on_case or (lambda case: None)  # told each case before the adapter runs it

    def _announce(self, source: str, case_id: str, spec: RopeSpec, positions: Any, seed: Any, role: str,
                  heads: int) -> None:
        case = ({"golden": case_id} if source == "golden" else
                {"spec": spec.to_dict(), "positions": np.asarray(positions).tolist(), "seed": seed, "heads": heads})
        self.on_case({"source": source, "variant": self.variant.name, **case, "dtype": self.dtype,
                      "device": self.device, "role": role})

    def allows(self, spec: RopeSpec | dict) -> bool:
        """Whether ``--only`` admits a case of ``spec`` in this cell."""
        return only_admits(self.config.only, spec, self.variant.name, self.dtype, self.device)

    def judge(self, spec: RopeSpec, x: np.ndarray, positions: np.ndarray, *, source: str, case_id: str,
              seed: int | None = None, role: str = "query", expected: np.ndarray | None = None) -> CaseResult:
        """Run and judge one case against the reference (or ``expected``), classified against the registry."""
        self._announce(source, case_id, spec, positions, seed, role, int(np.shape(x)[1]) if np.ndim(x) == 4 else 1)
        return self.classify(judge(self.adapter, spec, x, positions, dtype=self.dtype, device=self.device,
                                   role=role, variant=self.variant.name, source=source, case_id=case_id,
                                   seed=seed, expected=expected))

    def check(self, source: str, spec: RopeSpec, fn: Callable[[], tuple[float, str]]) -> CaseResult:
        """A check that computes its own max ratio (``fn() -> (ratio, what failed)``), classified."""
        r = CaseResult(self.adapter.name, self.variant.name, self.dtype, self.device, source,
                       f"{source}:{self.variant.name}", Outcome.CONFORMS, spec=spec.to_dict())
        try:
            ratio, detail = fn()
            r.max_ratio = ratio
            if not ratio <= 1.0:
                r.outcome, r.message = Outcome.DIVERGES, f"{source}: {detail} ({ratio:.3g} x tolerance)"
        except Unsupported as e:
            r.outcome, r.message = Outcome.UNSUPPORTED, str(e)
        except BaseException as e:  # noqa: BLE001 - anything the adapter raises is this check's error
            r.outcome, r.message = Outcome.ERROR, f"{type(e).__name__}: {e}"
        return self.classify(r)

    # helpers for checks on the adapter's own outputs
    def call(self, spec: RopeSpec, x: np.ndarray, pos: np.ndarray, role: str = "query") -> np.ndarray:
        """The adapter's output for one call, checked (dtype, shape, real) and as float64."""
        self._announce("metamorphic", "", spec, pos, None, role, int(x.shape[1]))
        out = run_adapter_call(self.adapter, spec, x, pos, self.dtype, self.device, role)
        return check_output(out, x.shape, self.dtype, self.precision)

    def tolerance(self, spec: RopeSpec, x: np.ndarray, pos: np.ndarray, role: str = "query") -> np.ndarray:
        y = np.asarray(apply(spec, x.astype(np.float64), pos, role=role))
        phi, fac, xs = angle_terms(spec, pos, y.shape)
        return bound(y, phi, spec.rotary_dim, spec.layout, self.precision, fac, xs)


_SPEC_FIELDS = tuple(f.name for f in dataclasses.fields(RopeSpec))


def spec_fields(spec: RopeSpec | dict, variant: str, dtype: str, device: str, positions: Any = None,
                role: str = "query", source: str | None = None) -> dict[str, Any]:
    """What ``--only`` and the registry match on: every spec key of a case, its variant, dtype and
    device, its role, ``partial``, its source and, when positions are given, their min/max and sign."""
    spec = spec if isinstance(spec, RopeSpec) else RopeSpec.from_dict(spec)
    f = {name: getattr(spec, name) for name in _SPEC_FIELDS}  # shallow: asdict's deep copy costs per case
    f.update(variant=variant, dtype=dtype, device=device, role=role, partial=spec.rotary_dim < spec.head_dim,
             source=source)
    if positions is not None and np.size(positions):
        p = np.asarray(positions)
        f.update(min_position=int(p.min()), max_position=int(p.max()), negative_positions=bool(p.min() < 0))
    return f


def only_admits(only: dict[str, list[str]], spec: RopeSpec | dict, variant: str, dtype: str, device: str) -> bool:
    """Whether every ``--only`` key admits the case (numbers compare as numbers: rope_theta=10000 admits 10000.0)."""
    if not only:
        return True
    fields = spec_fields(spec, variant, dtype, device)
    return all(any(_same(fields.get(key), v) for v in vals) for key, vals in only.items())


def _same(have: Any, want: str) -> bool:
    if isinstance(have, (int, float)) and not isinstance(have, bool):
        try:
            return float(want) == float(have)
        except ValueError:
            return False
    if isinstance(have, (list, tuple)):
        return want in (str(list(have)), ",".join(str(v) for v in have))
    return str(have) == want


# ----------------------------------------------------------------------------- sources
@dataclasses.dataclass(frozen=True)
class CaseSource:
    name: str
    group: str                              # --no-<group> turns it off
    cases: Callable[[Cell], list[CaseResult]]
    doc: str = ""


def golden_cases(cell: Cell) -> list[CaseResult]:
    """Every golden case of the cell's variant, against its stored expected output; for xPos specs
    (where query and key differ) in both roles."""
    from ropeconf.golden_data.corpus import input_array

    out = []
    for case, arrays in cell.golden:
        if not cell.allows(case["spec"]):
            continue
        spec = RopeSpec.from_dict(case["spec"])
        x = input_array(arrays, cell.dtype)
        for role, key in (("query", f"expected_{cell.dtype}"), ("key", f"expected_key_{cell.dtype}")):
            if key in arrays:
                out.append(cell.judge(spec, x, arrays["positions"], source="golden", case_id=case["id"],
                                      expected=arrays[key], role=role))
    return out


def property_cases(cell: Cell) -> list[CaseResult]:
    """Hypothesis cases drawn within the adapter's declaration; a failure is shrunk to the smallest case."""
    from hypothesis import given
    from hypothesis import seed as hseed

    from .strategies import property_case

    cfg, variant = cell.config, cell.variant
    results: list[CaseResult] = []
    failures: list[CaseResult] = []

    def body(case: dict[str, Any]) -> None:
        spec = case["spec"]
        if not cell.allows(spec):
            return
        pos = case["positions"]
        x = make_input(spec, pos.shape[0], case["heads"], pos.shape[1], cell.dtype, case["seed"])
        r = cell.judge(spec, x, pos, source="property", seed=case["seed"], role=case["role"],
                       case_id=f"property:{variant.name}:{cell.dtype}:{cell.device}")
        r.worst = {**(r.worst or {}), "heads": case["heads"]}
        results.append(r)
        if Outcome.of(r.outcome).fails:
            failures.append(r)
            raise AssertionError(r.message)

    try:
        test = given(property_case(variant, cell.adapter.capabilities, cell.precision))(body)
        test.hypothesis.inner_test._hypothesis_internal_add_digest = \
            f"{cell.adapter.name}|{variant.name}|{cell.dtype}|{cell.device}".encode()
        test = _hypothesis_settings(cell, cfg.examples)(test)
        if cfg.seed is not None:
            test = hseed(cfg.seed)(test)
        test()
    except Exception as e:  # noqa: BLE001
        if not failures:  # not a case that failed: the source itself broke; that fails, it never passes
            return results + [_source_error(cell, "property", e)]
    if failures:
        minimal = failures[-1]
        minimal.case_id += ":minimal"
        return [r for r in results if not Outcome.of(r.outcome).fails] + [minimal]
    return results


def _source_error(cell: Cell, source: str, e: BaseException) -> CaseResult:
    import traceback

    r = CaseResult(cell.adapter.name, cell.variant.name, cell.dtype, cell.device, source, f"{source}:source",
                   Outcome.ERROR, message=f"the case source {source} failed: {type(e).__name__}: {e}",
                   worst={"traceback": traceback.format_exc(limit=-4)})
    return cell.classify(r)


def _hypothesis_settings(cell: Cell, examples: int):
    from hypothesis import HealthCheck, Phase, settings
    from hypothesis.database import DirectoryBasedExampleDatabase

    cfg = cell.config
    db = DirectoryBasedExampleDatabase(cfg.database) if cfg.database else None
    phases = [Phase.explicit, Phase.reuse, Phase.generate, Phase.shrink]  # no slow "explain" phase
    return settings(max_examples=examples, deadline=None, database=db, derandomize=cfg.seed is None,
                    phases=phases, suppress_health_check=list(HealthCheck), print_blob=False,
                    report_multiple_bugs=False)


def run_scenario(adapter: Adapter, scenario: dict[str, Any], device: str, variant: str = "",
                 on_case: Callable[[dict[str, Any]], None] | None = None,
                 classify: Callable[[CaseResult], CaseResult] | None = None,
                 dtype: str | None = None) -> list[CaseResult]:
    """Play a call sequence on fresh live instances (``Adapter.instance``, else one ``run`` per call),
    judging every call against the reference for exactly that call; stops at the first failing call.

    With ``dtype`` (a cell's), calls in other dtypes are made (they set up the state a dtype
    switch leaves behind) but judged only in their own dtype's cell.
    """
    from .adapter import CallInstance

    specs = [s if isinstance(s, RopeSpec) else RopeSpec.from_dict(s) for s in scenario["instances"]]
    live: dict[int, Any] = {}
    out: list[CaseResult] = []
    replay = scenario_json(scenario)
    for k, c in enumerate(scenario["calls"]):
        spec, dt, role = specs[c["instance"]], c["dtype"], c.get("role", "query")
        pos = np.asarray(c["positions"], dtype=np.int64)
        x = make_input(spec, pos.shape[0], c.get("heads", 1), pos.shape[1], dt, c.get("seed", k + 1))
        r = CaseResult(adapter.name, variant, dt, device, "stateful", f"stateful:{scenario['kind']}:call{k}",
                       Outcome.CONFORMS, spec=spec.to_dict(), positions=pos.tolist(), seed=c.get("seed"), role=role,
                       scenario=replay)
        try:
            why = adapter.why_unsupported(spec, dt, device, pos)
            if why:
                r.outcome, r.message = Outcome.UNSUPPORTED, f"call {k}: {why}"
                out.append(r)
                continue
            if on_case:
                on_case({"source": "stateful", "variant": variant, "scenario": replay, "call": k, "dtype": dt,
                         "device": device, "role": role})
            inst = live.get(c["instance"])
            if inst is None:
                inst = adapter.instance(spec, dt, device) or CallInstance(adapter, spec, device)
                live[c["instance"]] = inst
            if dtype is not None and dt != dtype:  # a set-up call of a dtype switch: made, judged elsewhere
                try:
                    inst.run(np.array(x, copy=True), np.array(pos, copy=True), role)
                except Exception:  # noqa: BLE001 - its failure belongs to its own dtype's cell
                    pass
                continue
            expected = np.asarray(apply(spec, x.astype(np.float64), pos, role=role))
            actual = inst.run(np.array(x, copy=True), np.array(pos, copy=True), role)
            actual = actual.cpu() if hasattr(actual, "cpu") and not isinstance(actual, np.ndarray) else actual
            ratio, abs_err, worst, profile = compare(spec, actual, expected, pos, precision_for(adapter, dt), dt)
        except Unsupported as e:
            r.outcome, r.message = Outcome.UNSUPPORTED, f"call {k}: {e}"
            out.append(r)
            continue
        except BaseException as e:  # noqa: BLE001 - anything the library raises is this call's error
            r.outcome, r.message = Outcome.ERROR, f"call {k} of {len(scenario['calls'])}: {type(e).__name__}: {e}"
        else:
            r.max_ratio, r.max_abs_error, r.worst, r.profile = ratio, abs_err, worst, profile
            if not ratio <= 1.0:
                r.outcome = Outcome.DIVERGES
                r.message = (f"call {k} of {len(scenario['calls'])} ({scenario['kind']}): max error {abs_err:.3g} = "
                             f"{ratio:.3g} x tolerance at position {worst['position']}, pair {worst['pair']}")
        r = classify(r) if classify else r
        out.append(r)
        if Outcome.of(r.outcome).fails:
            break
    return out


def scenario_json(scenario: dict[str, Any]) -> dict[str, Any]:
    """The JSON form of a scenario (``ropeconf replay --case '{"scenario": ...}'`` plays it again)."""
    return {"kind": scenario["kind"],
            "instances": [s.to_dict() if isinstance(s, RopeSpec) else dict(s) for s in scenario["instances"]],
            "calls": [{**c, "positions": np.asarray(c["positions"]).tolist()} for c in scenario["calls"]]}


def stateful_cases(cell: Cell) -> list[CaseResult]:
    """Call sequences on live instances, shrunk to the shortest failing sequence (``strategies.scenario_for``)."""
    from hypothesis import given
    from hypothesis import seed as hseed

    from .strategies import scenario_for, scenario_kinds

    cfg, variant = cell.config, cell.variant
    others = tuple(d for d in cell.adapter.capabilities.dtypes if d != cell.dtype)
    kinds = scenario_kinds(variant, cell.adapter.capabilities, others)
    out: list[CaseResult] = []
    for kind in kinds:  # every kind runs (at least once): none is left to chance
        results: list[CaseResult] = []
        failures: list[CaseResult] = []

        def body(scenario: dict[str, Any]) -> None:
            if not all(cell.allows(s) for s in scenario["instances"]):
                return
            rs = run_scenario(cell.adapter, scenario, cell.device, variant.name, cell.on_case, cell.classify,
                              cell.dtype)
            results.extend(rs)
            bad = [r for r in rs if Outcome.of(r.outcome).fails]
            if bad:
                failures.append(bad[-1])
                raise AssertionError(bad[-1].message)

        try:
            test = given(scenario_for(variant, cell.adapter.capabilities, cell.precision, cell.dtype, others,
                                      kind))(body)
            test.hypothesis.inner_test._hypothesis_internal_add_digest = \
                f"stateful|{kind}|{cell.adapter.name}|{variant.name}|{cell.dtype}|{cell.device}".encode()
            # ci (8 examples per cell): one sequence per kind, whose first draw is built to be telling
            test = _hypothesis_settings(cell, max(1, cfg.examples // (2 * len(kinds))))(test)
            if cfg.seed is not None:
                test = hseed(cfg.seed)(test)
            test()
        except Exception as e:  # noqa: BLE001
            if not failures:  # not a case that failed: the source itself broke; that fails, it never passes
                out.append(_source_error(cell, f"stateful:{kind}", e))
        if failures:
            minimal = failures[-1]
            minimal.case_id += ":minimal"
            out += [r for r in results if not Outcome.of(r.outcome).fails] + [minimal]
        else:
            out += results
    return out


# --- metamorphic checks: properties of the adapter's own outputs; the reference only scales the tolerance
@dataclasses.dataclass
class _Setup:
    spec: RopeSpec
    x: np.ndarray
    pos: np.ndarray
    layouts: list[str]


def _metamorphic_setup(cell: Cell) -> _Setup | None:
    caps = cell.adapter.capabilities
    layouts = [lay for lay in ("half", "interleaved") if lay in caps.layouts]
    if not layouts or cell.variant.streams > 1 or caps.positions == "range":
        return None  # the checks shift positions and need 1-D positions
    spec = cell.variant.spec(head_dim=64, rotary_dim=64, layout=layouts[0])
    if not cell.allows(spec) or cell.adapter.why_unsupported(spec, cell.dtype, cell.device):
        return None
    seq, start = 8, 1000
    x = make_input(spec, 1, 2, seq, cell.dtype, 11)
    return _Setup(spec, x, (start + np.arange(seq, dtype=np.int64))[None], layouts)


def metamorphic(name: str, applies: Callable[[Variant, _Setup], bool], doc: str):
    """Register ``fn(cell, setup) -> (ratio, what failed)`` as the source ``metamorphic:<name>``."""
    def deco(fn: Callable[[Cell, _Setup], tuple[float, str]]) -> CaseSource:
        def cases(cell: Cell) -> list[CaseResult]:
            st = _metamorphic_setup(cell)
            if st is None or not applies(cell.variant, st):
                return []
            return [cell.check(f"metamorphic:{name}", st.spec, lambda: fn(cell, st))]
        return CaseSource(f"metamorphic:{name}", "metamorphic", cases, doc)
    return deco


@metamorphic("offset_composition", lambda v, st: v.relative and not st.spec.xpos,
             "two chunks decoded separately equal the whole sequence (xPos centres on the sequence: skipped)")
def offset_composition(cell: Cell, st: _Setup) -> tuple[float, str]:
    spec, x, pos = st.spec, st.x, st.pos
    whole = cell.call(spec, x, pos)
    h = pos.shape[1] // 2
    parts = np.concatenate([cell.call(spec, np.ascontiguousarray(x[:, :, :h]), pos[:, :h]),
                            cell.call(spec, np.ascontiguousarray(x[:, :, h:]), pos[:, h:])], axis=2)
    t = 2 * cell.tolerance(spec, x, pos)
    return float(np.max(np.abs(whole - parts) / t)), "chunked decoding differs from the whole sequence"


@metamorphic("relative_invariance", lambda v, st: v.relative,
             "q.k is unchanged when both positions shift by the same amount")
def relative_invariance(cell: Cell, st: _Setup) -> tuple[float, str]:
    spec, x, pos = st.spec, st.x, st.pos
    k = make_input(spec, 1, 2, pos.shape[1], cell.dtype, 12)
    shift = 4096
    q0, k0 = cell.call(spec, x, pos), cell.call(spec, k, pos, "key")
    q1, k1 = cell.call(spec, x, pos + shift), cell.call(spec, k, pos + shift, "key")
    d0 = np.einsum("bhid,bhjd->bhij", q0, k0)
    d1 = np.einsum("bhid,bhjd->bhij", q1, k1)
    tq, tk = cell.tolerance(spec, x, pos + shift), cell.tolerance(spec, k, pos + shift, "key")
    aq, ak = np.abs(q1), np.abs(k1)
    t = 2 * (np.einsum("bhid,bhjd->bhij", tq, ak) + np.einsum("bhid,bhjd->bhij", aq, tk))
    return float(np.max(np.abs(d0 - d1) / t)), f"q.k changes when both positions shift by {shift}"


@metamorphic("norm_preservation", lambda v, st: True,
             "each output pair's norm is M times the input pair's (M: attention factor times xPos scale)")
def norm_preservation(cell: Cell, st: _Setup) -> tuple[float, str]:
    # M is a spec-derived scalar per pair; nothing here uses the reference's rotation.
    from ropeconf.reference import inv_freq, xpos_scale

    spec, x, pos = st.spec, st.x, st.pos
    y = cell.call(spec, x, pos)
    m = inv_freq(spec, int(pos.max()) + 1)[1]
    mag = np.full(y.shape, m)
    if spec.xpos:
        z = np.asarray(xpos_scale(spec, pos))[:, None]  # (batch, 1, seq, r/2)
        per = np.concatenate([z, z], -1) if spec.layout == "half" else np.repeat(z, 2, -1)
        mag[..., : spec.rotary_dim] *= per
    want = pair_norm(x.astype(np.float64), spec.rotary_dim, spec.layout) * mag
    got = pair_norm(y, spec.rotary_dim, spec.layout)
    t = 2 * cell.tolerance(spec, x, pos)
    return float(np.max(np.abs(got - want) / t)), "the rotation does not preserve each pair's norm"


@metamorphic("layout_identity", lambda v, st: len(st.layouts) == 2,
             "half layout equals de-interleave(interleaved(interleave(x))) (adapters with both layouts)")
def layout_identity(cell: Cell, st: _Setup) -> tuple[float, str]:
    spec, x, pos = st.spec, st.x, st.pos
    r = spec.rotary_dim
    perm = np.concatenate([np.arange(0, r, 2), np.arange(1, r, 2), np.arange(r, spec.head_dim)])
    half, inter = spec.replace(layout="half"), spec.replace(layout="interleaved")
    xi = np.empty_like(x)
    xi[..., perm] = x                       # x in half order -> interleaved order
    yh = cell.call(half, x, pos)
    yi = cell.call(inter, np.ascontiguousarray(xi), pos)[..., perm]
    t = cell.tolerance(half, x, pos) * 2
    return float(np.max(np.abs(yh - yi) / t)), "half != de-interleave(interleaved(interleave(x)))"


SOURCES: dict[str, CaseSource] = {s.name: s for s in [
    CaseSource("golden", "golden", golden_cases, "the golden corpus (stored expected outputs)"),
    CaseSource("property", "properties", property_cases, "hypothesis cases within the adapter's declaration"),
    offset_composition, relative_invariance, norm_preservation, layout_identity,
    CaseSource("stateful", "stateful", stateful_cases,
               "call sequences on live instances: decode, ragged rows, growing past L0, dtype switches, two specs"),
]}
# --no-<group> switches and what they skip
GROUPS: dict[str, str] = {"golden": "golden-data cases", "properties": "hypothesis cases",
                          "metamorphic": "metamorphic checks", "stateful": "stateful call sequences"}
assert {s.group for s in SOURCES.values()} <= set(GROUPS)
