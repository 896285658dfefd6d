#!/usr/bin/env bash
# Set up .venv, run the whole test suite on both cores, then zeta's own tox environment.
# Extra arguments go to pytest.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
bash scripts/setup-venv.sh
# The HTML report is tested in a real headless browser: Debian's chromium.
if ! command -v chromium >/dev/null 2>&1; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
        t=$(date +%s)
        (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium) >/tmp/ropeconf-apt.log 2>&1 \
            || echo "[test] chromium install failed (see /tmp/ropeconf-apt.log); the browser test will skip"
        echo "[test] installed chromium in $(( $(date +%s) - t )) s"
    else
        echo "[test] chromium missing and not installable here; the browser test will skip"
    fi
fi
export PATH="$ROOT/.venv/bin:$PATH"
python -m pytest -n 2 tests/ "$@"
tox -e zeta
