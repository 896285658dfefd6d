#!/usr/bin/env bash
# rope-conformance CI recipe (plain shell): install the suite and your package, run the suite against
# your adapter, keep the HTML report, and gate on the exit code. Copy it into your repository.
#
#   ROPECONF_ADAPTER=my_pkg.rope:adapter bash ci-recipe.sh
#
# Variables: ROPECONF_ADAPTER (required: module:attribute or an entry-point name), ROPECONF_SPEC (pip
# requirement for the suite, default rope-conformance), ROPECONF_PACKAGE (pip requirement for your
# package, default: the current directory), ROPECONF_DTYPES (default float32,bfloat16), ROPECONF_OUT
# (report folder, default rope-report), ROPECONF_VENV (default .ropeconf-venv), ROPECONF_VENV_ARGS
# (extra `python -m venv` arguments, e.g. --system-site-packages).
# Exit status: the suite's: 0 conforms (or only known divergences), 1 diverges, 2 usage/config error.
set -euo pipefail
adapter="${ROPECONF_ADAPTER:?set ROPECONF_ADAPTER to module:attribute or an entry-point name}"
out="${ROPECONF_OUT:-rope-report}"
venv="${ROPECONF_VENV:-.ropeconf-venv}"
python3 -m venv ${ROPECONF_VENV_ARGS:-} "$venv"
"$venv/bin/python" -m pip install -q "${ROPECONF_SPEC:-rope-conformance}[report]"
"$venv/bin/python" -m pip install -q "${ROPECONF_PACKAGE:-.}"
mkdir -p "$out"
status=0
"$venv/bin/ropeconf" run --adapter "$adapter" --dtype "${ROPECONF_DTYPES:-float32,bfloat16}" \
    --json "$out/results.json" --report "$out/report.html" || status=$?
echo "rope-conformance: exit $status; report: $out/report.html"
exit "$status"
