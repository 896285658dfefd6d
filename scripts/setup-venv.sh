#!/usr/bin/env bash
# Create/refresh the project's single virtual environment (.venv) with the runtime deps, test tools and all
# peer RoPE libraries, from the exact pins in requirements/.
#
#   bash scripts/setup-venv.sh            # idempotent; a re-run with unchanged pins takes < 1 s
#
# Environment knobs:
#   ROPE_VENV=/path      venv location (default: <repo>/.venv)
#   PYTHON=python3.11    interpreter used to create the venv (default: python3; must be CPython 3.11)
#   ROPE_WITH_TF=0       skip requirements/peers-tf.txt (tensorflow-cpu, +1.4 GB, ~20-55 s), which the
#                        keras-tf adapter (KERAS_BACKEND=tensorflow) needs; installed by default
#   ROPE_SETUP_FORCE=1   ignore the stamp and re-run pip (does not delete anything; rm -rf .venv for a clean one)
#
# Steps: venv -> pip==26.3 -> base+test+peers (with deps, under constraints.txt) -> peers-nodeps (--no-deps)
#        -> check torch is the CPU build -> `pip install -e .` only if pyproject.toml exists.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${ROPE_VENV:-$ROOT/.venv}"
PY="${PYTHON:-python3}"
REQ="$ROOT/requirements"
PIP_VERSION="26.3"
WITH_TF="${ROPE_WITH_TF:-1}"

export PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_INPUT=1

T_START=$(date +%s.%N)
T_STEP=$T_START
step() {  # step "message": one line per finished step, with its own and the total elapsed seconds
    local now
    now=$(date +%s.%N)
    awk -v m="$1" -v s="$T_STEP" -v t="$T_START" -v n="$now" \
        'BEGIN { printf "[setup-venv] %-52s %6.1fs  (total %6.1fs)\n", m, n - s, n - t }'
    T_STEP=$now
}

# pip, quiet; drops two harmless, very noisy warnings of this machine's pip config (a local extra index that
# lacks most projects; an extra that huggingface-hub no longer provides). pip's exit status is kept (pipefail).
pipq() {
    "$VENV/bin/python" -m pip -q "$@" 2>&1 \
        | { grep -v -E "is ignored: it is neither a file nor a directory|does not provide the extra 'hf-transfer'" || true; }
}

req_files=("$REQ/base.txt" "$REQ/test.txt" "$REQ/peers.txt")
[ "$WITH_TF" = "1" ] && req_files+=("$REQ/peers-tf.txt")
hash_inputs=("${req_files[@]}" "$REQ/peers-nodeps.txt" "$REQ/constraints.txt" "${BASH_SOURCE[0]}")

# 1. venv
if [ ! -x "$VENV/bin/python" ]; then
    pyver=$("$PY" -c 'import sys; print("%d.%d" % sys.version_info[:2])')
    if [ "$pyver" != "3.11" ]; then
        echo "[setup-venv] ERROR: $PY is Python $pyver; the pins (torch 2.13.0+cpu wheel, jaxlib, ...) need 3.11" >&2
        exit 1
    fi
    "$PY" -m venv "$VENV"
    step "created venv $VENV"
else
    step "venv exists: $VENV"
fi

stamp_hash=$( { cat "${hash_inputs[@]}"; "$VENV/bin/python" -c 'import sys; print(sys.version)'; echo "tf=$WITH_TF"; } \
              | sha256sum | cut -c1-16)
stamp="$VENV/.rope-setup-$stamp_hash"

# 2-5. dependencies (skipped when the stamp for exactly these requirement files exists)
if [ -f "$stamp" ] && [ "${ROPE_SETUP_FORCE:-0}" != "1" ]; then
    step "requirements unchanged (stamp $stamp_hash), skipped pip"
else
    rm -f "$VENV"/.rope-setup-*
    pipq install "pip==$PIP_VERSION"
    step "pip $PIP_VERSION"

    args=()
    for f in "${req_files[@]}"; do args+=(-r "$f"); done
    pipq install "${args[@]}" -c "$REQ/constraints.txt"
    step "base + test + peers$([ "$WITH_TF" = "1" ] && echo ' + tensorflow-cpu')"

    pipq install --no-deps -r "$REQ/peers-nodeps.txt" -c "$REQ/constraints.txt"
    step "peers-nodeps (--no-deps: keras-hub)"

    torch_ver=$("$VENV/bin/python" -c 'import torch; print(torch.__version__)')
    case "$torch_ver" in
        2.13.0+cpu) ;;
        *) echo "[setup-venv] ERROR: torch is $torch_ver, expected 2.13.0+cpu" >&2; exit 1 ;;
    esac
    step "checked torch $torch_ver"
    touch "$stamp"
fi

# 6. the project itself, editable, only once pyproject.toml exists (re-done when pyproject.toml changes)
if [ -f "$ROOT/pyproject.toml" ]; then
    e_hash=$( { cat "$ROOT/pyproject.toml"; echo "$stamp_hash"; } | sha256sum | cut -c1-16)
    e_stamp="$VENV/.rope-editable-$e_hash"
    if [ -f "$e_stamp" ] && [ "${ROPE_SETUP_FORCE:-0}" != "1" ]; then
        step "editable install unchanged, skipped"
    else
        rm -f "$VENV"/.rope-editable-*
        # the build backend is chatty (setuptools warnings): keep its output in a log, show it only on failure
        e_log="$VENV/.rope-editable.log"
        if ! pipq install -e "$ROOT" -c "$REQ/constraints.txt" >"$e_log" 2>&1; then
            cat "$e_log" >&2
            echo "[setup-venv] ERROR: pip install -e . failed (log: $e_log)" >&2
            exit 1
        fi
        touch "$e_stamp"
        step "pip install -e . (log: $e_log)"
    fi
else
    step "no pyproject.toml yet, skipped pip install -e ."
fi
