#!/usr/bin/env bash
# Headless Chromium from Debian for the browser tests (driven by the Python playwright package
# with executable_path=/usr/bin/chromium; never `playwright install`).
set -euo pipefail
SUDO=""
if [ "$(id -u)" != 0 ]; then SUDO="sudo"; fi
if [ ! -x /usr/bin/chromium ]; then
  $SUDO apt-get update
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y --no-install-recommends \
    chromium chromium-driver fonts-liberation
fi
/usr/bin/chromium --version
