"""pytest plugin (entry point ``pytest11: ropeconf``): gate your CI on conformance.

    pytest --pyargs ropeconf.conformance --ropeconf-adapter=my_pkg.rope:my_rope \
           [--ropeconf-dtype=float32,bfloat16] [--ropeconf-device=cpu] [--ropeconf-profile=ci] \
           [--ropeconf-only=layout=half] -n 2 --junitxml=rope.xml

One test per (adapter, variant, dtype, device) cell.  conforms -> pass;
diverges / error / fixed -> fail (with the smallest failing case and its replay
command); known divergence -> xfail; unsupported / unavailable -> skip with the
reason.  Each adapter runs once, in its own worker process with a timeout
(``--ropeconf-timeout``), so a crash or hang fails that adapter's cells only;
under pytest-xdist an adapter's cells share one xdist group.
"""

from __future__ import annotations

import json

import pytest

_CACHE: dict[str, dict] = {}


def pytest_addoption(parser: pytest.Parser) -> None:
    g = parser.getgroup("ropeconf", "RoPE conformance")
    g.addoption("--ropeconf-adapter", action="append", default=[], metavar="NAME",
                help="adapter to test: built-in name, entry point or module:attribute (repeatable)")
    g.addoption("--ropeconf-dtype", default="float32,bfloat16", help="comma list of dtypes")
    g.addoption("--ropeconf-device", default="cpu", help="cpu, cuda or cpu,cuda")
    g.addoption("--ropeconf-profile", default="ci", choices=["ci", "dev", "thorough"])
    g.addoption("--ropeconf-max-examples", type=int, default=None)
    g.addoption("--ropeconf-only", default=None, help="restrict cases, e.g. rope_type=default,layout=half")
    g.addoption("--ropeconf-variants", default=None, help="comma list of variant records")
    g.addoption("--ropeconf-timeout", type=float, default=900.0, help="seconds per adapter worker")


def _config(pc: pytest.Config):
    from .runner import RunConfig, parse_only

    variants = pc.getoption("--ropeconf-variants")
    return RunConfig(dtypes=tuple(pc.getoption("--ropeconf-dtype").split(",")),
                     devices=tuple(pc.getoption("--ropeconf-device").split(",")),
                     profile=pc.getoption("--ropeconf-profile"),
                     max_examples=pc.getoption("--ropeconf-max-examples"),
                     only=parse_only(pc.getoption("--ropeconf-only")),
                     variants=tuple(variants.split(",")) if variants else None)


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "ropeconf_cell" not in metafunc.fixturenames:
        return
    from ropeconf.reference.variants import VARIANTS

    pc = metafunc.config
    cfg = _config(pc)
    params = []
    for name in pc.getoption("--ropeconf-adapter"):
        for v in (cfg.variants or tuple(VARIANTS)):
            for dt in cfg.dtypes:
                for dev in cfg.devices:
                    params.append(pytest.param((name, v, dt, dev), id=f"{name}-{v}-{dt}-{dev}",
                                               marks=pytest.mark.xdist_group(name)))
    if not params:
        params = [pytest.param(None, marks=pytest.mark.skip(reason="no --ropeconf-adapter given"), id="no-adapter")]
    metafunc.parametrize("ropeconf_cell", params)


def adapter_report(pc: pytest.Config, name: str) -> dict:
    if name not in _CACHE:
        from .runner import run_isolated

        _CACHE[name] = run_isolated([name], _config(pc), jobs=1, timeout=pc.getoption("--ropeconf-timeout"))[0]
    return _CACHE[name]


def check_cell(pc: pytest.Config, cell: tuple[str, str, str, str]) -> None:
    name, variant, dtype, device = cell
    rep = adapter_report(pc, name)
    found = [c for c in rep["cells"] if (c["variant"], c["dtype"], c["device"]) == (variant, dtype, device)]
    if not found:
        pytest.fail(f"{name}: no result for {variant} {dtype} {device}")
    c = found[0]
    outcome, msg = c["outcome"], c.get("message", "")
    if outcome == "unavailable":
        pytest.skip(f"{name} unavailable: {msg}")
    if outcome == "unsupported":
        pytest.skip(f"{name} does not support {variant} {dtype} {device}")
    if outcome == "known":
        kid = (c.get("minimal") or {}).get("known_id")
        pytest.xfail(f"known divergence {kid}: {msg}")
    if outcome in ("diverges", "error", "fixed"):
        m = c.get("minimal") or {}
        case = {"spec": m.get("spec"), "positions": m.get("positions"), "dtype": dtype, "device": device,
                "seed": m.get("seed"), "heads": (m.get("worst") or {}).get("heads", 1)}
        pytest.fail(f"{name} {variant} {dtype} {device}: {outcome}: {msg}\n"
                    f"replay: ropeconf replay --adapter {name} --case '{json.dumps(case)}'", pytrace=False)
