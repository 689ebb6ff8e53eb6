#!/usr/bin/env bash
# Create .venv and install textloop with the locked versions (constraints.txt). Idempotent.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3.11}
command -v "$PY" >/dev/null || PY=python3
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
.venv/bin/python -m pip install --quiet --upgrade pip
# torch==2.13.0 resolves to the CPU wheel on this platform; constraints.txt pins everything else.
.venv/bin/python -m pip install --quiet -c constraints.txt -e ".[dev]"
# DVC needs a git repository (dvc exp needs one commit); a fresh clone already is one.
git rev-parse --git-dir >/dev/null 2>&1 || { git init -q && git add -A && git -c user.name=textloop -c user.email=textloop@localhost commit -qm "initial"; }
echo "textloop installed: $(.venv/bin/textloop --help >/dev/null && echo ok)"
