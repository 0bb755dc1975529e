#!/usr/bin/env bash
# Run the test suite (CPU only, tiny random models, no network). The review page's
# tests need Debian's Chromium, the shared ledger's tests a PostgreSQL server: each is
# installed first if missing (install_browser.sh, install_postgres.sh), and the ledger
# tests then fail, rather than skip, where no server can start.
set -euo pipefail
cd "$(dirname "$0")/.."
[ -n "${AUTOLABEL_CHROMIUM:-}" ] || scripts/install_browser.sh
scripts/install_postgres.sh
export AUTOLABEL_REQUIRE_POSTGRES=1
exec .venv/bin/pytest -q "$@"
