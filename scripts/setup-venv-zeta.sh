#!/usr/bin/env bash
# Create/refresh .venv-zeta: a separate, minimal venv for the zetascale (kyegomez/zeta) RoPE peer.
#
#   bash scripts/setup-venv-zeta.sh        # idempotent; a re-run with unchanged pins takes < 1 s
#
# zetascale must NOT go into .venv: its declared deps (transformers<5, torchvision, bitsandbytes, ...) would
# replace the CPU torch with a CUDA torch 2.14.1, and torchvision cannot import beside the CPU torch. So
# requirements/zeta.txt is a complete lock (torch 2.13.0+cpu, einops, numpy, zetascale) installed --no-deps.
#
# Env: ROPE_ZETA_VENV=/path (default <repo>/.venv-zeta), PYTHON=python3 (3.11), ROPE_SETUP_FORCE=1.
#
# HOW TO IMPORT (only the RoPE submodules; `import zeta` itself fails without torchvision & co.). Register
# empty package modules so zeta/__init__.py and zeta/nn/__init__.py are never executed:
#
#   import importlib.util, os, sys, types
#   root = os.path.dirname(importlib.util.find_spec("zeta").origin)   # runs nothing
#   for name, sub in (("zeta", ""), ("zeta.nn", "nn"), ("zeta.nn.embeddings", "nn/embeddings")):
#       if name not in sys.modules:
#           m = types.ModuleType(name); m.__path__ = [os.path.join(root, sub)]; sys.modules[name] = m
#   from zeta.nn.embeddings.rope import RotaryEmbedding                      # needs only torch + einops
#   from zeta.nn.embeddings.sinusoidal import apply_rotary_pos_emb
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${ROPE_ZETA_VENV:-$ROOT/.venv-zeta}"
PY="${PYTHON:-python3}"
REQ="$ROOT/requirements"
PIP_VERSION="26.3"

export PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_INPUT=1

T_START=$(date +%s.%N)
T_STEP=$T_START
step() {
    local now
    now=$(date +%s.%N)
    awk -v m="$1" -v s="$T_STEP" -v t="$T_START" -v n="$now" \
        'BEGIN { printf "[setup-venv-zeta] %-47s %6.1fs  (total %6.1fs)\n", m, n - s, n - t }'
    T_STEP=$now
}
pipq() {
    "$VENV/bin/python" -m pip -q "$@" 2>&1 \
        | { grep -v -E "is ignored: it is neither a file nor a directory" || true; }
}

if [ ! -x "$VENV/bin/python" ]; then
    pyver=$("$PY" -c 'import sys; print("%d.%d" % sys.version_info[:2])')
    if [ "$pyver" != "3.11" ]; then
        echo "[setup-venv-zeta] ERROR: $PY is Python $pyver; the torch 2.13.0+cpu wheel needs 3.11" >&2
        exit 1
    fi
    "$PY" -m venv "$VENV"
    step "created venv $VENV"
else
    step "venv exists: $VENV"
fi

stamp_hash=$( { cat "$REQ/zeta.txt" "$REQ/constraints.txt" "${BASH_SOURCE[0]}"; \
                "$VENV/bin/python" -c 'import sys; print(sys.version)'; } | sha256sum | cut -c1-16)
stamp="$VENV/.rope-setup-$stamp_hash"

if [ -f "$stamp" ] && [ "${ROPE_SETUP_FORCE:-0}" != "1" ]; then
    step "requirements unchanged (stamp $stamp_hash), skipped pip"
    exit 0
fi
rm -f "$VENV"/.rope-setup-*

pipq install "pip==$PIP_VERSION"
step "pip $PIP_VERSION"

pipq install --no-deps -r "$REQ/zeta.txt" -c "$REQ/constraints.txt"
step "zeta.txt (--no-deps)"

# smoke: the RoPE submodules import (without running zeta/__init__.py) and torch is the CPU build
"$VENV/bin/python" - <<'EOF'
import importlib.util, os, sys, types
import torch
assert torch.__version__ == "2.13.0+cpu", torch.__version__
root = os.path.dirname(importlib.util.find_spec("zeta").origin)
for name, sub in (("zeta", ""), ("zeta.nn", "nn"), ("zeta.nn.embeddings", "nn/embeddings")):
    m = types.ModuleType(name); m.__path__ = [os.path.join(root, sub)]; sys.modules[name] = m
from zeta.nn.embeddings.rope import RotaryEmbedding  # noqa: F401
from zeta.nn.embeddings.sinusoidal import apply_rotary_pos_emb  # noqa: F401
import zeta.nn.embeddings.xpos_relative_position  # noqa: F401
EOF
step "checked torch 2.13.0+cpu + zeta.nn.embeddings.rope import"
touch "$stamp"
