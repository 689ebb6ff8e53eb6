#!/usr/bin/env bash
# Create .venv and install textloop with the locked versions (constraints.txt). Idempotent.
# A fresh install puts about 2.9 GB into .venv (torch CPU, MLflow, Prefect, DVC, spaCy,
# transformers) and takes about 5 minutes; a rerun only checks what is installed.
# Progress: one line per step; while packages install, a live line on a terminal (elapsed time
# and the size of .venv so far), elsewhere (CI, a log file) one plain line every 30 s.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3.11}
command -v "$PY" >/dev/null || PY=python3
EXPECTED_SIZE="2.9G"
say() { echo "setup: $*"; }
# setuptools warns on every editable install ("Editable installation"): advice, not an error
export PYTHONWARNINGS="${PYTHONWARNINGS:+$PYTHONWARNINGS,}ignore:Editable installation"

progress() {  # runs beside pip until killed: elapsed seconds and the size of .venv
  local start=$SECONDS size
  if [ -t 1 ]; then
    while sleep 2; do
      size=$(du -sh .venv/ 2>/dev/null | cut -f1)
      printf '\rsetup: installing: %4d s, .venv %s of about %s ' $((SECONDS - start)) "$size" "$EXPECTED_SIZE"
    done
  else
    while sleep 30; do
      size=$(du -sh .venv/ 2>/dev/null | cut -f1)
      say "installing: $((SECONDS - start)) s, .venv $size of about $EXPECTED_SIZE"
    done
  fi
}

if [ ! -x .venv/bin/python ]; then
  say "1/5 creating .venv with $PY"
  "$PY" -m venv .venv
else
  say "1/5 reusing .venv"
fi
say "2/5 upgrading pip"
.venv/bin/python -m pip install --quiet --upgrade pip
say "3/5 installing textloop and its locked dependencies (a fresh .venv: about $EXPECTED_SIZE, ~5 min)"
progress &
watcher=$!
trap 'kill "$watcher" 2>/dev/null || true' EXIT
# torch==2.13.0 resolves to the CPU wheel on this platform; constraints.txt pins everything else.
.venv/bin/python -m pip install --quiet -c constraints.txt -e ".[dev]"
kill "$watcher" 2>/dev/null || true
wait "$watcher" 2>/dev/null || true
[ -t 1 ] && echo
say "3/5 installed: .venv $(du -sh .venv/ | cut -f1)"
# DVC needs a git repository (dvc exp needs one commit); a fresh clone already is one.
git rev-parse --git-dir >/dev/null 2>&1 || { git init -q && git add -A && git -c user.name=textloop -c user.email=textloop@localhost commit -qm "initial"; }
say "4/5 textloop installed: $(.venv/bin/textloop --help >/dev/null && echo ok)"
# Prefect's and MLflow's migrations, done once here instead of in the first run (~7 CPU-s)
say "5/5 $(.venv/bin/python -m textloop.cli.prepare_cache || echo "no empty databases kept: the first run migrates its own")"
