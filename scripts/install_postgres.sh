#!/usr/bin/env bash
# Debian's PostgreSQL server for the tests of the shared credit ledger (the tests start
# their own server on a temporary folder and port; nothing is configured or started
# here). Does nothing when a server is installed already.
set -euo pipefail
compgen -G "/usr/lib/postgresql/*/bin/initdb" >/dev/null && exit 0
command -v initdb >/dev/null && exit 0
if ! command -v apt-get >/dev/null; then
  echo "scripts/install_postgres.sh: no apt-get here; install the PostgreSQL server" \
       "(initdb, pg_ctl) for the ledger tests" >&2
  exit 1
fi
SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"
export DEBIAN_FRONTEND=noninteractive
# The package starts a cluster of its own; the tests never use it.
$SUDO apt-get install -y -qq postgresql >/dev/null \
  || { $SUDO apt-get update -qq && $SUDO apt-get install -y -qq postgresql >/dev/null; }
echo "installed: $(ls /usr/lib/postgresql/*/bin/initdb)"
