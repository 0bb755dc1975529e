#!/usr/bin/env bash
# Debian's Chromium for the review page's browser tests (Playwright drives it; it never
# downloads a browser of its own). Does nothing when /usr/bin/chromium is there.
set -euo pipefail
[ -x /usr/bin/chromium ] && exit 0
if ! command -v apt-get >/dev/null; then
  echo "scripts/install_browser.sh: no apt-get here; install Chromium and set" \
       "AUTOLABEL_CHROMIUM=/path/to/chromium for the browser tests" >&2
  exit 1
fi
SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get install -y -qq chromium >/dev/null \
  || { $SUDO apt-get update -qq && $SUDO apt-get install -y -qq chromium >/dev/null; }
echo "installed: $(/usr/bin/chromium --version)"
