#!/usr/bin/env bash
# Create .venv at the repository root and install autolabel with its test tools.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
.venv/bin/python -m pip install --quiet --upgrade pip
# torch first, pinned: the versions this project is tested with.
.venv/bin/pip install --quiet "torch==2.14.1" "torchvision==0.29.1"
.venv/bin/pip install --quiet -e ".[test]"
echo "installed: $(.venv/bin/autolabel --help >/dev/null && echo autolabel) into .venv/"
