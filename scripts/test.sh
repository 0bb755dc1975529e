#!/usr/bin/env bash
# Run the test suite (CPU only, tiny random models, no network).
set -euo pipefail
cd "$(dirname "$0")/.."
exec .venv/bin/pytest -q "$@"
