#!/usr/bin/env bash
# The GPU side of rope-conformance, in one command, on a machine with an NVIDIA GPU:
#
#   bash scripts/gpu-check.sh
#
# 1. .venv via scripts/setup-venv.sh (the project's one venv; it holds the CPU torch 2.13.0);
# 2. swaps that torch for the CUDA build of the same version (download.pytorch.org/whl/<cuXYZ>);
# 3. installs the GPU packages, each attempted separately, every one pinned to that torch (a package
#    that needs another torch fails instead of replacing it), continuing on failure:
#    cupy-cuda12x, triton, flash-attn, liger-kernel, vllm, transformer-engine;
# 4. runs `ropeconf gpu-parity`, the GPU tests
#    (pytest tests/test_adapter_{flash_attn,liger,vllm,transformer_engine}.py tests/test_reference_properties.py
#    -k "cuda or cupy or gpu"),
#    and `ropeconf run --device cuda` over every torch-based and GPU adapter -> out/gpu.json, out/gpu.html.
#
# Exit status: 0 when all three steps pass; 1 when a step failed (each failure is named at the end);
# 2 when the machine cannot do the check at all (no GPU/driver, no usable venv, no CUDA torch).
# A package that fails to install is reported, and its adapters then show as unavailable
# (with the import error) in the matrix; that alone does not fail the run.
#
# Knobs:
#   ROPE_GPU_CHECK_DRY_RUN=1  print the plan (commands and adapter list) and exit 0; installs and runs nothing
#   ROPE_TORCH_CUDA=cu128     CUDA tag of the torch wheel (default: from the driver's CUDA version, nvidia-smi)
#   ROPE_TORCH_INDEX=URL      torch wheel index (default https://download.pytorch.org/whl/$ROPE_TORCH_CUDA)
#   ROPE_SKIP_INSTALL=1       install nothing (use the venv as it is)
#   ROPE_GPU_REINSTALL=1      reinstall GPU packages that already import
#   ROPE_PIP_TIMEOUT=3600     seconds per package install (flash-attn / transformer-engine may compile)
#   MAX_JOBS=N                parallel compile jobs for flash-attn / transformer-engine source builds
#   ROPE_RUN_ARGS="..."       extra arguments for `ropeconf run` (e.g. "--dtype float32,float16,bfloat16")
#   ROPE_VENV=/path           the venv (default <repo>/.venv, as setup-venv.sh)
#
# Note: after step 2 the venv holds a CUDA torch; setup-venv.sh leaves it alone (its stamp is unchanged), but
# `ROPE_SETUP_FORCE=1 bash scripts/setup-venv.sh` would stop at its "expected 2.13.0+cpu" check: rm -rf .venv
# for a CPU venv again.
set -uo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
VENV="${ROPE_VENV:-$ROOT/.venv}"
PY="$VENV/bin/python"
DRY="${ROPE_GPU_CHECK_DRY_RUN:-0}"
PIP_TIMEOUT="${ROPE_PIP_TIMEOUT:-3600}"
LOGDIR="$ROOT/out/gpu-check-logs"
export PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_INPUT=1

log() { echo "[gpu-check] $*"; }
err() { echo "[gpu-check] ERROR: $*" >&2; }
plan() { echo "+ $*"; }
plan_cmd() { printf '+'; printf ' %q' "$@"; echo; }  # a command array, quoted as the shell would need it

# ----------------------------------------------------------------------------- 0. the machine
if [ "$DRY" != "1" ]; then
    if ! command -v nvidia-smi >/dev/null 2>&1 || ! nvidia-smi >/dev/null 2>&1; then
        err "nvidia-smi is missing or fails: this check needs a machine with an NVIDIA GPU and its driver"
        exit 2
    fi
    log "GPU: $(nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | head -n 1)"
fi

# CUDA tag of the torch wheel: from the newest CUDA the driver supports, unless given
cuda_tag() {
    if [ -n "${ROPE_TORCH_CUDA:-}" ]; then echo "$ROPE_TORCH_CUDA"; return; fi
    local v major minor
    v=$(nvidia-smi 2>/dev/null | sed -n 's/.*CUDA Version: *\([0-9][0-9]*\.[0-9][0-9]*\).*/\1/p' | head -n 1)
    major=${v%%.*}; minor=${v#*.}
    if [ -z "$v" ]; then echo "cu128"
    elif [ "$major" -ge 13 ]; then echo "cu130"
    elif [ "$major" -eq 12 ] && [ "$minor" -ge 8 ]; then echo "cu128"
    elif [ "$major" -eq 12 ] && [ "$minor" -ge 6 ]; then echo "cu126"
    else echo "unsupported-driver-cuda-$v"
    fi
}
TAG=$(cuda_tag)
INDEX="${ROPE_TORCH_INDEX:-https://download.pytorch.org/whl/$TAG}"
case "$TAG" in cu13*) CUPY="cupy-cuda13x" ;; *) CUPY="cupy-cuda12x" ;; esac

# ----------------------------------------------------------------------------- 1. the venv
if [ "$DRY" = "1" ]; then
    plan "bash scripts/setup-venv.sh"
elif ! bash scripts/setup-venv.sh; then
    if [ -x "$PY" ]; then
        err "scripts/setup-venv.sh failed (it pins torch==2.13.0+cpu, a wheel that only exists in /opt/wheels on" \
            "the development machines); continuing with the existing $VENV"
    else
        err "scripts/setup-venv.sh failed and there is no $VENV: nothing to run. setup-venv.sh pins" \
            "torch==2.13.0+cpu from /opt/wheels; on a machine without that wheel build .venv another way first."
        exit 2
    fi
fi
if [ "$DRY" != "1" ] && ! "$PY" -c "import ropeconf" 2>/dev/null; then
    err "$PY cannot import ropeconf: the venv is broken (re-run scripts/setup-venv.sh)"
    exit 2
fi

# ----------------------------------------------------------------------------- 2. CUDA torch
have_cuda_torch() { "$PY" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)' 2>/dev/null; }
if [ "$DRY" = "1" ]; then
    plan "$PY -m pip install 'torch==<venv torch version>+$TAG' --index-url $INDEX   # only if torch has no CUDA"
elif have_cuda_torch; then
    log "torch $("$PY" -c 'import torch; print(torch.__version__)') sees the GPU"
elif [ "${ROPE_SKIP_INSTALL:-0}" = "1" ]; then
    err "torch in $VENV has no CUDA (torch.cuda.is_available() is False) and ROPE_SKIP_INSTALL=1"
    exit 2
else
    case "$TAG" in
        unsupported-*) err "the driver's CUDA (${TAG#unsupported-driver-cuda-}) is older than any torch CUDA wheel" \
                           "this script knows (12.6); update the driver or set ROPE_TORCH_CUDA"; exit 2 ;;
    esac
    tv=$("$PY" -c 'import torch; print(torch.__version__.split("+")[0])')
    mkdir -p "$LOGDIR"
    log "installing torch==$tv+$TAG from $INDEX (replaces $("$PY" -c 'import torch; print(torch.__version__)'))"
    if ! timeout "$PIP_TIMEOUT" "$PY" -m pip install "torch==$tv+$TAG" --index-url "$INDEX" >"$LOGDIR/torch.log" 2>&1; then
        tail -n 20 "$LOGDIR/torch.log" | sed 's/^/    /' >&2
        err "could not install torch==$tv+$TAG from $INDEX (log: $LOGDIR/torch.log). Set ROPE_TORCH_CUDA to a tag" \
            "that index has for torch $tv (cu126, cu128, cu130) or ROPE_TORCH_INDEX to a reachable index."
        exit 2
    fi
    if ! have_cuda_torch; then
        err "torch $("$PY" -c 'import torch; print(torch.__version__)') is installed but torch.cuda.is_available()" \
            "is False: the driver may not support $TAG (nvidia-smi shows the CUDA version it supports)"
        exit 2
    fi
    log "torch $("$PY" -c 'import torch; print(torch.__version__)') sees the GPU"
fi

# ----------------------------------------------------------------------------- 3. GPU packages
INSTALLED=()
FAILED=()
SKIPPED=()
if [ "$DRY" = "1" ]; then
    CONS="<constraints: torch==<installed>, triton==<torch's pin>>"
else
    mkdir -p "$LOGDIR"
    CONS="$LOGDIR/torch-pin.txt"
    # pin torch (and the triton that torch requires) so that no package can replace them
    "$PY" - >"$CONS" <<'EOF'
import importlib.metadata as md
print(f"torch=={md.version('torch')}")
for req in md.requires("torch") or []:
    name_part, _, marker = req.partition(";")
    if name_part.strip().startswith(("triton", "pytorch-triton")) and "extra" not in marker:
        print(name_part.strip())
EOF
fi

# install_pkg LABEL IMPORT_NAME PIP_ARGS...: skip when IMPORT_NAME already imports (unless ROPE_GPU_REINSTALL=1)
install_pkg() {
    local label=$1 mod=$2; shift 2
    if [ "$DRY" = "1" ]; then
        plan "$PY -m pip install -c $CONS $*   # $label, skipped if 'import $mod' works"
        return
    fi
    if [ "${ROPE_SKIP_INSTALL:-0}" = "1" ]; then SKIPPED+=("$label (ROPE_SKIP_INSTALL=1)"); return; fi
    if [ "${ROPE_GPU_REINSTALL:-0}" != "1" ] && "$PY" -c "import $mod" >/dev/null 2>&1; then
        SKIPPED+=("$label (already imports)"); return
    fi
    local logf="$LOGDIR/$label.log" t0=$SECONDS
    log "installing $label ($*) ..."
    if timeout "$PIP_TIMEOUT" "$PY" -m pip install -c "$CONS" "$@" >"$logf" 2>&1 && "$PY" -c "import $mod" >>"$logf" 2>&1; then
        INSTALLED+=("$label")
        log "  $label installed ($((SECONDS - t0)) s)"
    else
        FAILED+=("$label (log: $logf)")
        err "$label did not install or does not import ($((SECONDS - t0)) s); last lines of $logf:"
        tail -n 15 "$logf" | sed 's/^/    /' >&2
        if grep -q -i -E "conflict|ResolutionImpossible|requires torch|depends on torch" "$logf"; then
            err "  $label needs a different torch than $("$PY" -c 'import torch; print(torch.__version__)' 2>/dev/null):" \
                "it was not installed so that the venv's torch stays (its adapters will show as unavailable)"
        fi
    fi
}

install_pkg "$CUPY" cupy "$CUPY"
install_pkg triton triton triton
install_pkg flash-attn flash_attn.layers.rotary flash-attn --no-build-isolation
install_pkg liger-kernel liger_kernel.transformers.rope liger-kernel
install_pkg vllm vllm.model_executor.layers.rotary_embedding vllm
install_pkg transformer-engine transformer_engine.pytorch "transformer_engine[pytorch]" --no-build-isolation

if [ "$DRY" != "1" ]; then
    log "packages installed: ${INSTALLED[*]:-none}"
    log "packages already present / skipped: ${SKIPPED[*]:-none}"
    if [ ${#FAILED[@]} -gt 0 ]; then
        err "packages that FAILED to install (their adapters will report 'unavailable'):"
        for f in "${FAILED[@]}"; do echo "    - $f" >&2; done
    fi
    if ! have_cuda_torch; then
        err "torch lost CUDA after the package installs (see $LOGDIR): stopping"
        exit 2
    fi
fi

# ----------------------------------------------------------------------------- 4. the checks
# every torch-based adapter, every adapter that runs on CUDA, and the GPU-only adapters
ADAPTERS=$("$PY" - <<'EOF'
from ropeconf.adapters import BUILTIN, FAMILIES

TORCH_BASED = ["hf", "hf-nested", "rotary-torch", "rotary-torch-cached-keys", "rotary-torch-learned", "keras-torch",
               "torch-onnx", "torch-onnx-f32cache", "torchtune", "torchtune-llama3", "zeta"]
OTHER_CUDA = ["ort", "ort-f32cache", "ort-contrib", "ort-contrib-f32cache", "max"]
names = [n for n in TORCH_BASED + OTHER_CUDA if n in BUILTIN]
GPU_ONLY = ["flash_attn", "liger", "vllm", "transformer_engine"]  # families (adapters/<family>.py)
names += [n for family in GPU_ONLY for n in FAMILIES[family]]
print(" ".join(names))
EOF
)
if [ -z "$ADAPTERS" ]; then
    err "could not list the adapters (is ropeconf importable from $PY?)"
    exit 2
fi
read -r -a ADAPTER_LIST <<<"$ADAPTERS"
read -r -a RUN_ARGS <<<"${ROPE_RUN_ARGS:-}"

ROPECONF=("$VENV/bin/ropeconf")
[ -x "$VENV/bin/ropeconf" ] || ROPECONF=("$PY" -c "import sys; from ropeconf.conformance.cli import main; sys.exit(main())")

STEPS=("gpu-parity" "pytest" "run")
CMD_gpu_parity=("${ROPECONF[@]}" gpu-parity)
GPU_TESTS=(tests/test_adapter_flash_attn.py tests/test_adapter_liger.py tests/test_adapter_vllm.py
           tests/test_adapter_transformer_engine.py tests/test_reference_properties.py)
CMD_pytest=("$PY" -m pytest "${GPU_TESTS[@]}" -k "cuda or cupy or gpu" -rs)
CMD_run=("${ROPECONF[@]}" run --device cuda --adapter "${ADAPTER_LIST[@]}" --json out/gpu.json --report out/gpu.html
         ${RUN_ARGS[@]+"${RUN_ARGS[@]}"})

if [ "$DRY" = "1" ]; then
    plan_cmd "${CMD_gpu_parity[@]}"
    plan_cmd "${CMD_pytest[@]}"
    plan_cmd "${CMD_run[@]}"
    exit 0
fi

mkdir -p out
STATUS=()
rc_all=0
log "step 1/3: ropeconf gpu-parity (CuPy reference vs NumPy; torch adapters on CUDA vs CPU)"
"${CMD_gpu_parity[@]}"; rc=$?
STATUS+=("gpu-parity: exit $rc$([ $rc -eq 2 ] && echo ' (could not run: no CuPy or no CUDA device)')")
[ $rc -eq 0 ] || rc_all=1

log "step 2/3: GPU tests (pytest -k 'cuda or cupy or gpu')"
"${CMD_pytest[@]}"; rc=$?
STATUS+=("pytest: exit $rc$([ $rc -eq 5 ] && echo ' (no test selected)')")
[ $rc -eq 0 ] || rc_all=1

log "step 3/3: ropeconf run --device cuda over ${#ADAPTER_LIST[@]} adapters"
"${CMD_run[@]}"; rc=$?
STATUS+=("ropeconf run: exit $rc$([ $rc -eq 1 ] && echo ' (divergences or errors: see out/gpu.html)')")
[ $rc -eq 0 ] || rc_all=1

log "summary:"
for s in "${STATUS[@]}"; do echo "    $s"; done
if [ ${#FAILED[@]} -gt 0 ]; then
    echo "    packages that failed to install: ${FAILED[*]}"
fi
echo "    results: out/gpu.json, out/gpu.html; install logs: $LOGDIR"
exit $rc_all
