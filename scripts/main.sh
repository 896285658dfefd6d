#!/usr/bin/env bash
# The main job: set up .venv with every peer library, verify the golden data, run the conformance suite
# against every installed peer, and print the merged matrix (out/results.json, out/report.html).
#   * every built-in adapter runs with the `ropeconf run` defaults (float32 and bfloat16, ci profile);
#     GPU-only adapters show as unavailable with the reason on a machine without a CUDA GPU;
#   * Modular MAX compiles one graph per configuration (~40-60 s cold, ~4 s warm, cached in .cache/):
#     it runs the golden cases of one head_dim and layout in float32 (tox -e max runs more);
#   * zeta runs in its own tox environment (its deps conflict with .venv).
# Exit code: the suite's (0 nothing diverges outside the known-divergence registry, 1 something does).
# Extra arguments go to the main `ropeconf run` (e.g. --profile dev).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
bash scripts/setup-venv.sh
export PATH="$ROOT/.venv/bin:$PATH"
export ROPECONF_CACHE_DIR="${ROPECONF_CACHE_DIR:-$ROOT/.cache/ropeconf}"
mkdir -p out
ropeconf golden verify
rc=0
adapters=$(python -c "from ropeconf.adapters import BUILTIN; print(' '.join(n for n in BUILTIN if n not in ('max', 'zeta')))")
echo "[main] ropeconf run (all adapters but max and zeta)"
ropeconf run --adapter $adapters --json out/main.json "$@" > out/main.txt || rc=$?
[ "$rc" -le 1 ] || { cat out/main.txt; exit "$rc"; }
echo "[main] ropeconf run --adapter max (golden cases, head_dim 64, half layout, float32)"
ropeconf run --adapter max --only head_dim=64,layout=half --no-properties --dtype float32 --timeout 3600 \
    --json out/max.json > out/max.txt || true
echo "[main] tox -e zeta (zeta's own environment)"
tox -q -e zeta > out/zeta-tox.log 2>&1 || echo "[main] tox -e zeta failed; see out/zeta-tox.log"
parts=(out/main.json)
for p in out/max.json out/zeta.json; do [ -f "$p" ] && parts+=("$p"); done
ropeconf report merge "${parts[@]}" --json out/results.json --report out/report.html
