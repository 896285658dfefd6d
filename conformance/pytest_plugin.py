"""pytest plugin (entry point ``pytest11: ropeconf``): gate your CI on conformance.

    pytest --pyargs ropeconf.conformance --ropeconf-adapter=my_pkg.rope:my_rope \
           [--ropeconf-dtype=float32,bfloat16] [--ropeconf-device=cpu] [--ropeconf-profile=ci] \
           [--ropeconf-only=layout=half] -n 2 --junitxml=rope.xml

One test per (adapter, variant, dtype, device) cell; each outcome's pytest action
(``Outcome.pytest``) decides: conforms passes; diverges / error / fixed fail
(with the smallest failing case and its replay command); a known divergence is
an xfail; unsupported / unavailable skip with the reason.  Every ``ropeconf
run`` option is available as ``--ropeconf-<flag>`` (derived from ``RunConfig``).
Each adapter runs once, in its own worker process with a timeout
(``--ropeconf-timeout``), so a crash or hang fails that adapter's cells only;
under pytest-xdist an adapter's cells share one xdist group.
"""

from __future__ import annotations

import pytest

_CACHE: dict[str, dict] = {}
PREFIX = "ropeconf-"


def pytest_addoption(parser: pytest.Parser) -> None:
    from .config import RunConfig

    g = parser.getgroup("ropeconf", "RoPE conformance")
    g.addoption("--ropeconf-adapter", action="append", default=[], metavar="NAME",
                help="adapter to test: built-in name, entry point or module:attribute (repeatable)")
    RunConfig.add_arguments(g, prefix=PREFIX, pytest=True)


def _config(pc: pytest.Config):
    from .config import RunConfig

    cfg = RunConfig.from_options(lambda name: pc.getoption(RunConfig.option_name(name, PREFIX)))
    if cfg.shard:
        raise pytest.UsageError(f"--{PREFIX}shard {cfg.shard}: sharding is a `ropeconf run` feature (its parts are "
                                "joined by `ropeconf report merge`); under pytest, spread the cells over workers "
                                "with pytest-xdist (-n N) instead")
    return cfg


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    from .runner import cells_of

    pc = metafunc.config
    names = pc.getoption("--ropeconf-adapter")
    if "ropeconf_cell" in metafunc.fixturenames:
        params = [pytest.param((name, v, dt, dev), id=f"{name}-{v}-{dt}-{dev}",
                               marks=pytest.mark.xdist_group(name))
                  for name in names for v, dt, dev in cells_of(_config(pc))]
        if not params:
            params = [pytest.param(None, marks=pytest.mark.skip(reason="no --ropeconf-adapter given"),
                                   id="no-adapter")]
        metafunc.parametrize("ropeconf_cell", params)
    if "ropeconf_adapter" in metafunc.fixturenames:
        params = [pytest.param(name, id=name, marks=pytest.mark.xdist_group(name)) for name in names]
        if not params:
            params = [pytest.param(None, marks=pytest.mark.skip(reason="no --ropeconf-adapter given"),
                                   id="no-adapter")]
        metafunc.parametrize("ropeconf_adapter", params)


def adapter_report(pc: pytest.Config, name: str) -> dict:
    if name not in _CACHE:
        from .runner import run_isolated

        _CACHE[name] = run_isolated([name], _config(pc), jobs=1)[0]
    return _CACHE[name]


def check_cell(pc: pytest.Config, cell: tuple[str, str, str, str]) -> None:
    from .outcome import Outcome
    from .presentation import replay_case, replay_command

    name, variant, dtype, device = cell
    rep = adapter_report(pc, name)
    found = [c for c in rep["cells"] if (c["variant"], c["dtype"], c["device"]) == (variant, dtype, device)]
    if not found:
        pytest.fail(f"{name}: no result for {variant} {dtype} {device}")
    c = found[0]
    outcome, msg = Outcome.of(c["outcome"]), c.get("message", "")
    if outcome.pytest == "skip":
        pytest.skip(f"{name} {variant} {dtype} {device}: {outcome.value}: {msg}")
    if outcome.pytest == "xfail":
        pytest.xfail(f"known divergence {(c.get('minimal') or {}).get('known_id')}: {msg}")
    if outcome.pytest == "fail":
        case = replay_case(c.get("minimal"), dtype, device)
        replay = f"\nreplay: {replay_command(name, case)}" if case else ""
        pytest.fail(f"{name} {variant} {dtype} {device}: {outcome.value}: {msg}{replay}", pytrace=False)
    assert outcome.pytest == "pass", outcome


def check_adapter(pc: pytest.Config, name: str) -> None:
    """The adapter as a whole: the policy of ``outcome.decide`` (an adapter named here must judge at least
    one case unless --ropeconf-allow-empty; --ropeconf-require / --ropeconf-strict make unavailable fatal;
    --ropeconf-strict fails on registry entries that matched nothing)."""
    from .outcome import EXIT_OK, Policy, decide

    cfg = _config(pc)
    rep = adapter_report(pc, name)
    policy = Policy(explicit=(name,), require=cfg.require, allow_empty=cfg.allow_empty, strict=cfg.strict)
    decision = decide({"adapters": [rep], "warnings": rep.get("warnings", [])}, policy)
    # failing cells fail their own tests; this one reports what is about the adapter as a whole
    whole = [r for r in decision.reasons if r.startswith((f"{name}:", "--strict"))]
    if decision.exit_code != EXIT_OK and whole:
        pytest.fail("\n".join(whole), pytrace=False)
