#!/usr/bin/env bash
# PostgreSQL server binaries (initdb, postgres) for the team-profile tests (tests/e2e/test_team*.py
# start a private cluster under /tmp; no system service is used or started).
set -euo pipefail
SUDO=""
if [ "$(id -u)" != 0 ]; then SUDO="sudo"; fi
if ! command -v initdb >/dev/null 2>&1 && ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then
  $SUDO apt-get update
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y --no-install-recommends postgresql
  # Debian's package starts a cluster of its own; the tests do not need it
  $SUDO service postgresql stop >/dev/null 2>&1 || true
fi
"$(command -v initdb || ls /usr/lib/postgresql/*/bin/initdb | tail -1)" --version
