#!/usr/bin/env bash
# The main job: set up .venv with every peer library, verify the golden data, then run the conformance
# suite against every installed peer and print the matrix (also writes out/results.json and out/report.html).
# Extra arguments go to `ropeconf run` (e.g. --profile dev, --dtype float32).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
bash scripts/setup-venv.sh
[ -x scripts/setup-venv-zeta.sh ] && bash scripts/setup-venv-zeta.sh || true
export PATH="$ROOT/.venv/bin:$PATH"
mkdir -p out
ropeconf golden verify
ropeconf run --json out/results.json --report out/report.html "$@"
