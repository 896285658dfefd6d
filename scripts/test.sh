#!/usr/bin/env bash
# Set up .venv (and the zeta environment) and run the whole test suite on both cores.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
bash scripts/setup-venv.sh
export PATH="$ROOT/.venv/bin:$PATH"
python -m pytest -n 2 tests/ "$@"
