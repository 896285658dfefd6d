"""The conformance test template, collected by ``pytest --pyargs ropeconf.conformance``.

Parametrized by the plugin (ropeconf.conformance.pytest_plugin) over
(adapter, variant, dtype, device) cells given by ``--ropeconf-adapter``.
"""

from ropeconf.conformance.pytest_plugin import check_adapter, check_cell


def test_cell(ropeconf_cell, request):
    check_cell(request.config, ropeconf_cell)


def test_adapter(ropeconf_adapter, request):
    """Per adapter: it judged something (unless --ropeconf-allow-empty) and, if required, was available."""
    check_adapter(request.config, ropeconf_adapter)
