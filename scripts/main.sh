#!/usr/bin/env bash
# The main job: set up .venv with every peer library, verify the golden data, run the conformance suite
# against every installed peer, and print the merged matrix (out/results.json, out/report.html).
#   * every built-in adapter runs with the `ropeconf run` defaults (float32 and bfloat16, ci profile);
#     GPU-only adapters show as unavailable with the reason on a machine without a CUDA GPU;
#   * Modular MAX compiles one graph per configuration (~40-60 s cold, ~4 s warm, cached in .cache/):
#     it runs the golden cases of one head_dim and layout in float32 (tox -e max runs more);
#   * zeta runs in its own tox environment (its deps conflict with .venv).
# Fails closed: a part that produces no results, or ends with a usage error (2) or with nothing judged (3),
# fails the job with that code; otherwise the exit code is the merged run's (0 nothing diverges outside
# the known-divergence registry, 1 something diverges, errors, is unjudgeable or a known divergence is fixed).
# Extra arguments go to the main `ropeconf run` (e.g. --profile dev).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
bash scripts/setup-venv.sh
export PATH="$ROOT/.venv/bin:$PATH"
export ROPECONF_CACHE_DIR="${ROPECONF_CACHE_DIR:-$ROOT/.cache/ropeconf}"
mkdir -p out
rm -f out/main.json out/max.json out/zeta.json out/results.json
ropeconf golden verify

declare -A rc=([main]=0 [max]=0 [zeta]=0)
echo "[main] ropeconf run (every built-in adapter but max and zeta)"
ropeconf run --skip-adapter max zeta --json out/main.json "$@" > out/main.txt || rc[main]=$?
echo "[main] ropeconf run --adapter max (golden cases, head_dim 64, half layout, float32)"
ropeconf run --adapter max --only head_dim=64,layout=half --no-properties --dtype float32 --timeout 3600 \
    --json out/max.json > out/max.txt || rc[max]=$?
echo "[main] tox -e zeta (zeta's own environment)"
tox -q -e zeta > out/zeta-tox.log 2>&1 || rc[zeta]=$?

final=0
for part in main max zeta; do
    if [ ! -s "out/$part.json" ]; then
        echo "[main] FAILED: part '$part' produced no results (exit ${rc[$part]}); see out/$part.txt or out/zeta-tox.log"
        final=1
    elif [ "${rc[$part]}" -ge 2 ] && [ "$part" != zeta ]; then
        echo "[main] FAILED: part '$part' exited ${rc[$part]}:"
        tail -n 20 "out/$part.txt"
        [ "${rc[$part]}" -gt "$final" ] && final=${rc[$part]}
    fi
done
parts=()
for p in out/main.json out/max.json out/zeta.json; do [ -s "$p" ] && parts+=("$p"); done
merged=0
ropeconf report merge "${parts[@]}" --json out/results.json --report out/report.html || merged=$?
[ "$merged" -gt "$final" ] && final=$merged
exit "$final"
