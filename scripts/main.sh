#!/usr/bin/env bash
# The main job: set up .venv with every peer library, verify the golden data, run the conformance suite
# against every installed peer, run zeta in its own tox environment (its deps conflict with .venv), and
# print the merged matrix. Writes out/results.json and out/report.html. Exit code: the suite's
# (0 nothing diverges outside the known-divergence registry, 1 something does).
# Extra arguments go to `ropeconf run` (e.g. --profile dev, --dtype float32).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
bash scripts/setup-venv.sh
export PATH="$ROOT/.venv/bin:$PATH"
mkdir -p out
ropeconf golden verify
status=0
ropeconf run --json out/main.json "$@" > out/main.txt || status=$?
[ "$status" -le 1 ] || { cat out/main.txt; exit "$status"; }
echo "[main] zeta runs in its own environment: tox -e zeta"
tox -q -e zeta > out/zeta-tox.log 2>&1 || echo "[main] tox -e zeta failed; see out/zeta-tox.log"
parts=(out/main.json)
[ -f out/zeta.json ] && parts+=(out/zeta.json)
ropeconf report merge "${parts[@]}" --json out/results.json --report out/report.html
