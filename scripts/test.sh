#!/usr/bin/env bash
# Run the test suite (CPU only, tiny random models, no network). The review page's
# tests need Debian's Chromium: installed first if missing (see install_browser.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
[ -n "${AUTOLABEL_CHROMIUM:-}" ] || scripts/install_browser.sh
exec .venv/bin/pytest -q "$@"
